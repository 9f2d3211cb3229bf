"""A separately installed third-party plugin (examples/zoo-plugin-example) extends the zoo.

The plugin is pip-installed (no network, no build isolation) into a throwaway virtual environment
created with ``--system-site-packages``, so that environment sees torch, Lightning and the zoo
itself (including the built-in families' ``zoo`` entry points) from the system site-packages.
Then, in that environment: ``zoo list`` shows the new family and its registry entries, the
shared runner trains one of them, and the plugin's own test suite (the zoo's conformance kit)
passes. The interpreter running this file never sees the plugin.
"""
import importlib
import importlib.metadata as md
import importlib.util
import json
import math
import re
import shutil

import pytest

from isolated import REPO, explain, run, venv_with
PLUGIN_SRC = REPO / "examples" / "zoo-plugin-example"
FAMILY, MODULE, DIST = "independent", "zoo_independent", "zoo-plugin-example"
ENTRIES = ("independent-moons", "independent-digits")


def _system_sees_plugin() -> bool:
    importlib.invalidate_caches()
    names = {ep.name for ep in md.entry_points(group="zoo")}
    return FAMILY in names or importlib.util.find_spec(MODULE) is not None


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A virtual environment with the example plugin installed (non-editable) from a copy of its source."""
    root = tmp_path_factory.mktemp("plugin-venv")
    seen_before = _system_sees_plugin()
    # build from a copy: an in-tree setuptools build writes build/ and *.egg-info next to the sources
    src = root / "src"
    shutil.copytree(PLUGIN_SRC, src, ignore=shutil.ignore_patterns(
        "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
    python = venv_with(src, root)
    work = root / "work"  # run everything from outside the repository
    work.mkdir()
    return {"python": python, "work": work, "seen_before": seen_before}


def test_zoo_list_shows_the_plugin_family_and_entries(venv):
    proc = run([venv["python"], "-m", "zoo_core", "list"], cwd=venv["work"])
    assert proc.returncode == 0, explain(proc)
    out = proc.stdout
    assert re.search(rf"^\s+{FAMILY}\s+likelihood=exact\s+plugin={FAMILY}\b", out, re.M), out
    for entry in ENTRIES:
        assert re.search(rf"^\s+{entry}\s+family={FAMILY}\b", out, re.M), f"entry {entry} missing:\n{out}"
    for builtin in ("gmm", "vae"):  # the built-ins are still there
        assert re.search(rf"^\s+{builtin}\s+likelihood=", out, re.M), out
    assert "warning: plugin" not in proc.stderr, proc.stderr


def test_runner_trains_a_plugin_entry(venv):
    runs = venv["work"] / "runs"
    proc = run([venv["python"], "-m", "zoo_core", "train", "independent-moons", "--max-steps", "5",
                 "--runs-dir", runs, "--no-progress", "--accelerator", "cpu"], cwd=venv["work"])
    assert proc.returncode == 0, explain(proc)
    (run_dir,) = [p for p in (runs / "independent-moons").iterdir() if p.is_dir()]
    assert (run_dir / "samples.png").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["family"] == FAMILY and metrics["likelihood"] == "exact"
    assert metrics["steps"] == 5
    assert math.isfinite(metrics["test"]["nll_nats"]), metrics


def test_plugin_own_conformance_suite_passes(venv):
    proc = run([venv["python"], "-m", "pytest", PLUGIN_SRC / "tests", "-q", "-p", "no:cacheprovider"],
                cwd=venv["work"])
    assert proc.returncode == 0, explain(proc)
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and "failed" not in summary and "error" not in summary, summary


def test_system_python_does_not_see_the_plugin(venv):
    if venv["seen_before"]:
        pytest.skip(f"{DIST} is installed in this interpreter's own environment; isolation cannot be checked")
    assert not _system_sees_plugin(), "installing into the venv leaked the plugin into the system environment"
    from zoo_core.zoo import Zoo

    plugins = Zoo().plugins  # a fresh catalogue: re-reads the entry points
    assert FAMILY not in plugins.families and not set(ENTRIES) & set(plugins.entries)
    assert {"gmm", "vae"} <= set(plugins.families)
