"""Loading a trained model from a run directory, a checkpoint or an export, with no pickle executed.

Checkpoints are read with ``torch.load(weights_only=True)``; exports with JSON, safe YAML and
safetensors only. Either way the model comes back in eval mode with its run configuration."""
from __future__ import annotations

from pathlib import Path

from zoo_core.checkpoint import (checkpoint_config, export_dir_of, family_not_installed, read_checkpoint,
                                 rebuild_model, resolve_checkpoint)
from zoo_core.export_reader import load_export


def load_model(path: str | Path, zoo):
    """Rebuild the model of a run directory, checkpoint or export. Returns (model, config, source path)."""
    if export_dir_of(path) is not None:  # safetensors + YAML: no pickle involved
        return load_export(path, zoo)
    ckpt_path, run_dir = resolve_checkpoint(path)
    checkpoint = read_checkpoint(ckpt_path)
    config = checkpoint_config(checkpoint, ckpt_path, run_dir)
    section = checkpoint.get("zoo") or {}
    family = section.get("family") or config.get("family")
    if family not in zoo.plugins.families:
        raise family_not_installed(family, section.get("plugin"), ckpt_path)
    model = rebuild_model(zoo.family(family), checkpoint, ckpt_path)
    model.zoo_config = config
    return model, config, ckpt_path
