"""Finding and loading checkpoints safely (``weights_only=True``: loading never runs code).

A zoo checkpoint is a Lightning checkpoint with a ``zoo`` section holding the family name and
the fully resolved run configuration, so a checkpoint file alone rebuilds model and data.
"""
from __future__ import annotations

import contextlib
import math
import pickle
import zipfile
from pathlib import Path

import torch
import yaml
from torch.overrides import TorchFunctionMode

from zoo_core.errors import CheckpointError, ZooError

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


# ---- building a model from untrusted constructor arguments, with bounded memory ------------------
#: slack over the stored tensors' elements that a model's construction may allocate (masks, temporaries)
BUILD_SLACK_ELEMENTS = 16 << 20
BUILD_FACTOR = 4


def stored_shapes(tensors: dict) -> dict[str, tuple[int, ...]]:
    """{name: shape} of a state dict (tensors, or anything with ``.shape``)."""
    return {str(k): tuple(int(d) for d in getattr(v, "shape", ())) for k, v in tensors.items()}


def _element_budget(shapes: dict[str, tuple[int, ...]]) -> int:
    return BUILD_FACTOR * sum(math.prod(s) for s in shapes.values()) + BUILD_SLACK_ELEMENTS


def build_checked(cls, kwargs: dict, shapes: dict[str, tuple[int, ...]], where, rejected) -> "torch.nn.Module":
    """``cls(**kwargs)``, where ``kwargs`` come from an untrusted file whose tensors have ``shapes``.

    The model is first built on the ``meta`` device (no memory): every parameter and persistent
    buffer must have the stored name and shape, and all its tensors together may hold at most
    ``BUILD_FACTOR`` times the stored elements (plus slack), so a configuration that asks for a
    huge model (``n_components: 300000000``) is refused before anything is allocated. Only then is
    it built for real. A family whose constructor cannot run on ``meta`` (it computes with tensor
    values, e.g. ``.item()`` or ``nonzero``) is built for real under an allocation budget of the
    same size instead. ``rejected(exc)`` makes the error for arguments the family refuses."""
    budget = _element_budget(shapes)
    try:
        with torch.device("meta"):
            probe = cls(**kwargs)
    except ZooError:
        raise
    except Exception as exc:
        if isinstance(exc, (TypeError, ValueError, KeyError)) and "meta" not in str(exc).lower():
            raise rejected(exc) from None
        probe = None  # the constructor needs real tensor values (.item(), numpy, nonzero on meta)
    if probe is not None:
        compare_shapes(stored_shapes(probe.state_dict()), shapes, where, getattr(cls, "family", cls.__name__))
        total = sum(t.numel() for t in probe.parameters()) + sum(b.numel() for b in probe.buffers())
        del probe
        if total > budget:
            raise CheckpointError(f"{where}: the stored configuration builds a model of {total:,} elements, far more "
                                  f"than the {sum(math.prod(s) for s in shapes.values()):,} stored; refused")
        guard = contextlib.nullcontext()
    else:
        guard = _AllocationBudget(budget, where)
    try:
        with guard:
            return cls(**kwargs)
    except ZooError:
        raise
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise rejected(exc) from None


def compare_shapes(built: dict, stored: dict, where, family: str) -> None:
    missing = sorted(set(built) - set(stored))
    unexpected = sorted(set(stored) - set(built))
    if missing:
        raise CheckpointError(f"{where}: missing tensor(s) {', '.join(missing[:5])}"
                              f"{' ...' if len(missing) > 5 else ''} that family '{family}' needs")
    if unexpected:
        raise CheckpointError(f"{where}: unexpected tensor(s) {', '.join(unexpected[:5])}"
                              f"{' ...' if len(unexpected) > 5 else ''} for family '{family}'")
    for name, want in built.items():
        if tuple(stored[name]) != tuple(want):
            raise CheckpointError(f"{where}: tensor '{name}' has shape {tuple(stored[name])}, but family "
                                  f"'{family}' built from the stored configuration expects {tuple(want)}")


def _requested_elements(name: str, args: tuple, kwargs: dict) -> int:
    """Elements a tensor factory call (torch.zeros(3, 4), torch.randn((3, 4)), torch.arange(n), ...) allocates."""
    def dims(value):
        if isinstance(value, (tuple, list, torch.Size)) and all(isinstance(d, int) for d in value):
            return math.prod(value)
        return None

    if "size" in kwargs and dims(kwargs["size"]) is not None:
        return dims(kwargs["size"])
    numbers = [a for a in args if isinstance(a, (int, float)) and not isinstance(a, bool)]
    if name in ("arange", "range") and numbers:
        start, end, step = (0, *numbers[:1], 1) if len(numbers) == 1 else (*numbers[:2], *(numbers[2:3] or [1]))
        return max(0, int(abs(end - start) / abs(step or 1)) + 1)
    if name in ("linspace", "logspace"):
        steps = kwargs.get("steps", numbers[2] if len(numbers) > 2 else 0)
        return int(steps) if isinstance(steps, int) else 0
    if name == "eye":
        return int(numbers[0]) * int(numbers[1] if len(numbers) > 1 else numbers[0]) if numbers else 0
    if name == "randperm":
        return int(numbers[0]) if numbers else 0
    for a in args:  # randint(low, high, size), empty_strided(size, stride), full(size, value)
        if dims(a) is not None:
            return dims(a)
    if name in ("zeros", "ones", "empty", "rand", "randn") and args and all(isinstance(a, int) for a in args):
        return math.prod(args)
    return 0


class _AllocationBudget(TorchFunctionMode):
    """Refuse tensor factory calls once they have requested more than ``budget`` elements in all."""

    def __init__(self, budget: int, where):
        super().__init__()
        try:
            from torch.utils._device import _device_constructors  # torch's own list of tensor factories

            factories = _device_constructors()
        except ImportError:  # pragma: no cover - a torch without it: count the common ones
            factories = [torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.randint,
                         torch.arange, torch.eye, torch.linspace, torch.randperm]
        self.budget, self.where, self.used = budget, where, 0
        self.factories = {f: f.__name__ for f in factories}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = self.factories.get(func)
        if name is not None:
            try:
                self.used += _requested_elements(name, args, kwargs)
            except (TypeError, ValueError, OverflowError):  # arguments it does not understand: not counted
                pass
            if self.used > self.budget:
                raise CheckpointError(f"{self.where}: building the model from the stored configuration allocates more "
                                      f"than {self.budget:,} elements, far more than the file stores; refused")
        return func(*args, **kwargs)


def rebuild_model(cls, checkpoint: dict, path: Path | str = "checkpoint"):
    """A model of family ``cls`` from a checkpoint dict: its hyperparameters, then its weights.

    The hyperparameters are untrusted: the model is checked on the ``meta`` device against the
    checkpoint's tensors before it is built (:func:`build_checked`)."""
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    family = getattr(cls, "family", cls.__name__)

    def rejected(exc):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return CheckpointError(f"{path}: does not fit family '{family}' ({first})")

    state = checkpoint["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a zoo checkpoint (state_dict is a {type(state).__name__})")
    model = build_checked(cls, hparams, stored_shapes(state), path, rejected)
    try:
        model.load_state_dict(state)
    except (TypeError, RuntimeError, ValueError) as exc:
        raise rejected(exc) from None
    return model.eval()
