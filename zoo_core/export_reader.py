"""Reading a ``zoo export`` directory (see ``zoo_core.export``): JSON, safe YAML and safetensors only."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import yaml

from zoo_core.checkpoint import EXPORT_CONFIG as CONFIG
from zoo_core.checkpoint import EXPORT_MANIFEST as MANIFEST
from zoo_core.checkpoint import EXPORT_WEIGHTS as WEIGHTS
from zoo_core.checkpoint import build_checked, compare_shapes, export_dir_of, family_not_installed
from zoo_core.errors import CheckpointError

FORMAT = "zoo-export"
FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


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


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """{name: shape} from the safetensors header alone (no tensor is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {name: tuple(int(d) for d in f.get_slice(name).get_shape()) for name in f.keys()}
    except Exception as exc:  # SafetensorError, OSError: a bad header
        raise CheckpointError(f"{path}: not a readable safetensors file: truncated or corrupted "
                              f"({_first_line(exc)})") from None


def check_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Names, shapes and dtypes of ``tensors`` must match ``model.state_dict()`` exactly."""
    expected = model.state_dict()
    compare_shapes({k: tuple(v.shape) for k, v in expected.items()}, {k: tuple(v.shape) for k, v in tensors.items()},
                    path, model.family)
    for name, want in expected.items():
        if tensors[name].dtype != want.dtype:
            raise CheckpointError(f"{path}: tensor '{name}' has dtype {tensors[name].dtype}, expected {want.dtype}")


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

    family = document["family"]
    if family not in plugins.families:
        raise family_not_installed(family, manifest.get("plugin"), export_dir)
    cls = plugins.family(family)
    args = document["model_args"] or {}
    if not isinstance(args, dict):
        raise CheckpointError(f"{export_dir / CONFIG}: model_args must be a mapping, got {type(args).__name__}")

    def rejected(exc):
        return CheckpointError(f"{export_dir / CONFIG}: family '{family}' rejected the exported constructor "
                               f"arguments ({_first_line(exc)})")

    # checked on the meta device against the safetensors header before anything is allocated
    model = build_checked(cls, {"data": document["data_spec"], **args}, read_shapes(weights), weights, rejected)
    tensors = read_weights(weights)
    check_weights(model, tensors, weights)
    model.load_state_dict(tensors, strict=True)
    config = document["run"]
    model.zoo_config = config
    return model.eval(), config, export_dir
