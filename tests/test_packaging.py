"""A regular (non-editable) install of the zoo works on its own: packages, entry points, registry.yaml.

A copy of the repository's files is pip-installed (no network, no build isolation) into a
throwaway virtual environment that sees the running interpreter's packages (``isolated.venv_with``): torch,
Lightning and the other dependencies. The system site-packages also hold the developer's
*editable* install of the zoo; the venv's own copy still wins, because

- the venv's site-packages come before the system site-packages on ``sys.path``, and
- setuptools' editable finder (``__editable___generative_zoo_*_finder``) is *appended* to
  ``sys.meta_path``, after the regular ``PathFinder``, so it is only asked for modules that no
  ``sys.path`` entry provides;
- ``importlib.metadata.entry_points()`` keeps the first distribution of a name on ``sys.path``,
  so the ``zoo`` entry points come from the venv's copy too.

What could still shadow the copy is a source tree placed ahead of the venv on ``sys.path``: the
subprocesses therefore run from a directory outside the repository (``python -c``/``-m`` put
the working directory first) and without PYTHONPATH entries inside the repository. The test
asserts where every module and registry.yaml came from, so any shadowing fails it loudly.
"""
import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from isolated import REPO, explain, run, venv_with
SKIP_PARTS = {".git", "runs", "build", "dist", "wandb", "lightning_logs", "__pycache__", ".pytest_cache",
              ".hypothesis"}


def _source_files() -> list[Path]:
    """The repository's files as git sees them (tracked, plus untracked ones not ignored)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, text=True, timeout=60, check=True).stdout
        files = [Path(p) for p in out.split("\0") if p]
    except (OSError, subprocess.SubprocessError):  # not a git checkout: everything but build output
        files = [p.relative_to(REPO) for p in REPO.rglob("*") if p.is_file()]
    return [f for f in files if not SKIP_PARTS & set(f.parts) and not any(p.endswith(".egg-info") for p in f.parts)
            and (REPO / f).is_file()]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("packaging")
    src = root / "src"
    for rel in _source_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    assert (src / "registry.yaml").is_file() and (src / "setup.py").is_file()
    python = venv_with(src, root)
    env_dir = python.parent.parent
    work = root / "work"
    work.mkdir()
    return {"python": python, "venv": env_dir, "src": src, "work": work}


PROBE = """
import json, sys, importlib.metadata as md
import zoo_core, zoo_gmm, zoo_vae, zoo_core.data, zoo_core.metrics
from zoo_core.registry import builtin_registry_path
from zoo_core.zoo import Zoo
dist = md.distribution("generative-zoo")
plugins = Zoo().plugins
print(json.dumps({
    "modules": {m.__name__: m.__file__ for m in (zoo_core, zoo_gmm, zoo_vae, zoo_core.data, zoo_core.metrics)},
    "registry": str(builtin_registry_path()),
    "dist": str(dist.locate_file("")),
    "direct_url": dist.read_text("direct_url.json"),
    "entry_point_dists": sorted({str(ep.dist.locate_file("")) for ep in md.entry_points(group="zoo")}),
    "plugins": {n: [p.status, p.distribution] for n, p in plugins.plugins.items()},
    "problems": plugins.problems(),
    "editable_finder_active": any("__editable__" in repr(f) for f in sys.meta_path),
}))
"""


def test_installed_copy_is_what_gets_imported(installed):
    proc = run([installed["python"], "-c", PROBE], cwd=installed["work"])
    assert proc.returncode == 0, explain(proc)
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    venv = installed["venv"].resolve()
    for name, file in {**info["modules"], "registry.yaml": info["registry"], "dist": info["dist"]}.items():
        path = Path(file).resolve()
        assert path.is_relative_to(venv), f"{name} came from {path}, not from the installed copy in {venv}"
    assert "editable" not in json.loads(info["direct_url"] or "{}").get("dir_info", {}), info["direct_url"]
    assert [Path(p).resolve() for p in info["entry_point_dists"]] == [Path(info["dist"]).resolve()], info
    assert {"core", "gmm", "vae"} <= set(info["plugins"]), info["plugins"]
    assert all(status == "ok" for status, _ in info["plugins"].values()), info["plugins"]
    assert not info["problems"], info["problems"]


def test_installed_zoo_lists_families_and_packaged_registry(installed):
    zoo = installed["venv"] / "bin" / "zoo"  # the console script, from the installed copy
    assert zoo.is_file()
    proc = run([zoo, "list"], cwd=installed["work"])
    assert proc.returncode == 0, explain(proc)
    lines = proc.stdout.splitlines()
    families = {ln.split()[0] for ln in lines if "likelihood=" in ln}
    entries = {ln.split()[0] for ln in lines if "family=" in ln}
    assert {"gmm", "vae"} <= families, proc.stdout
    # registry.yaml was packaged (it is read from inside the installed zoo_core, see the probe above)
    assert {"gmm-moons", "gmm-digits", "vae-moons", "vae-mnist"} <= entries, proc.stdout
    assert "warning: plugin" not in proc.stderr, proc.stderr


def test_installed_zoo_trains(installed):
    runs = installed["work"] / "runs"
    proc = run([installed["python"], "-m", "zoo_core", "train", "gmm-moons", "--max-steps", "5",
                 "--runs-dir", runs, "--no-progress", "--accelerator", "cpu"], cwd=installed["work"])
    assert proc.returncode == 0, explain(proc)
    (run_dir,) = [p for p in (runs / "gmm-moons").iterdir() if p.is_dir()]
    assert (run_dir / "samples.png").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["family"] == "gmm" and metrics["steps"] == 5
    assert math.isfinite(metrics["test"]["nll_nats"]), metrics
    source = Path(yaml.safe_load((run_dir / "config.yaml").read_text())["source"]).resolve()
    assert source.name == "registry.yaml" and source.is_relative_to(installed["venv"].resolve()), source


def test_installed_zoo_ships_the_family_templates(installed):
    proc = run([installed["python"], "-m", "zoo_core", "new", "family", "pkgcheck", "--dir", installed["work"]],
               cwd=installed["work"])
    assert proc.returncode == 0, explain(proc)
    assert (installed["work"] / "zoo-pkgcheck" / "zoo_pkgcheck" / "model.py").is_file()
