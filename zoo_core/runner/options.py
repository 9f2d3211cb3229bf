"""What a caller sets on top of a registry entry, and the run's resolved configuration (and resume)."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo_core.checkpoint import read_checkpoint, resolve_checkpoint
from zoo_core.errors import CheckpointError, ConfigError
from zoo_core.registry import apply_override, resolve_entry
from zoo_core.runner.rundirs import latest_run, runs_root


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
    progress: bool | None = None  # None: bars on a terminal, one line per epoch otherwise
    #: in-memory data (a tensor or array, or (x, labels)) instead of the entry's dataset (Python API)
    data: Any = None

    def cli_overrides(self) -> list[str]:
        items = list(self.overrides)
        for key, value in (("max_epochs", self.max_epochs), ("max_steps", self.max_steps),
                           ("seed", self.seed), ("precision", self.precision)):
            if value is not None:
                items.append(f"train.{key}={value}")
        return items


@dataclass
class Resolved:
    """A run's configuration; when resuming, also its checkpoint, directory and saved optimiser settings."""

    config: dict
    resume_ckpt: Path | None = None
    resume_dir: Path | None = None
    saved_optim: dict | None = None
    saved_config: dict | None = None
    best_checkpoints: tuple[str, ...] = ()  # file names of the best checkpoint(s) the resumed checkpoint knows


def resolve_config(zoo, entry: str, opts: RunOptions) -> Resolved:
    """The run's configuration from the registry (or, with ``--resume``, from its checkpoint)."""
    if not opts.resume:
        return Resolved(zoo.resolve(entry, opts.cli_overrides()))
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
    config = resolve_entry(entry, body, f"{ckpt}: entry '{entry}'", saved["source"], zoo.plugins)
    changed = [k for k in ("model", "data") if config.get(k) != saved.get(k)]
    if changed:  # compared before anything is written: the run directory stays as it was
        keys = ", ".join(f"{section}.{key}" for section in changed
                         for key in sorted(set(config[section]) | set(saved.get(section) or {}))
                         if config[section].get(key) != (saved.get(section) or {}).get(key))
        raise ConfigError(f"--resume: {ckpt} was trained with other {' and '.join(changed)} settings ({keys}); "
                          f"a resumed run keeps its model and data (start a new run instead)")
    done = int(checkpoint.get("epoch", 0) or 0)
    max_epochs = config["train"]["max_epochs"]
    if max_epochs is not None and max_epochs != -1 and max_epochs < done:
        raise ConfigError(f"--resume: train.max_epochs={max_epochs} is below the {done} epoch(s) the run "
                          f"has already done; give a larger --max-epochs")
    best = tuple(Path(state["best_model_path"]).name for key, state in (checkpoint.get("callbacks") or {}).items()
                 if isinstance(state, dict) and state.get("best_model_path") and "ModelCheckpoint" in str(key))
    return Resolved(config, ckpt, run_dir or ckpt.parent.parent, saved.get("optim"), saved, best)
