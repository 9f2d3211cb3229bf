"""Shared fixtures: offline wandb, the shared MNIST files, a CLI runner in a subprocess."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# One cache for the session, its xdist workers and the CLI subprocesses (they inherit it): the feature
# classifiers of the frechet / precision_recall metrics are trained once (file-locked), then loaded.
os.environ.setdefault("ZOO_CACHE_DIR", str(REPO / ".pytest_cache" / "zoo"))


def _foreign_plugins() -> list[str]:
    """Entry points of the zoo group from other distributions: the suite tests the zoo's own plugins,
    so a broken third-party plugin installed beside it must not fail it (tests that install a plugin
    run it in their own environment)."""
    import importlib.metadata as md

    return sorted({ep.name for ep in md.entry_points(group="zoo")
                   if getattr(ep, "dist", None) is None or ep.dist.metadata["Name"] != "generative-zoo"})


os.environ["ZOO_BLOCK_PLUGINS"] = ",".join(filter(None, [os.environ.get("ZOO_BLOCK_PLUGINS", ""), *_foreign_plugins()]))

# pytest-xdist runs one worker per core: one intra-op thread each, or they fight over the cores
import torch  # noqa: E402

torch.set_num_threads(1)


def zoo_env(**extra) -> dict:
    env = dict(os.environ)
    env.update({"WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "ZOO_DATA_DIR": str(SHARED_MNIST.parent),
                "OMP_NUM_THREADS": "1"})
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_zoo(*args, env=None, cwd=None, timeout=600):
    """Run the zoo CLI as a user would (``python -m zoo_core``); returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "zoo_core", *map(str, args)], capture_output=True, text=True,
                          env=env or zoo_env(), cwd=cwd, timeout=timeout)


@pytest.fixture(scope="session")
def zoo():
    """The session's Zoo (installed plugins and the zoo's registry). Tests that inject plugins build
    their own ``Zoo(extra_plugins={...})`` and pass it explicitly."""
    from zoo_core.api import default_zoo

    return default_zoo()
