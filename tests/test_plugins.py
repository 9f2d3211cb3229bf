"""Plugin loading: entry points, isolation of broken plugins, blocking, duplicate names."""
import textwrap
import types

import pytest

from conftest import run_zoo, zoo_env
from zoo_core.hookspecs import hookimpl
from zoo_core.plugins import ZooPlugins


def make_dist(site, dist, module, source):
    """A real installed distribution (dist-info + entry point) on a directory added to PYTHONPATH."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-0.3.0.dist-info"  # wheel naming: name_version
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3.0\n")
    (info / "entry_points.txt").write_text(f"[zoo]\n{module} = {module}\n")


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    make_dist(site, "zoo-broken", "broken_plugin", "raise ImportError('this plugin is broken on purpose')\n")
    make_dist(site, "zoo-usurper", "usurper_plugin", """
        from zoo_core.hookspecs import hookimpl
        from zoo_gmm import GMM

        class FakeGMM(GMM):
            family = "gmm"

        @hookimpl
        def register_families(register):
            register(FakeGMM)
    """)
    return site


def test_broken_plugin_is_reported_and_the_rest_works(plugin_site):
    result = run_zoo("list", env=zoo_env(PYTHONPATH=plugin_site))
    assert result.returncode == 0, result.stderr
    assert "likelihood=exact" in result.stdout and "gmm-moons" in result.stdout
    assert "plugin 'broken_plugin'" in result.stderr and "this plugin is broken on purpose" in result.stderr
    assert "plugin 'usurper_plugin'" in result.stderr and "already registered by plugin 'gmm'" in result.stderr
    plugins = run_zoo("plugins", env=zoo_env(PYTHONPATH=plugin_site))
    line = next(l for l in plugins.stdout.splitlines() if l.startswith("broken_plugin"))
    assert "failed" in line and "0.3.0" in line


def test_block_env_skips_plugins(plugin_site):
    result = run_zoo("list", env=zoo_env(PYTHONPATH=plugin_site, ZOO_BLOCK_PLUGINS="broken_plugin,usurper_plugin"))
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    plugins = run_zoo("plugins", env=zoo_env(PYTHONPATH=plugin_site, ZOO_BLOCK_PLUGINS="broken_plugin"))
    assert "blocked" in next(l for l in plugins.stdout.splitlines() if l.startswith("broken_plugin"))


def _module(name, **hooks):
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hookimpl(fn))
    return module


def test_hook_that_raises_is_isolated():
    def register_families(register):
        raise RuntimeError("boom")

    plugins = ZooPlugins(extra_plugins={"exploding": _module("exploding", register_families=register_families)})
    assert "gmm" in plugins.families and "vae" in plugins.families
    assert any("plugin 'exploding'" in p and "RuntimeError: boom" in p for p in plugins.problems())


def test_duplicate_names_never_replace_builtins():
    from zoo_gmm import GMM

    class Impostor(GMM):
        family = "gmm"

    def register_families(register):
        register(Impostor)

    def register_datasets(register):
        register("moons", object)

    plugins = ZooPlugins(extra_plugins={"impostor": _module("impostor", register_families=register_families,
                                                            register_datasets=register_datasets)})
    assert plugins.families["gmm"].obj is GMM and plugins.families["gmm"].plugin == "gmm"
    problems = "\n".join(plugins.problems())
    assert "family 'gmm' is already registered by plugin 'gmm'" in problems
    assert "dataset 'moons' is not a ZooDataModule subclass" in problems


def test_invalid_family_registration_is_reported():
    def register_families(register):
        register(int)

    plugins = ZooPlugins(extra_plugins={"weird": _module("weird", register_families=register_families)})
    assert any("not a GenerativeModel subclass" in p for p in plugins.problems())


def test_plugin_registry_entries_are_validated_like_the_file():
    from zoo_core.errors import ConfigError
    from zoo_core.registry import Registry

    def register_entries(register):
        register("gmm-tiny", {"family": "gmm", "data": {"name": "moons"}, "model": {"n_components": 2}})
        register("gmm-wrong", {"family": "gmm", "data": {"name": "moons"}, "model": {"components": 2}})

    plugins = ZooPlugins(extra_plugins={"entries": _module("entries", register_entries=register_entries)})
    registry = Registry(plugins=plugins)
    assert registry.resolve("gmm-tiny")["model"]["n_components"] == 2
    with pytest.raises(ConfigError, match=r"plugin 'entries': entry 'gmm-wrong': unknown key 'model.components'"):
        registry.resolve("gmm-wrong")


def test_every_hook_is_documented():
    from zoo_core import hookspecs
    from zoo_core.plugins import HOOKS

    for name in HOOKS:
        fn = getattr(hookspecs, name)
        assert fn.__doc__ and "register" in fn.__doc__, name
