"""``train``: one registry entry, from its configuration to a trained, evaluated run directory.

Distribution is Lightning's: ``devices``/``num_nodes`` > 1 selects DDP, launched by Lightning
itself (it re-runs the same command once per extra local process), by ``torchrun`` or by SLURM.
Every process of a run writes into the same ``runs/<entry>/<version>/``, which holds the
resolved ``config.yaml``, ``checkpoints/``, CSV logs, ``metrics.json`` and ``samples.png``.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException

from zoo_core.checkpoint import LAST
from zoo_core.checkpoint_io import write_atomic, write_errors_reported
from zoo_core.errors import ConfigError, TrainingDiverged, ZooError
from zoo_core.expected import check as check_expected, not_comparable
from zoo_core.runner.build import build_datamodule, build_model, fuse_training_steps, in_memory_config
from zoo_core.runner.evaluation import run_metrics
from zoo_core.runner.options import RunOptions, resolve_config
from zoo_core.runner.pictures import save_run_picture
from zoo_core.runner.rundirs import claim_run_dir, remove_stale_temporaries, runs_root, shared_run_dir
from zoo_core.runner.trainer import (OptimOverride, TrainClock, build_trainer, check_hardware, describe_hardware,
                                     quiet_lightning, share_cpu_cores)
from zoo_core.runner.writing import write_json

LOCK = ".zoo-train.lock"


class Interrupted(ZooError):
    """Training was stopped by a signal (SIGTERM, e.g. a SLURM preemption) after saving what it could."""

    exit_code = 143


def train(zoo, entry: str, opts: RunOptions | None = None) -> dict:
    """Train ``entry`` and evaluate it; returns the metrics written to ``metrics.json``."""
    opts = opts or RunOptions()
    quiet_lightning()
    check_hardware(opts)
    zoo = zoo.with_registry(opts.registry_files)
    resolved = resolve_config(zoo, entry, opts)
    config = resolved.config
    pl.seed_everything(config["train"]["seed"], workers=True, verbose=False)
    datamodule = build_datamodule(zoo, config, opts.data_dir, opts.data)
    if opts.data is not None:
        config = resolved.config = in_memory_config(config)
    model = build_model(zoo, config, datamodule)
    fuse_training_steps(config, datamodule, model)
    run_dir = claim_run_dir(runs_root(opts) / entry, resolved.resume_dir)
    fresh = resolved.resume_ckpt is None and not any(run_dir.iterdir())
    try:
        with shared_run_dir(run_dir), _run_lock(run_dir):
            metrics = _fit_and_evaluate(zoo, entry, opts, resolved, datamodule, model, run_dir)
    except BaseException:
        if fresh and not (run_dir / "checkpoints" / LAST).exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # a start that failed before its first checkpoint
        raise
    return metrics


def _fit_and_evaluate(zoo, entry, opts, resolved, datamodule, model, run_dir: Path) -> dict:
    config = resolved.config
    trainer = build_trainer(opts, config, run_dir, training=True)
    if resolved.saved_optim and any(o.split("=", 1)[0].strip().startswith("optim.") for o in opts.cli_overrides()):
        trainer.callbacks.append(OptimOverride(resolved.saved_optim, config["optim"]))
    share_cpu_cores(trainer)
    if trainer.is_global_zero:
        remove_stale_temporaries(run_dir, resolved.best_checkpoints if resolved.resume_ckpt else None)
        write_atomic(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    clock = next(c for c in trainer.callbacks if isinstance(c, TrainClock))
    start = clock.start = time.perf_counter()
    try:
        with write_errors_reported(run_dir):
            trainer.fit(model, datamodule=datamodule,
                        ckpt_path=str(resolved.resume_ckpt) if resolved.resume_ckpt else None,
                        weights_only=True)  # Lightning's own read is weights-only too
    except SIGTERMException:  # SLURM preemption, kill: Lightning stopped at a step boundary
        if trainer.world_size == 1 and trainer.global_step > 0:
            trainer.save_checkpoint(run_dir / "checkpoints" / LAST)  # resumable from this very step
        raise Interrupted(f"training stopped by SIGTERM at step {trainer.global_step}; "
                          f"{_resume_hint(entry, run_dir, 'the last checkpoint')}") from None
    except SystemExit:  # Lightning turns Ctrl-C (KeyboardInterrupt) into sys.exit(1) after its teardown
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    except MisconfigurationException as exc:  # e.g. train.limit_train_batches too small for the data
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"entry '{entry}': Lightning refused the training settings: {first}") from None
    except TrainingDiverged as exc:
        raise TrainingDiverged(f"{exc}; {_resume_hint(entry, run_dir, 'the last good checkpoint')}") from None
    except RuntimeError as exc:  # a DDP peer died (killed, out of memory): gloo/NCCL report a lost connection
        if trainer.world_size < 2 or not _lost_peer(exc):
            raise
        first = str(exc).strip().splitlines()[0].split("] ", 1)[-1][:200]
        raise ZooError(f"training stopped: a process of this {trainer.world_size}-process run was lost "
                       f"({first}); {_resume_hint(entry, run_dir, 'the last checkpoint')}") from None
    end = time.perf_counter()
    wall, total = end - start, clock.total(end)
    ddp = _gather_digests(model, trainer)
    callback = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    results = run_metrics(zoo, trainer, model, datamodule, config)
    metrics = {
        "entry": entry, "family": config["family"], "likelihood": model.likelihood, "run_dir": str(run_dir),
        "wall_time_s": round(wall, 3),
        "train_time_total_s": round(total, 3) if total is not None else None,
        "epochs": trainer.current_epoch, "steps": trainer.global_step,
        "hardware": describe_hardware(trainer) or "1 process",
        "val_during_training": _with_bits(callback, model), **results, "ddp": ddp,
    }
    # expected results (zoo_core/expected.py): the registry's now, unless this run's settings differ
    registry = zoo.registry
    expectations = config["expected"] if resolved.resume_ckpt is None else registry.expectations_for(config)
    differs = _overrides_against_entry(zoo, entry, config)
    metrics["expected"] = (not_comparable(expectations, differs, metrics) if differs
                           else check_expected(expectations, metrics))
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", metrics)
        save_run_picture(model, datamodule, config, run_dir / "samples.png")
    return metrics


def _overrides_against_entry(zoo, entry: str, config: dict) -> list[str]:
    """The model/data/optim/train settings in which this run differs from its registry entry."""
    try:
        original = zoo.resolve(entry)
    except ZooError:
        return []
    out = []
    for section in ("model", "data", "optim", "train"):
        mine, theirs = config.get(section) or {}, original.get(section) or {}
        for key in sorted(set(mine) | set(theirs)):
            if mine.get(key) != theirs.get(key):
                out.append(f"{section}.{key}={mine.get(key)!r}")
    return out


@contextlib.contextmanager
def _run_lock(run_dir: Path):
    """One process tree trains a run directory at a time (a second --resume is refused)."""
    import fcntl

    if os.environ.get("LOCAL_RANK", "0") != "0" or int(os.environ.get("NODE_RANK", "0")) != 0:
        yield  # the launching process holds it for its whole process tree
        return
    path = run_dir / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{run_dir} is being trained by another process (lock {path}); "
                              f"wait for it to finish") from None
        yield
    finally:
        os.close(fd)


def _resume_hint(entry: str, run_dir: Path, what: str) -> str:
    last = run_dir / "checkpoints" / LAST
    if not last.is_file():
        return "no checkpoint had been written yet"
    return f"{what} is {last} (zoo train {entry} --resume {run_dir})"


def _lost_peer(exc: RuntimeError) -> bool:
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, getattr(dist, "DistError", ())) or any(
        marker in text for marker in ("gloo", "NCCL", "Connection reset", "Connection closed", "Broken pipe"))


def _with_bits(values: dict[str, float], model) -> dict[str, float]:
    out = dict(values)
    if "val/nll" in values:
        out["val/bits_per_dim"] = model.data_spec.bits_per_dim(values["val/nll"])
    return out


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _gather_digests(model, trainer: pl.Trainer) -> dict:
    """Every rank's weight digest: proof that DDP kept the replicas identical."""
    import torch.distributed as dist

    digest = weights_digest(model)
    if trainer.world_size > 1 and dist.is_initialized():
        digests: list = [None] * dist.get_world_size()
        dist.all_gather_object(digests, digest)
    else:
        digests = [digest]
    return {"world_size": len(digests), "weights_sha256_per_rank": digests, "identical": len(set(digests)) == 1}
