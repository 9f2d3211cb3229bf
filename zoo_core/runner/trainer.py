"""The Lightning Trainer of a run: hardware, strategy, loggers and the zoo's callbacks."""
from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from zoo_core.checkpoint import LAST
from zoo_core.checkpoint_io import AtomicCheckpointIO, RngStates, StepCheckpoint
from zoo_core.errors import ConfigError

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")


def distributed_defaults(opts) -> tuple[Any, int]:
    """devices and num_nodes, taken from torchrun or SLURM when the user did not set them."""
    devices, num_nodes = opts.devices, opts.num_nodes
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env and "LOCAL_WORLD_SIZE" in env:
        local, world = int(env["LOCAL_WORLD_SIZE"]), int(env["WORLD_SIZE"])
        devices = devices if devices is not None else local
        num_nodes = num_nodes if num_nodes is not None else max(1, world // local)
    elif int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_NTASKS_PER_NODE" in env:
        devices = devices if devices is not None else int(env["SLURM_NTASKS_PER_NODE"].split("(")[0])
        num_nodes = num_nodes if num_nodes is not None else int(env.get("SLURM_NNODES", "1"))
    return (devices if devices is not None else 1), (num_nodes if num_nodes is not None else 1)


def world_size(devices, num_nodes: int) -> int:
    if isinstance(devices, int):
        return devices * num_nodes
    if isinstance(devices, (list, tuple)):
        return len(devices) * num_nodes
    if isinstance(devices, str) and devices.replace(",", "").isdigit():
        parts = [p for p in devices.split(",") if p]
        return (len(parts) if "," in devices else int(devices)) * num_nodes
    return num_nodes  # "auto": let Lightning decide; treated as one per node here


def check_hardware(opts) -> None:
    """One-line errors before anything is built: unknown accelerator or strategy, more local
    processes than this machine has CPUs or GPUs."""
    if opts.accelerator not in ACCELERATORS:
        raise ConfigError(f"--accelerator {opts.accelerator!r}: expected one of {', '.join(ACCELERATORS)}")
    if opts.strategy is not None:
        from pytorch_lightning.strategies import StrategyRegistry

        known = sorted(StrategyRegistry.available_strategies())
        if opts.strategy not in known and opts.strategy != "auto":
            from zoo_core.registry import suggest

            raise ConfigError(f"--strategy {opts.strategy!r}: not a Lightning strategy{suggest(opts.strategy, known)}; "
                              f"e.g. ddp, ddp_spawn, fsdp, auto")
    devices = opts.devices
    if isinstance(devices, int) and devices < 1:
        raise ConfigError(f"--devices {devices}: expected at least 1")
    if isinstance(devices, int):
        gpu = opts.accelerator in ("gpu", "cuda") or (opts.accelerator == "auto" and torch.cuda.is_available())
        available = torch.cuda.device_count() if gpu else (os.cpu_count() or 1)
        if devices > available:
            kind = "GPUs" if gpu else "CPU cores"
            raise ConfigError(f"--devices {devices}: this machine has {available} {kind}; use at most {available} "
                              f"processes per node (more nodes with --num-nodes)")


def build_trainer(opts, config: dict, run_dir: Path | None, *, training: bool) -> pl.Trainer:
    devices, num_nodes = distributed_defaults(opts)
    world = world_size(devices, num_nodes)
    strategy = opts.strategy or ("ddp" if world > 1 else "auto")
    train = config["train"]
    bars = progress_bars(opts)
    kwargs: dict[str, Any] = dict(
        accelerator=opts.accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
        precision=train["precision"], use_distributed_sampler=False, enable_progress_bar=bars,
        enable_model_summary=False, deterministic=False,
    )
    if not training:
        return pl.Trainer(logger=False, enable_checkpointing=False, default_root_dir=run_dir, **kwargs)
    loggers: list = [CSVLogger(save_dir=str(run_dir), name="", version=log_version(run_dir))]
    if opts.wandb:
        loggers.append(wandb_logger(config, run_dir))
    # Two callbacks: Lightning 2.6 writes save_last's last.ckpt only when the monitored top-k file
    # is saved too, which would make "last" the best; here last.ckpt is always the latest epoch.
    # save_on_train_epoch_end: every epoch, also when validation runs only every n epochs.
    last = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename=LAST.removesuffix(".ckpt"), monitor=None,
                           save_top_k=1, enable_version_counter=False, save_on_train_epoch_end=True)
    best = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best-epoch{epoch:03d}-step{step}",
                           auto_insert_metric_name=False, save_top_k=1, monitor="val/loss", mode="min")
    callbacks: list = [RngStates(), TrainClock(), last, best]
    if train.get("checkpoint_every_n_steps"):
        callbacks.insert(1, StepCheckpoint(run_dir / "checkpoints" / LAST, train["checkpoint_every_n_steps"]))
    if not bars and opts.progress is None:
        callbacks.append(EpochLines())
    return pl.Trainer(
        max_epochs=train["max_epochs"] if train["max_epochs"] is not None else -1,
        max_steps=train["max_steps"],
        # fused optimiser steps use manual optimisation: the model clips (GenerativeModel.fuse_steps)
        gradient_clip_val=train["gradient_clip_val"] if int(train.get("fused_steps") or 1) == 1 else None,
        log_every_n_steps=train["log_every_n_steps"], check_val_every_n_epoch=train["check_val_every_n_epoch"],
        limit_train_batches=train["limit_train_batches"], default_root_dir=run_dir, logger=loggers,
        callbacks=callbacks, plugins=[AtomicCheckpointIO()], **kwargs)


def progress_bars(opts) -> bool:
    """Bars when asked, or by default on a terminal; a log file gets one line per epoch instead."""
    if opts.progress is not None:
        return bool(opts.progress)
    return sys.stderr.isatty()


class EpochLines(pl.Callback):
    """One line per epoch on stderr (instead of carriage-return progress bars in a log file)."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train/"))}
        shown = "  ".join(f"{k} {v:.4f}" for k, v in sorted(values.items()))
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        print(f"epoch {trainer.current_epoch + 1}/{total}  step {trainer.global_step}  {shown}".rstrip(),
              file=sys.stderr, flush=True)


class TrainClock(pl.Callback):
    """Training time summed over every start of a run: a checkpoint carries the time spent so far
    (``zoo_train_time_s``), and a resumed run adds its own. Unknown (None) after resuming from a
    checkpoint written before this existed."""

    KEY = "zoo_train_time_s"

    def __init__(self):
        self.before: float | None = 0.0
        self.start: float | None = None

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self.before = checkpoint.get(self.KEY)

    def total(self, now: float | None = None) -> float | None:
        """Time before this start plus this start's, from ``start`` (set by the runner as ``fit`` begins)."""
        if self.before is None:
            return None
        now = time.perf_counter() if now is None else now
        return self.before + (now - self.start if self.start is not None else 0.0)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[self.KEY] = self.total()


class OptimOverride(pl.Callback):
    """``--resume --set optim.lr=...``: Lightning restores the optimiser state, learning rates and
    all, from the checkpoint; this applies the new settings on top (after the restore): every
    learning rate (scheduler base rates included) is scaled by new lr / saved lr, so a separate
    discriminator rate keeps its ratio; ``weight_decay`` and ``betas`` are set as given."""

    def __init__(self, saved: dict, new: dict):
        self.ratio = float(new["lr"]) / float(saved["lr"])
        self.changed = {k: new[k] for k in ("weight_decay", "betas") if k in new and new[k] != saved.get(k)}

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                for key in ("lr", "initial_lr"):
                    if key in group:
                        group[key] = group[key] * self.ratio
                for key, value in self.changed.items():
                    if key in group:
                        group[key] = tuple(value) if key == "betas" else float(value)
        for config in trainer.lr_scheduler_configs:
            config.scheduler.base_lrs = [lr * self.ratio for lr in config.scheduler.base_lrs]


def log_version(run_dir: Path) -> str:
    """``logs`` for a run's first start, ``logs-resume1``, ``logs-resume2``, ... for each resumption:
    Lightning's CSV logger deletes an existing metrics.csv, and earlier logs must not be lost."""
    name, n = "logs", 0
    while (run_dir / name / "metrics.csv").exists():
        n += 1
        name = f"logs-resume{n}"
    return name


def wandb_logger(config: dict, run_dir: Path):
    """wandb: offline unless the user configured it for online use; never an interactive prompt."""
    from pytorch_lightning.loggers import WandbLogger

    configured = bool(os.environ.get("WANDB_API_KEY")) or "api.wandb.ai" in _read(Path.home() / ".netrc")
    if not os.environ.get("WANDB_MODE"):
        os.environ.pop("WANDB_MODE", None)  # an empty value is not a mode
    mode = os.environ.get("WANDB_MODE") or ("online" if configured else "offline")
    if mode == "online" and not configured:
        mode = "offline"  # online without credentials would prompt for a key
    os.environ.setdefault("WANDB_SILENT", "true")
    return WandbLogger(project=os.environ.get("WANDB_PROJECT", "generative-zoo"), save_dir=str(run_dir),
                       name=f"{config['entry']}/{run_dir.name}", mode=mode, config=config)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def share_cpu_cores(trainer: pl.Trainer) -> None:
    """Several CPU processes on one machine: split the cores between them (as torchrun does),
    unless the user set OMP_NUM_THREADS. Oversubscribed intra-op threads can be 10x slower."""
    if trainer.strategy.root_device.type != "cpu" or trainer.num_devices < 2 or "OMP_NUM_THREADS" in os.environ:
        return
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // trainer.num_devices))


def quiet_lightning() -> None:
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (".*does not have many workers.*", ".*smaller than the logging interval.*",
                    ".*LeafSpec.*", ".*is deprecated.*", ".*Checkpoint directory .* exists and is not empty.*",
                    ".*could not be inferred.*"):
        warnings.filterwarnings("ignore", message=pattern)


def describe_hardware(trainer: pl.Trainer) -> str:
    """'2 processes (ddp, cpu)' for the summary line of a multi-process run; '' for one process."""
    if trainer.world_size < 2:
        return ""
    strategy = type(trainer.strategy).__name__.replace("Strategy", "").lower() or "ddp"
    return f"{trainer.world_size} processes ({strategy}, {trainer.strategy.root_device.type})"
