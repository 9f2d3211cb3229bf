"""``zoo export``: a trained model as safetensors weights plus plain-text configuration.

An export directory holds three files:

- ``model.safetensors``: every tensor of the model's ``state_dict`` (parameters and persistent
  buffers, e.g. ActNorm's data-initialised affine maps, a GMM's fitted mixture, the
  ``_zoo_data_initialised`` flag), in the safetensors format (a JSON header and raw bytes:
  reading it never runs code, unlike a pickle-based ``.ckpt``);
- ``config.yaml``: the family, the :class:`~zoo_core.data.spec.DataSpec` the model was built
  with, the other constructor arguments, and the resolved run configuration (so ``zoo eval``
  can rebuild the data);
- ``manifest.json``: format version, zoo version, family, the plugin that provides it, the entry,
  and the sha256 of the weights file.

Loading (``load_export``) reads these with ``json``, ``yaml.safe_load`` and
``safetensors.torch.load_file`` only, rebuilds the family from its constructor arguments
(which recreates non-persistent buffers such as masks and noise schedules) and loads the
weights strictly: a missing, unexpected or wrongly shaped tensor, a truncated file or a digest
that differs from the manifest is a one-line :class:`CheckpointError` naming the file.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from zoo_core import __version__
from zoo_core.checkpoint import EXPORT_CONFIG as CONFIG
from zoo_core.checkpoint import EXPORT_MANIFEST as MANIFEST
from zoo_core.checkpoint import EXPORT_WEIGHTS as WEIGHTS
from zoo_core.checkpoint import export_dir_of, resolve_checkpoint
from zoo_core.checkpoint_io import write_atomic
from zoo_core.errors import ZooError
from zoo_core.export_reader import FORMAT, FORMAT_VERSION, load_export, sha256_file
from zoo_core.loading import load_model

__all__ = ["CONFIG", "FORMAT", "FORMAT_VERSION", "MANIFEST", "WEIGHTS", "export_model", "load_export", "sha256_file"]



def _plain(value):
    """YAML-safe plain types: tuples become lists, torch sizes lists of ints."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---- writing -----------------------------------------------------------------------------------
def default_output(ckpt: Path, run_dir: Path | None) -> Path:
    """RUN_DIR/export for a run's last checkpoint, RUN_DIR/export-STEM for another of its
    checkpoints, else STEM-export beside a lone checkpoint file."""
    if run_dir is not None:
        return run_dir / ("export" if ckpt.name == "last.ckpt" else f"export-{ckpt.stem}")
    return ckpt.with_name(f"{ckpt.stem}-export")


def export_model(zoo, path: str | Path, output: str | Path | None = None, loaded=None) -> Path:
    """Export the model of a run directory, checkpoint or export to ``output``; returns the directory.
    ``loaded`` = (model, config, source) of a model already loaded from ``path`` (loaded here when None)."""
    from safetensors.torch import save

    if loaded is None:
        loaded = load_model(path, zoo)
    plugins = zoo.plugins
    model, config, source = loaded
    if output is None:
        existing = export_dir_of(path)
        if existing is not None:
            raise ZooError(f"{path} is already an export; give -o DIR to write a copy elsewhere")
        ckpt, run_dir = resolve_checkpoint(path)
        output = default_output(ckpt, run_dir)
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise ZooError(f"-o {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and export_dir_of(out) is None:
        raise ZooError(f"-o {out}: directory is not empty and is not a zoo export; choose a new directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ZooError(f"-o {out}: cannot create the export directory ({exc.strerror or exc})") from None

    # clone: safetensors refuses tensors that share memory (tied weights); each name gets its own copy
    tensors = {name: t.detach().cpu().contiguous().clone() for name, t in model.state_dict().items()}
    hparams = _plain(dict(model.hparams))
    data_spec = _plain(hparams.pop("data", model.data_spec.to_dict()))
    registration = plugins.families.get(model.family)
    provider = plugins.family_provider(model.family) if registration is not None else {}
    document = {
        "family": model.family,
        "data_spec": data_spec,                 # the DataSpec the model was built with
        "model_args": hparams,                  # the constructor's other arguments (optim and the family's own)
        "run": _plain(config),                  # the resolved run configuration (entry, data, train, eval, ...)
    }
    write_atomic(out / WEIGHTS, save(tensors, metadata={"format": "pt", "family": model.family}))
    write_atomic(out / CONFIG, f"# zoo export of {source}: rebuild with zoo_core.export.load_export "
                               f"(no pickle involved)\n" + yaml.safe_dump(document, sort_keys=False))
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "zoo_version": __version__,
        "family": model.family, "plugin": provider, "entry": config.get("entry"),
        "weights": {"file": WEIGHTS, "sha256": sha256_file(out / WEIGHTS), "tensors": len(tensors)},
        "config": {"file": CONFIG, "sha256": sha256_file(out / CONFIG)},
        "source": str(source),
    }
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return out


