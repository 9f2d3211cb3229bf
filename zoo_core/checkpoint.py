"""Finding and loading checkpoints safely (``weights_only=True``: loading never runs code).

A zoo checkpoint is a Lightning checkpoint with a ``zoo`` section holding the family name and
the fully resolved run configuration, so a checkpoint file alone rebuilds model and data.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
import yaml

from zoo_core.errors import CheckpointError

LAST = "last.ckpt"
# the three files of a 'zoo export' directory (zoo_core/export.py writes and reads them)
EXPORT_WEIGHTS = "model.safetensors"
EXPORT_CONFIG = "config.yaml"
EXPORT_MANIFEST = "manifest.json"


def export_dir_of(path: str | Path) -> Path | None:
    """The export directory that ``path`` names (the directory or one of its three files), else None."""
    p = Path(path)
    if p.is_file() and p.name in (EXPORT_WEIGHTS, EXPORT_CONFIG, EXPORT_MANIFEST):
        p = p.parent
    return p if p.is_dir() and (p / EXPORT_MANIFEST).is_file() else None


def family_not_installed(family: str, provider: dict | None, where: str | Path) -> CheckpointError:
    """The one message for a run, checkpoint or export of a family that is not installed."""
    hint = ""
    if provider and provider.get("plugin"):
        dist = provider.get("distribution")
        hint = (f"; it was provided by plugin '{provider['plugin']}'"
                + (f" (distribution {dist} {provider.get('version')})" if dist and dist != "-" else ""))
    return CheckpointError(f"{where}: family '{family}' is not installed{hint}")


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path | None]:
    """RUN_DIR or a .ckpt file -> (checkpoint file, run directory or None)."""
    p = Path(path)
    export_dir = export_dir_of(p)
    if export_dir is not None:  # a 'zoo export' directory: its weights file, and no run directory
        return export_dir / EXPORT_WEIGHTS, None
    if p.is_dir():
        ckpt = p / "checkpoints" / LAST
        if not ckpt.is_file():
            raise CheckpointError(f"{p}: no checkpoint at {ckpt}; expected a run directory made by 'zoo train' "
                                  f"or a .ckpt file")
        return ckpt, p
    if not p.exists():
        raise CheckpointError(f"{p}: no such run directory or checkpoint file")
    run_dir = p.parent.parent if p.parent.name == "checkpoints" else None
    return p, run_dir if run_dir is not None and (run_dir / "config.yaml").is_file() else None


def read_checkpoint(path: str | Path) -> dict:
    """torch.load with weights_only=True; a one-line CheckpointError for anything unreadable."""
    path = Path(path)
    if path.suffix == ".safetensors":
        raise CheckpointError(f"{path}: a zoo export holds the weights only (no optimiser or trainer state), so it "
                              f"cannot be resumed; use the run directory or a .ckpt file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Unsupported global" in str(exc) or "GLOBAL" in str(exc):  # a class or callable, not data
            raise CheckpointError(f"{path}: refused to load: the checkpoint contains Python objects that could run "
                                  f"code, and the zoo only loads plain tensors and containers ({first})") from None
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupted or not a torch file: {first})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot read checkpoint: truncated or corrupted ({first})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a zoo checkpoint (no state_dict)")
    return checkpoint


def checkpoint_config(checkpoint: dict, path: Path, run_dir: Path | None) -> dict:
    zoo = checkpoint.get("zoo") or {}
    if zoo.get("config"):
        return zoo["config"]
    if run_dir is not None:
        return yaml.safe_load((run_dir / "config.yaml").read_text())
    raise CheckpointError(f"{path}: no zoo configuration inside the checkpoint and no config.yaml beside it")


def rebuild_model(cls, checkpoint: dict, path: Path | str = "checkpoint"):
    """A model of family ``cls`` from a checkpoint dict: its hyperparameters, then its weights."""
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    try:
        model = cls(**hparams)
        model.load_state_dict(checkpoint["state_dict"])
    except (TypeError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: does not fit family '{cls.family}' ({first})") from None
    return model.eval()
