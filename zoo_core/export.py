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

import hashlib
import json
from pathlib import Path

import torch
import yaml

from zoo_core import __version__
from zoo_core.checkpoint import EXPORT_CONFIG as CONFIG
from zoo_core.checkpoint import EXPORT_MANIFEST as MANIFEST
from zoo_core.checkpoint import EXPORT_WEIGHTS as WEIGHTS
from zoo_core.checkpoint import export_dir_of, family_not_installed, resolve_checkpoint
from zoo_core.checkpoint_io import write_atomic
from zoo_core.errors import CheckpointError, ZooError

FORMAT = "zoo-export"
FORMAT_VERSION = 1


def _plain(value):
    """YAML-safe plain types: tuples become lists, torch sizes lists of ints."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# ---- writing -----------------------------------------------------------------------------------
def default_output(ckpt: Path, run_dir: Path | None) -> Path:
    """RUN_DIR/export for a run's last checkpoint, RUN_DIR/export-STEM for another of its
    checkpoints, else STEM-export beside a lone checkpoint file."""
    if run_dir is not None:
        return run_dir / ("export" if ckpt.name == "last.ckpt" else f"export-{ckpt.stem}")
    return ckpt.with_name(f"{ckpt.stem}-export")


def export_model(zoo, path: str | Path, output: str | Path | None = None, loaded=None) -> Path:
    """Export the model of a run directory, checkpoint or export to ``output``; returns the directory.
    ``loaded`` = (model, config, source) of a model already loaded from ``path``."""
    from safetensors.torch import save

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


# ---- reading -----------------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_manifest(export_dir: Path) -> dict:
    path = export_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable export manifest ({_first_line(exc)})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a zoo export manifest (expected \"format\": \"{FORMAT}\")")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: export format version {manifest.get('format_version')!r} is not supported "
                              f"(this zoo reads version {FORMAT_VERSION})")
    return manifest


def _expect_sha(path: Path, manifest: dict, section: str) -> None:
    expected = (manifest.get(section) or {}).get("sha256")
    if not path.is_file():
        raise CheckpointError(f"{path}: missing from the export directory")
    actual = sha256_file(path)
    if expected != actual:
        raise CheckpointError(f"{path}: sha256 is {actual}, but {MANIFEST} expects {expected}; "
                              f"the file was changed or damaged after export")


def read_config(export_dir: Path, manifest: dict) -> dict:
    path = export_dir / CONFIG
    _expect_sha(path, manifest, "config")
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{path}: not readable YAML ({_first_line(exc)})") from None
    missing = [k for k in ("family", "data_spec", "model_args", "run") if not isinstance(document, dict)
               or k not in document]
    if missing:
        raise CheckpointError(f"{path}: missing key(s) {', '.join(missing)} of a zoo export configuration")
    return document


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """safetensors -> {name: tensor}; a one-line CheckpointError naming ``path`` when unreadable."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # SafetensorError (a Rust exception), OSError, ValueError: all mean a bad file
        raise CheckpointError(f"{path}: not a readable safetensors file: truncated or corrupted "
                              f"({_first_line(exc)})") from None


def check_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Names, shapes and dtypes of ``tensors`` must match ``model.state_dict()`` exactly."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise CheckpointError(f"{path}: missing tensor(s) {', '.join(missing[:5])}"
                              f"{' ...' if len(missing) > 5 else ''} that family '{model.family}' needs")
    if unexpected:
        raise CheckpointError(f"{path}: unexpected tensor(s) {', '.join(unexpected[:5])}"
                              f"{' ...' if len(unexpected) > 5 else ''} for family '{model.family}'")
    for name, want in expected.items():
        got = tensors[name]
        if tuple(got.shape) != tuple(want.shape):
            raise CheckpointError(f"{path}: tensor '{name}' has shape {tuple(got.shape)}, but family "
                                  f"'{model.family}' built from {CONFIG} expects {tuple(want.shape)}")
        if got.dtype != want.dtype:
            raise CheckpointError(f"{path}: tensor '{name}' has dtype {got.dtype}, expected {want.dtype}")


def load_export(path: str | Path, zoo):
    """Rebuild the model of an export directory. Returns (model, run config, export directory).

    Reads JSON, ``yaml.safe_load`` and safetensors only: no pickle, no code from the files."""
    export_dir = export_dir_of(path)
    if export_dir is None:
        raise CheckpointError(f"{path}: not a zoo export directory (no {MANIFEST})")
    plugins = zoo.plugins
    manifest = read_manifest(export_dir)
    document = read_config(export_dir, manifest)
    weights = export_dir / WEIGHTS
    _expect_sha(weights, manifest, "weights")
    tensors = read_weights(weights)

    family = document["family"]
    if family not in plugins.families:
        raise family_not_installed(family, manifest.get("plugin"), export_dir)
    cls = plugins.family(family)
    args = dict(document["model_args"] or {})
    try:
        model = cls(data=document["data_spec"], **args)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{export_dir / CONFIG}: family '{family}' rejected the exported constructor "
                              f"arguments ({_first_line(exc)})") from None
    check_weights(model, tensors, weights)
    model.load_state_dict(tensors, strict=True)
    config = document["run"]
    model.zoo_config = config
    return model.eval(), config, export_dir
