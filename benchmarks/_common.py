"""Shared pieces of the benchmarks: a registry entry built exactly as the runner builds it, the
runner's training (the Lightning Trainer of ``zoo_core.runner.build_trainer``) and the
hand-written PyTorch loop it is compared with, both timed the same way.

What a timed training run includes, for both arms:

- the same model class and constructor arguments (``build_model`` on the entry), seeded alike,
  and the same data-dependent initialisation (``init_from_data`` on ``init_batch()``), done
  before the timed window;
- the same in-memory training tensor, shuffled every epoch, indexed on the host, with the same
  per-batch transform (dynamic binarisation / dequantisation noise) and moved to the device;
- Adam (or whatever ``optim`` names) with the entry's settings, its cosine schedule if any,
  gradient clipping if any, and the family's ``on_train_batch_end`` (e.g. the diffusion EMA);
- no validation and no sample-quality evaluation: the runner arm sets
  ``train.check_val_every_n_epoch`` beyond the run's epochs; its ``ModelCheckpoint`` callbacks
  write at validation end, so they write nothing either. The runner arm keeps everything else
  ``build_trainer`` sets up: the CSV logger (every ``log_every_n_steps``), ``self.log`` of the
  training loss every step, ``check_finite``, the optimiser closure, Lightning's hooks; the
  progress bar only with ``progress=True``.

Timing: steps/s over the steps after ``warmup`` (the clock is read at the end of step ``warmup``
and of the last step, synchronising CUDA there), so start-up (imports, Trainer construction,
k-means initialisation) is outside the window.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported: one intra-op thread
os.environ.setdefault("WANDB_MODE", "offline")

import contextlib  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402

from zoo_core.api import default_zoo  # noqa: E402
from zoo_core.model import OPTIMIZERS  # noqa: E402
from zoo_core.runner import (RunOptions, build_datamodule, build_model, build_trainer,  # noqa: E402
                             fuse_training_steps, quiet_lightning)

#: the installed plugins and the zoo's registry (and $ZOO_REGISTRY), as ``zoo train`` sees them
ZOO = default_zoo()

#: beyond any benchmark's number of epochs: no validation (and so no checkpoint) in the window
NO_VALIDATION = 1_000_000
SUPPORTED_PRECISIONS = ("32-true", "bf16-mixed")


def quiet() -> None:
    """One thread, no Lightning chatter."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    quiet_lightning()
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*(monitor|ModelCheckpoint|num_workers|GPU available|TPU|"
                                              "LOCAL_RANK|precision|tensorboard).*")


def resolve(entry: str, steps: int, precision: str = "32-true", overrides: tuple[str, ...] = ()) -> dict:
    """The entry's resolved configuration for a run of exactly ``steps`` training steps."""
    if precision not in SUPPORTED_PRECISIONS:
        raise SystemExit(f"--precision: the benchmarks support {', '.join(SUPPORTED_PRECISIONS)}, got {precision}")
    items = [*overrides, f"train.max_steps={steps}", f"train.max_epochs={NO_VALIDATION - 1}",
             f"train.check_val_every_n_epoch={NO_VALIDATION}", f"train.precision={precision}"]
    return ZOO.resolve(entry, items)


def build(config: dict, data_dir: str | None = None):
    """(datamodule, model), seeded as the runner seeds them."""
    pl.seed_everything(config["train"]["seed"], workers=True, verbose=False)
    datamodule = build_datamodule(ZOO, config, data_dir)
    model = build_model(ZOO, config, datamodule)
    fuse_training_steps(config, datamodule, model)
    return datamodule, model


def device_of(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False on this machine")
    return torch.device(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """One timed run: ``steps`` timed steps in ``seconds`` of wall time and ``cpu_seconds`` of this
    process's CPU time (after warm-up); ``total_s`` the whole call, start-up included."""

    steps: int
    seconds: float
    cpu_seconds: float  # CPU time of this process in the window: robust to other processes' load
    total_s: float

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds

    @property
    def steps_per_cpu_s(self) -> float:
        return self.steps / self.cpu_seconds


class _Window:
    """Reads the clock at the end of step ``warmup`` and of step ``last`` (1-based)."""

    def __init__(self, warmup: int, last: int, device: torch.device):
        self.warmup, self.last, self.device = warmup, last, device
        self.count, self.t0, self.t1, self.c0, self.c1 = 0, None, None, None, None

    def step_done(self) -> None:
        self.at_step(self.count + 1)

    def at_step(self, step: int) -> None:
        """The run has taken ``step`` optimiser steps (fused steps advance it by several at once)."""
        self.count = step
        if self.t0 is None and step >= self.warmup:
            sync(self.device)
            self.t0, self.c0, self.warm_step = time.perf_counter(), time.process_time(), step
        if self.t1 is None and step >= self.last:
            sync(self.device)
            self.t1, self.c1, self.end_step = time.perf_counter(), time.process_time(), step

    def timing(self, total_s: float) -> Timing:
        if self.t0 is None or self.t1 is None:
            raise RuntimeError(f"only {self.count} training steps ran; expected {self.last}")
        return Timing(self.end_step - self.warm_step, self.t1 - self.t0, self.c1 - self.c0, total_s)


class _WindowCallback(pl.Callback):
    def __init__(self, window: _Window):
        self.window = window

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.window.at_step(trainer.global_step)  # optimiser steps: also right for fused steps and GANs


def run_runner(config: dict, device: torch.device, warmup: int, progress: bool = False,
               data_dir: str | None = None, on_built=None) -> Timing:
    """Train with the shared runner's Trainer (``build_trainer``), as ``zoo train`` does, minus
    evaluation. ``on_built(model)`` is called before training starts (memory baselines)."""
    start = time.perf_counter()
    datamodule, model = build(config, data_dir)
    opts = RunOptions(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, progress=progress)
    window = _Window(warmup, config["train"]["max_steps"], device)
    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as tmp:
        trainer = build_trainer(opts, config, Path(tmp), training=True)
        trainer.callbacks.append(_WindowCallback(window))
        if on_built is not None:
            on_built(model)
        trainer.fit(model, datamodule=datamodule)
    return window.timing(time.perf_counter() - start)


def _autocast(device: torch.device, precision: str):
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def plain_loop(model, datamodule, config: dict, device: torch.device, window: _Window | None = None) -> None:
    """The hand-written loop: ``config['train']['max_steps']`` Adam steps on ``model.loss``.

    Same work per step as the runner (see the module docstring) without Lightning: no logging,
    no finiteness check, no hooks but the family's ``on_train_batch_end``."""
    if not model.automatic_optimization:
        raise SystemExit(f"entry '{config['entry']}': family '{config['family']}' optimises manually "
                         "(its own training_step); the plain loop covers families trained on model.loss")
    train, optim = config["train"], model.optim_config
    steps = int(train["max_steps"])
    if not bool(model._zoo_data_initialised):  # what GenerativeModel.setup does in the runner, on the host
        model.init_from_data(datamodule.init_batch())
        model._zoo_data_initialised.fill_(True)
    model.to(device).train()
    data = datamodule.raw["train"]  # (N, *event), in host memory, as the runner's loader keeps it
    noise = datamodule._noise()  # (x, generator=None) -> represented x, as the runner's loader applies it
    name = str(optim["name"]).lower()
    kwargs = {"lr": float(optim["lr"]), "weight_decay": float(optim["weight_decay"])}
    if name != "sgd":
        kwargs["betas"] = tuple(optim["betas"])
    opt = OPTIMIZERS[name](model.parameters(), **kwargs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps) if optim.get("scheduler") == "cosine" else None
    clip = train["gradient_clip_val"]
    gen = torch.Generator().manual_seed(int(train["seed"]))
    step = 0
    while step < steps:
        for i, idx in enumerate(torch.randperm(len(data), generator=gen).split(int(train["batch_size"]))):
            batch = data[idx]  # (B, *event)
            if noise is not None:
                batch = noise(batch)
            batch = batch.to(device)
            opt.zero_grad(set_to_none=True)
            with _autocast(device, train["precision"]):
                loss = model.loss(batch)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(clip))
            opt.step()
            if sched is not None:
                sched.step()
            model.on_train_batch_end(loss, batch, i)
            step += 1
            if window is not None:
                window.step_done()
            if step == steps:
                break


def run_plain(config: dict, device: torch.device, warmup: int, data_dir: str | None = None, on_built=None) -> Timing:
    start = time.perf_counter()
    datamodule, model = build(config, data_dir)
    window = _Window(warmup, config["train"]["max_steps"], device)
    if on_built is not None:
        on_built(model)
    plain_loop(model, datamodule, config, device, window)
    return window.timing(time.perf_counter() - start)


def spread(values: list[float]) -> str:
    """median [min-max] (+-half range in % of the median)."""
    med = statistics.median(values)
    half = (max(values) - min(values)) / 2 / med * 100 if med else float("nan")
    return f"{med:.3g} [{min(values):.3g}-{max(values):.3g}] (+-{half:.0f}%)"


def machine_note() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
    return (f"torch {torch.__version__}, lightning {pl.__version__}, {torch.get_num_threads()} thread(s), "
            f"{os.cpu_count()} CPUs, load average {load:.2f}, {dev}")
