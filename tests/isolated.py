"""Helpers for tests that run commands in throwaway virtual environments."""
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300


def isolated_env() -> dict:
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


def run(cmd, cwd, timeout=TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=isolated_env(), capture_output=True, text=True,
                          timeout=timeout)


def explain(proc: subprocess.CompletedProcess) -> str:
    return (f"command {' '.join(proc.args)} exited with {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}")
