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


def venv_with(package_src: Path, root: Path) -> Path:
    """A throwaway venv that sees the packages of the interpreter running the tests (torch,
    Lightning, pip, setuptools: the active virtualenv's when there is one, else the system's) with
    ``package_src`` pip-installed into it (no network, no build isolation). Returns its python.

    ``python -m venv --system-site-packages`` would see the *base* interpreter's packages, not an
    active virtualenv's, so the venv is made without them and a ``.pth`` file appends this
    interpreter's site-packages to its ``sys.path`` (after the venv's own: a copy installed there wins).
    """
    import site
    import sys
    import sysconfig

    env_dir = root / "venv"
    proc = run([sys.executable, "-m", "venv", "--without-pip", env_dir], cwd=root)
    assert proc.returncode == 0, explain(proc)
    python = env_dir / "bin" / "python"
    proc = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root)
    assert proc.returncode == 0, explain(proc)
    outer = [p for p in dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"]]) if Path(p).is_dir()]
    # 'import' lines of a .pth run at start-up: addsitedir also reads the outer .pth files (e.g. an
    # editable install's finder, which setuptools appends to sys.meta_path after the path finder)
    (Path(proc.stdout.strip()) / "zz_outer_site.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in outer))
    proc = run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                "--no-cache-dir", "-q", package_src], cwd=root)
    assert proc.returncode == 0, explain(proc)
    return python
