"""The one shared runner: train, evaluate and sample any registry entry with a Lightning Trainer.

Distribution is Lightning's: ``devices``/``num_nodes`` > 1 selects DDP, launched by Lightning
itself (it re-runs the same command once per extra local process), by ``torchrun`` or by SLURM.
Every process of a run writes into the same ``runs/<entry>/<version>/``, which holds the
resolved ``config.yaml``, ``checkpoints/``, CSV logs, ``metrics.json`` and ``samples.png``.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from zoo_core.checkpoint import LAST, load_model, read_checkpoint, resolve_checkpoint
from zoo_core.checkpoint_io import AtomicCheckpointIO, RngStates, StepCheckpoint, write_atomic, write_errors_reported
from zoo_core.errors import CheckpointError, ConfigError, DataError, TrainingDiverged, ZooError
from zoo_core.plugins import get_plugins
from zoo_core.expected import check as check_expected, expectations_for
from zoo_core.registry import Registry, apply_override, resolve_entry

RUNS_ENV = "ZOO_RUNS_DIR"
RUN_DIR_ENV = "_ZOO_RUN_DIR"  # handed by the launching process to the processes Lightning starts

log = logging.getLogger("zoo")


@dataclass
class RunOptions:
    """What the command line (or a caller) sets on top of a registry entry."""

    overrides: list[str] = field(default_factory=list)
    registry_files: list[str] = field(default_factory=list)
    accelerator: str = "auto"
    devices: int | str | None = None
    num_nodes: int | None = None
    strategy: str | None = None
    precision: str | None = None
    max_epochs: int | None = None
    max_steps: int | None = None
    seed: int | None = None
    runs_dir: str | None = None
    resume: str | None = None  # "latest", a run directory or a checkpoint
    wandb: bool = False
    data_dir: str | None = None
    progress: bool = True

    def cli_overrides(self) -> list[str]:
        items = list(self.overrides)
        for key, value in (("max_epochs", self.max_epochs), ("max_steps", self.max_steps),
                           ("seed", self.seed), ("precision", self.precision)):
            if value is not None:
                items.append(f"train.{key}={value}")
        return items


# ---- building blocks -----------------------------------------------------------------------------
def build_datamodule(config: dict, data_dir: str | None = None, plugins=None):
    plugins = plugins or get_plugins()
    data = dict(config["data"])
    cls = plugins.dataset(data.pop("name"))
    train = config["train"]
    try:
        return cls(representation=data.pop("representation"), batch_size=train["batch_size"],
                   eval_batch_size=train["eval_batch_size"], seed=train["seed"], data_dir=data_dir, **data)
    except TypeError as exc:
        raise ConfigError(f"entry '{config['entry']}': bad data settings ({exc})") from None


def build_model(config: dict, datamodule, plugins=None):
    plugins = plugins or get_plugins()
    cls = plugins.family(config["family"])
    try:
        model = cls(data=datamodule.spec.to_dict(), optim=config["optim"], **config["model"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"entry '{config['entry']}': family '{config['family']}' rejected its model "
                          f"settings: {exc}") from None
    model.zoo_config = config
    return model


def _distributed_defaults(opts: RunOptions) -> tuple[Any, int]:
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


def _world_size(devices, num_nodes: int) -> int:
    if isinstance(devices, int):
        return devices * num_nodes
    if isinstance(devices, (list, tuple)):
        return len(devices) * num_nodes
    if isinstance(devices, str) and devices.replace(",", "").isdigit():
        parts = [p for p in devices.split(",") if p]
        return (len(parts) if "," in devices else int(devices)) * num_nodes
    return num_nodes  # "auto": let Lightning decide; treated as one per node here


def build_trainer(opts: RunOptions, config: dict, run_dir: Path | None, *, training: bool) -> pl.Trainer:
    devices, num_nodes = _distributed_defaults(opts)
    world = _world_size(devices, num_nodes)
    strategy = opts.strategy or ("ddp" if world > 1 else "auto")
    train = config["train"]
    kwargs: dict[str, Any] = dict(
        accelerator=opts.accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
        precision=train["precision"], use_distributed_sampler=False, enable_progress_bar=opts.progress,
        enable_model_summary=False, deterministic=False,
    )
    if not training:
        return pl.Trainer(logger=False, enable_checkpointing=False, default_root_dir=run_dir, **kwargs)
    loggers: list = [CSVLogger(save_dir=str(run_dir), name="", version=_log_version(run_dir))]
    if opts.wandb:
        loggers.append(_wandb_logger(config, run_dir))
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
    return pl.Trainer(
        max_epochs=train["max_epochs"] if train["max_epochs"] is not None else -1,
        max_steps=train["max_steps"], gradient_clip_val=train["gradient_clip_val"],
        log_every_n_steps=train["log_every_n_steps"], check_val_every_n_epoch=train["check_val_every_n_epoch"],
        limit_train_batches=train["limit_train_batches"], default_root_dir=run_dir, logger=loggers,
        callbacks=callbacks, plugins=[AtomicCheckpointIO()], **kwargs)


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


def _log_version(run_dir: Path) -> str:
    """``logs`` for a run's first start, ``logs-resume1``, ``logs-resume2``, ... for each resumption:
    Lightning's CSV logger deletes an existing metrics.csv, and earlier logs must not be lost."""
    name, n = "logs", 0
    while (run_dir / name / "metrics.csv").exists():
        n += 1
        name = f"logs-resume{n}"
    return name


def _wandb_logger(config: dict, run_dir: Path):
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


# ---- run directories -----------------------------------------------------------------------------
def runs_root(opts: RunOptions) -> Path:
    return Path(opts.runs_dir or os.environ.get(RUNS_ENV) or "runs")


def _new_run_dir(base: Path) -> Path:
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


def _claim_run_dir(base: Path, resume_dir: Path | None) -> Path:
    """The run directory of this process; identical on every process of a distributed run."""
    if os.environ.get(RUN_DIR_ENV):
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
    return _new_run_dir(base)


def _broadcast_run_dir(base: Path) -> Path:
    """Under torchrun: rank 0 claims a new directory and tells the others. The process group
    created here is the one Lightning then uses (it skips its own initialisation)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    holder = [str(_new_run_dir(base)) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    return Path(holder[0])


@contextlib.contextmanager
def _shared_run_dir(run_dir: Path):
    """Processes that Lightning launches inherit the run directory through the environment."""
    previous = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous


def _share_cpu_cores(trainer: pl.Trainer) -> None:
    """Several CPU processes on one machine: split the cores between them (as torchrun does),
    unless the user set OMP_NUM_THREADS. Oversubscribed intra-op threads can be 10x slower."""
    if trainer.strategy.root_device.type != "cpu" or trainer.num_devices < 2 or "OMP_NUM_THREADS" in os.environ:
        return
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // trainer.num_devices))


def _write_json(path: Path, payload: dict) -> None:
    write_atomic(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def _quiet_lightning() -> None:
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (".*does not have many workers.*", ".*smaller than the logging interval.*",
                    ".*LeafSpec.*", ".*is deprecated.*", ".*Checkpoint directory .* exists and is not empty.*",
                    ".*could not be inferred.*"):
        warnings.filterwarnings("ignore", message=pattern)


def _weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _gather_digests(model, trainer: pl.Trainer) -> dict:
    """Every rank's weight digest: proof that DDP kept the replicas identical."""
    import torch.distributed as dist

    digest = _weights_digest(model)
    if trainer.world_size > 1 and dist.is_initialized():
        digests: list = [None] * dist.get_world_size()
        dist.all_gather_object(digests, digest)
    else:
        digests = [digest]
    return {"world_size": len(digests), "weights_sha256_per_rank": digests, "identical": len(set(digests)) == 1}


# ---- train -----------------------------------------------------------------------------------------
def resolve_config(entry: str, opts: RunOptions) -> tuple[dict, Path | None, Path | None, dict | None]:
    """The run's configuration, plus (resume checkpoint, resume run directory, the checkpoint's
    optimiser settings) when resuming."""
    plugins = get_plugins()
    if not opts.resume:
        return Registry(opts.registry_files, plugins).resolve(entry, opts.cli_overrides()), None, None, None
    if opts.resume == "latest":
        run_dir = latest_run(runs_root(opts) / entry)
        if run_dir is None:
            raise CheckpointError(f"--resume: no run of '{entry}' with a checkpoint under {runs_root(opts) / entry}")
        target = run_dir
    else:
        target = Path(opts.resume)
    ckpt, run_dir = resolve_checkpoint(target)
    checkpoint = read_checkpoint(ckpt)  # refuses unsafe or corrupted files before Lightning sees them
    saved = (checkpoint.get("zoo") or {}).get("config")
    if saved is None:
        raise CheckpointError(f"{ckpt}: not a zoo checkpoint (no configuration inside)")
    if saved["entry"] != entry:
        raise ConfigError(f"--resume: {ckpt} is a run of '{saved['entry']}', not '{entry}'")
    body = copy.deepcopy({k: v for k, v in saved.items() if k not in ("entry", "source")})  # saved stays as saved
    for item in opts.cli_overrides():
        apply_override(body, item)
    config = resolve_entry(entry, body, f"{ckpt}: entry '{entry}'", saved["source"], plugins)
    return config, ckpt, run_dir or ckpt.parent.parent, saved.get("optim")


def train(entry: str, opts: RunOptions | None = None) -> dict:
    """Train ``entry`` and evaluate it; returns the metrics written to ``metrics.json``."""
    opts = opts or RunOptions()
    _quiet_lightning()
    config, resume_ckpt, resume_dir, saved_optim = resolve_config(entry, opts)
    pl.seed_everything(config["train"]["seed"], workers=True, verbose=False)
    datamodule = build_datamodule(config, opts.data_dir)
    model = build_model(config, datamodule)
    run_dir = _claim_run_dir(runs_root(opts) / entry, resume_dir)
    with _shared_run_dir(run_dir):
        trainer = build_trainer(opts, config, run_dir, training=True)
        if saved_optim and any(o.split("=", 1)[0].strip().startswith("optim.") for o in opts.cli_overrides()):
            trainer.callbacks.append(OptimOverride(saved_optim, config["optim"]))
        _share_cpu_cores(trainer)
        if trainer.is_global_zero:
            for stale in (run_dir / "checkpoints").glob(".*.tmp-*"):  # left by a process killed mid-save
                stale.unlink(missing_ok=True)
            write_atomic(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        clock = next(c for c in trainer.callbacks if isinstance(c, TrainClock))
        start = clock.start = time.perf_counter()
        try:
            with write_errors_reported(run_dir):  # e.g. a full disk under Lightning's own writers (CSV logs)
                trainer.fit(model, datamodule=datamodule, ckpt_path=str(resume_ckpt) if resume_ckpt else None)
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
        results = run_metrics(trainer, model, datamodule, config)
    metrics = {
        "entry": entry, "family": config["family"], "likelihood": model.likelihood, "run_dir": str(run_dir),
        "wall_time_s": round(wall, 3),
        "train_time_total_s": round(total, 3) if total is not None else None, "epochs": trainer.current_epoch, "steps": trainer.global_step,
        "val_during_training": _with_bits(callback, model), **results, "ddp": ddp,
    }
    # expected results (zoo_core/expected.py): the entry's as resolved, or the registry's now when resuming
    metrics["expected"] = check_expected(
        config["expected"] if resume_ckpt is None else expectations_for(config, opts.registry_files), metrics)
    if trainer.is_global_zero:
        _write_json(run_dir / "metrics.json", metrics)
        _save_picture(model, datamodule, config, run_dir / "samples.png")
    return metrics


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


def run_metrics(trainer: pl.Trainer, model, datamodule, config: dict) -> dict:
    """Evaluate the configured metrics on the configured splits (all ranks take part)."""
    plugins = get_plugins()
    model.configure_evaluation(config["eval"])
    metrics = [plugins.metric(name)(**config["eval"]) for name in config["eval"]["metrics"]]
    metrics = [m for m in metrics if m.applies_to(model)]
    results: dict[str, Any] = {}
    for split in config["eval"]["splits"] if metrics else []:
        model.zoo_metrics = metrics
        datamodule.test_split = split
        trainer.test(model, datamodule=datamodule, verbose=False)
        results[split] = dict(model.zoo_results)
    model.zoo_metrics = []
    # described after measuring: a description may name what the measurement set up (e.g. the
    # feature classifier, trained or loaded from the data the trainer's datamodule points at)
    return {"metric_descriptions": {m.name: m.describe(model) for m in metrics}, **results}


def _save_picture(model, datamodule, config: dict, path: Path) -> None:
    from zoo_core.plotting import save_samples

    n = config["eval"]["num_samples"]
    data = datamodule.eval_data("test")[:2000] if datamodule.spec.event_shape == (2,) else None
    if data is None and datamodule.spec.event_shape != (2,) and not datamodule.spec.is_image:
        return
    title = f"{config['entry']}: {config['family']} samples"
    if datamodule.spec.event_shape == (2,):
        n = max(n, 1000)
    with write_errors_reported(path):
        save_samples(model, path, n, data=data, title=title)


# ---- evaluate and sample ----------------------------------------------------------------------------
def evaluate(path: str, opts: RunOptions | None = None, splits: list[str] | None = None) -> dict:
    """Evaluate a run directory or checkpoint; ``opts.overrides`` may change ``eval.*`` settings."""
    opts = opts or RunOptions()
    _quiet_lightning()
    model, config, ckpt = load_model(path)
    body = {k: v for k, v in config.items() if k not in ("entry", "source")}
    for item in opts.overrides:
        if not item.split("=", 1)[0].strip().startswith("eval."):
            raise ConfigError(f"zoo eval: --set only changes eval.* settings, got {item!r}")
        apply_override(body, item)
    if splits:
        body["eval"] = {**body["eval"], "splits": splits}
    config = resolve_entry(config["entry"], body, f"{ckpt}: entry '{config['entry']}'", config["source"], get_plugins())
    pl.seed_everything(config["train"]["seed"], workers=True, verbose=False)
    datamodule = build_datamodule(config, opts.data_dir)
    if tuple(datamodule.spec.event_shape) != tuple(model.event_shape):
        raise DataError(f"{ckpt}: the model expects data of shape {tuple(model.event_shape)}, "
                        f"but dataset '{config['data']['name']}' has {datamodule.spec.event_shape}")
    _, run_dir = resolve_checkpoint(path)
    trainer = build_trainer(opts, config, run_dir, training=False)
    results = {"entry": config["entry"], "family": config["family"], "checkpoint": str(ckpt),
               "eval": config["eval"], **run_metrics(trainer, model, datamodule, config)}
    results["expected"] = check_expected(expectations_for(config, opts.registry_files), results)
    if trainer.is_global_zero and run_dir is not None:
        _write_json(run_dir / f"eval_{'_'.join(config['eval']['splits'])}.json", results)
    return results


def sample(path: str, n: int, output: str, seed: int = 0) -> Path:
    """Draw ``n`` samples; write a PNG picture, a .pt tensor or a .npy array by the file's suffix."""
    out = Path(output)
    suffix = out.suffix.lower()
    if suffix not in (".png", ".pt", ".npy"):
        raise ZooError(f"-o {output}: expected a file ending in .png, .pt or .npy")
    if n < 1:
        raise ZooError(f"-n must be a positive number of samples, got {n}")
    model, config, _ = load_model(path)
    pl.seed_everything(seed, verbose=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        from zoo_core.plotting import save_samples

        save_samples(model, out, n, title=f"{config['entry']}: {n} samples")
        return out
    with torch.no_grad():
        samples = model.sample((n,)).cpu()
    if suffix == ".pt":
        torch.save(samples, out)
    else:
        import numpy as np

        np.save(out, samples.numpy())
    return out
