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
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PLUGIN_SRC = REPO / "examples" / "zoo-plugin-example"
FAMILY, MODULE, DIST = "independent", "zoo_independent", "zoo-plugin-example"
ENTRIES = ("independent-moons", "independent-digits")
TIMEOUT = 300


def _env() -> dict:
    """The current environment, minus settings that would change what the subprocesses load."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "ZOO_")) and k not in ("PYTHONHOME", "PYTHONSTARTUP")}
    # a PYTHONPATH entry inside the repository would put its source tree ahead of the installs
    paths = [p for p in env.pop("PYTHONPATH", "").split(os.pathsep)
             if p and not Path(p).resolve().is_relative_to(REPO)]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", PYTHONDONTWRITEBYTECODE="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONUNBUFFERED="1")
    return env


def _run(cmd, cwd, timeout=TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _explain(proc: subprocess.CompletedProcess) -> str:
    return (f"command {' '.join(proc.args)} exited with {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}")


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
    env_dir = root / "venv"
    # --without-pip: the venv then uses the system's pip and setuptools (a venv's own bundled
    # setuptools may be too old to build a wheel without the 'wheel' package, and no network)
    proc = _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", env_dir], cwd=root)
    assert proc.returncode == 0, _explain(proc)
    python = env_dir / "bin" / "python"
    proc = _run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                 "--no-cache-dir", "-q", src], cwd=root)
    assert proc.returncode == 0, _explain(proc)
    work = root / "work"  # run everything from outside the repository
    work.mkdir()
    return {"python": python, "work": work, "seen_before": seen_before}


def test_zoo_list_shows_the_plugin_family_and_entries(venv):
    proc = _run([venv["python"], "-m", "zoo_core", "list"], cwd=venv["work"])
    assert proc.returncode == 0, _explain(proc)
    out = proc.stdout
    assert re.search(rf"^\s+{FAMILY}\s+likelihood=exact\s+plugin={FAMILY}\b", out, re.M), out
    for entry in ENTRIES:
        assert re.search(rf"^\s+{entry}\s+family={FAMILY}\b", out, re.M), f"entry {entry} missing:\n{out}"
    for builtin in ("gmm", "vae"):  # the built-ins are still there
        assert re.search(rf"^\s+{builtin}\s+likelihood=", out, re.M), out
    assert "warning: plugin" not in proc.stderr, proc.stderr


def test_runner_trains_a_plugin_entry(venv):
    runs = venv["work"] / "runs"
    proc = _run([venv["python"], "-m", "zoo_core", "train", "independent-moons", "--max-steps", "5",
                 "--runs-dir", runs, "--no-progress", "--accelerator", "cpu"], cwd=venv["work"])
    assert proc.returncode == 0, _explain(proc)
    (run_dir,) = [p for p in (runs / "independent-moons").iterdir() if p.is_dir()]
    assert (run_dir / "samples.png").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["family"] == FAMILY and metrics["likelihood"] == "exact"
    assert metrics["steps"] == 5
    assert math.isfinite(metrics["test"]["nll_nats"]), metrics


def test_plugin_own_conformance_suite_passes(venv):
    proc = _run([venv["python"], "-m", "pytest", PLUGIN_SRC / "tests", "-q", "-p", "no:cacheprovider"],
                cwd=venv["work"])
    assert proc.returncode == 0, _explain(proc)
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and "failed" not in summary and "error" not in summary, summary


def test_system_python_does_not_see_the_plugin(venv):
    if venv["seen_before"]:
        pytest.skip(f"{DIST} is installed in this interpreter's own environment; isolation cannot be checked")
    assert not _system_sees_plugin(), "installing into the venv leaked the plugin into the system environment"
    from zoo_core.plugins import ZooPlugins

    plugins = ZooPlugins()  # a fresh catalogue: re-reads the entry points
    assert FAMILY not in plugins.families and not set(ENTRIES) & set(plugins.entries)
    assert {"gmm", "vae"} <= set(plugins.families)
