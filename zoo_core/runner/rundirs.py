"""Run directories: ``runs/<entry>/version_N/``, claimed atomically, shared by every process of a run."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from zoo_core.checkpoint import LAST
from zoo_core.errors import ZooError

RUNS_ENV = "ZOO_RUNS_DIR"
RUN_DIR_ENV = "_ZOO_RUN_DIR"  # handed by the launching process to the processes Lightning starts
LAUNCHED_ENV = "_ZOO_LAUNCHED"  # set beside it: only the zoo's own launched processes honour it


def runs_root(opts) -> Path:
    return Path(getattr(opts, "runs_dir", None) or os.environ.get(RUNS_ENV) or "runs")


def new_run_dir(base: Path) -> Path:
    try:
        base.mkdir(parents=True, exist_ok=True)
        while True:
            numbers = [int(p.name.split("_", 1)[1]) for p in base.glob("version_*") if p.name.split("_", 1)[1].isdigit()]
            candidate = base / f"version_{max(numbers, default=-1) + 1}"
            try:
                candidate.mkdir()
                return candidate
            except FileExistsError:
                continue  # another run claimed it first
    except OSError as exc:
        raise ZooError(f"cannot create a run directory under {base}: {exc.strerror or exc}") from None


def latest_run(base: Path) -> Path | None:
    runs = [p for p in base.glob("*") if (p / "checkpoints" / LAST).is_file()]
    return max(runs, key=lambda p: (p / "checkpoints" / LAST).stat().st_mtime, default=None)


def claim_run_dir(base: Path, resume_dir: Path | None) -> Path:
    """The run directory of this process; identical on every process of a distributed run."""
    if os.environ.get(RUN_DIR_ENV) and os.environ.get(LAUNCHED_ENV) == os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    if resume_dir is not None:
        return resume_dir
    env = os.environ
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
        run_dir = base / f"slurm-{env['SLURM_JOB_ID']}"  # same on every task and on requeue
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir
    if int(env.get("WORLD_SIZE", "1")) > 1 and "RANK" in env:
        return _broadcast_run_dir(base)
    return new_run_dir(base)


def _broadcast_run_dir(base: Path) -> Path:
    """Under torchrun: rank 0 claims a new directory and tells the others. The process group
    created here is the one Lightning then uses (it skips its own initialisation)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    holder = [str(new_run_dir(base)) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    return Path(holder[0])


@contextlib.contextmanager
def shared_run_dir(run_dir: Path):
    """Processes that Lightning launches inherit the run directory through the environment."""
    previous = {k: os.environ.get(k) for k in (RUN_DIR_ENV, LAUNCHED_ENV)}
    os.environ[RUN_DIR_ENV] = os.environ[LAUNCHED_ENV] = str(run_dir)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def remove_stale_temporaries(run_dir: Path, best_checkpoints: tuple[str, ...] | None = None) -> None:
    """Temporary checkpoint files left by a process killed mid-save; when resuming, also "best"
    checkpoints that the resumed checkpoint does not know (a crash after a new best was written but
    before the previous best was removed), so a run never has two bests."""
    for stale in (run_dir / "checkpoints").glob(".*.tmp*"):
        stale.unlink(missing_ok=True)
    if best_checkpoints:
        for best in (run_dir / "checkpoints").glob("best-*.ckpt"):
            if best.name not in best_checkpoints:
                best.unlink(missing_ok=True)
