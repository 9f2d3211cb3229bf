"""Plugin loading: entry points, isolation of broken plugins, blocking, duplicate names."""
import textwrap
import types

import pytest

from conftest import run_zoo, zoo_env
from zoo_core.hookspecs import hookimpl
from zoo_core.plugins import ZooPlugins
from zoo_core.zoo import Zoo


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
    registry = Registry([], plugins)
    assert registry.resolve("gmm-tiny")["model"]["n_components"] == 2
    with pytest.raises(ConfigError, match=r"plugin 'entries': entry 'gmm-wrong': unknown key 'model.components'"):
        registry.resolve("gmm-wrong")


def test_every_hook_is_documented():
    from zoo_core import hookspecs
    from zoo_core.plugins import HOOKS

    for name in HOOKS:
        fn = getattr(hookspecs, name)
        assert fn.__doc__ and "register" in fn.__doc__, name


# ---- plugins whose model breaks the interface -------------------------------------------------------
BAD_SHAPES_SOURCE = """
import torch
from zoo_core import GenerativeModel, hookimpl
from zoo_core.model import as_sample_shape

__version__ = "0.3.0"


class _Gaussian(GenerativeModel):
    '''A unit Gaussian with a learned mean; subclasses break one part of the interface.'''
    likelihood = "exact"

    def __init__(self, data, optim=None):
        super().__init__(data, optim)
        self.mean = torch.nn.Parameter(torch.zeros(self.event_shape))

    def _gaussian(self, x):
        batch = self.validate_sample(x)
        z = (x - self.mean).reshape(*batch, -1)
        return -0.5 * (z ** 2).sum(-1) - 0.5 * z.shape[-1] * 1.8378770664093453  # (*batch,)

    def _log_prob(self, x, context=None):
        return self._gaussian(x)

    def loss(self, x, context=None):
        return -self._gaussian(x).mean()

    def _sample(self, sample_shape, context=None):
        shape = as_sample_shape(sample_shape)
        return self.mean + torch.randn(*shape, *self.event_shape)


class ColumnLogProb(_Gaussian):
    '''log_prob returns (batch, 1).'''
    family = "bad_column"

    def _log_prob(self, x, context=None):
        return self._gaussian(x)[..., None]


class ScalarLogProb(_Gaussian):
    '''log_prob returns the batch mean (a scalar).'''
    family = "bad_scalar"

    def _log_prob(self, x, context=None):
        return self._gaussian(x).mean()


class FlatSamples(_Gaussian):
    '''sample returns (n * D,) instead of (n, D).'''
    family = "bad_sample"

    def _sample(self, sample_shape, context=None):
        return super()._sample(sample_shape).reshape(-1)


@hookimpl
def register_families(register):
    for cls in (ColumnLogProb, ScalarLogProb, FlatSamples):
        register(cls)


@hookimpl
def register_entries(register):
    for family in ("bad_column", "bad_scalar", "bad_sample"):
        register(family + "-moons", {"family": family, "data": {"name": "moons", "n_train": 400, "n_val": 200,
                                                                 "n_test": 200},
                                     "train": {"max_steps": 2, "batch_size": 200},
                                     "eval": {"quality_samples": 50, "num_samples": 16}})
"""


@pytest.fixture(scope="module")
def bad_shapes_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("badsite")
    make_dist(site, "zoo-bad-shapes", "bad_shapes_plugin", BAD_SHAPES_SOURCE)
    return site


@pytest.fixture
def bad_shapes_zoo():
    """A Zoo with the bad-shapes plugin registered in-process beside the installed ones."""
    module = types.ModuleType("bad_shapes_plugin")
    exec(compile(BAD_SHAPES_SOURCE, "bad_shapes_plugin.py", "exec"), module.__dict__)
    return Zoo(extra_plugins={"bad_shapes_plugin": module})


@pytest.mark.parametrize("family, cls, expected", [
    ("bad_column", "ColumnLogProb",
     r"log_prob returned shape \(200, 1\) for data of shape \(200, 2\); expected \(200,\)"),
    ("bad_scalar", "ScalarLogProb",
     r"log_prob returned shape \(\) for data of shape \(200, 2\); expected \(200,\)"),
    ("bad_sample", "FlatSamples", r"sample\(\(50,\)\) returned shape \(100,\); expected \(50, 2\)"),
])
def test_interface_violation_is_named_when_trained(bad_shapes_zoo, tmp_path, family, cls, expected):
    """Training validates log_prob (validation step) and evaluation validates samples (sample quality).
    The runner's error names the class and family; the CLI adds the plugin and its distribution
    (test_interface_violation_through_the_cli)."""
    from zoo_core.errors import InterfaceError, PluginError
    from zoo_core.runner import RunOptions, train

    assert not bad_shapes_zoo.problems()
    opts = RunOptions(runs_dir=str(tmp_path), progress=False, accelerator="cpu")
    with pytest.raises(InterfaceError, match=rf"^class bad_shapes_plugin\.{cls}, family '{family}': {expected}") as info:
        train(bad_shapes_zoo, f"{family}-moons", opts)
    assert isinstance(info.value, PluginError) and "\n" not in str(info.value)


def test_interface_violation_in_the_nll_metric(bad_shapes_zoo):
    """The NLL metric refuses a (batch, 1) log_prob instead of averaging it (the test loop's boundary)."""
    import torch

    from zoo_core.errors import PluginError
    from zoo_core.metrics.nll import NLL

    spec = {"name": "moons", "event_shape": [2], "representation": "continuous"}
    good = bad_shapes_zoo.family("bad_sample")(spec)  # a correct log_prob
    metric = NLL()
    metric.reset()
    metric.update(good, torch.zeros(7, 2))
    assert metric.compute(good)["num_examples"] == 7
    bad = bad_shapes_zoo.family("bad_column")(spec)
    with pytest.raises(PluginError, match=r"family 'bad_column': log_prob returned shape \(7, 1\)"):
        metric.update(bad, torch.zeros(7, 2))


def test_interface_violation_through_the_cli(bad_shapes_site):
    """An installed plugin: the error names plugin, distribution and family on one line; 'zoo list'
    and the other families keep working."""
    env = zoo_env(PYTHONPATH=bad_shapes_site)
    listing = run_zoo("list", env=env)
    assert listing.returncode == 0, listing.stderr
    for family in ("bad_column", "bad_scalar", "bad_sample", "gmm", "flow"):
        assert f"  {family} " in listing.stdout
    assert "warning" not in listing.stderr, listing.stderr
    result = run_zoo("train", "bad_column-moons", "--runs-dir", bad_shapes_site / "runs", "--no-progress",
                     "--accelerator", "cpu", env=env)
    assert result.returncode == 1
    lines = [l for l in result.stderr.splitlines() if l.startswith("zoo: ")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("zoo: error: plugin 'bad_shapes_plugin' (distribution zoo-bad-shapes 0.3.0), "
                               "class bad_shapes_plugin.ColumnLogProb, family 'bad_column': log_prob returned shape (200, 1)"), lines[0]


def test_other_families_train_beside_a_bad_plugin(bad_shapes_zoo, tmp_path):
    from zoo_core.runner import RunOptions, train

    opts = RunOptions(runs_dir=str(tmp_path), progress=False, accelerator="cpu", max_steps=2,
                      overrides=["data.n_train=400", "data.n_val=200", "data.n_test=200", "eval.quality_samples=50"])
    metrics = train(bad_shapes_zoo, "gmm-moons", opts)
    assert metrics["steps"] == 2 and metrics["test"]["num_examples"] == 200


def test_valid_duplicates_of_every_kind_never_replace_builtins():
    """Well-formed registrations that reuse a built-in name (family, dataset, metric, registry entry)
    are refused and reported; the built-ins stay."""
    from zoo_core.data.toy import MoonsDataModule
    from zoo_core.metrics.nll import NLL
    from zoo_core.registry import Registry
    from zoo_gmm import GMM

    class FakeMoons(MoonsDataModule):
        pass

    class FakeNLL(NLL):
        pass

    class Impostor(GMM):
        family = "gmm"

    module = _module(
        "aaa_first",  # sorts before every built-in plugin name: order must not matter
        register_families=lambda register: register(Impostor),
        register_datasets=lambda register: register("moons", FakeMoons),
        register_metrics=lambda register: register("nll", FakeNLL),
        register_entries=lambda register: register("gmm-moons", {"family": "gmm", "data": {"name": "rings"}}))
    plugins = ZooPlugins(extra_plugins={"aaa_first": module})
    assert plugins.families["gmm"].obj is GMM
    assert plugins.datasets["moons"].obj is MoonsDataModule
    assert plugins.metrics["nll"].obj is NLL
    assert Registry([], plugins).resolve("gmm-moons")["data"]["name"] == "moons"
    problems = "\n".join(plugins.problems())
    for kind, name, owner in (("family", "gmm", "gmm"), ("dataset", "moons", "core"), ("metric", "nll", "core")):
        assert f"plugin 'aaa_first': register_{'families' if kind == 'family' else kind + 's'}: {kind} '{name}' " \
               f"is already registered by plugin '{owner}'" in problems, problems
    assert "entry 'gmm-moons' already exists in" in problems
