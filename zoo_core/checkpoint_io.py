"""Writing run directories safely, and what a checkpoint needs for an exact resume.

- :func:`write_atomic`: a file is written to a temporary name in its own directory, flushed to
  disk (``fsync``) and renamed over the target (``os.replace``, atomic on POSIX), so a crash or a
  full disk never leaves a half-written ``last.ckpt``, ``config.yaml`` or ``metrics.json``: the
  previous version survives. An ``OSError`` becomes a one-line :class:`RunDirWriteError` naming
  the file and the cause.
- :class:`AtomicCheckpointIO`: Lightning's checkpoint writer, through :func:`write_atomic`.
- :class:`RngStates`: a callback that stores every rank's torch/CUDA/numpy/python RNG state in
  the checkpoint (``zoo_rng``) and restores it when training restarts, so per-step randomness
  (VAE noise, diffusion timesteps, dropout) continues as if the run had never stopped.
- :class:`StepCheckpoint`: refreshes ``last.ckpt`` every ``train.checkpoint_every_n_steps``
  optimiser steps, mid-epoch included (the train loader records how far into the epoch it is).
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import tempfile
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from zoo_core.errors import RunDirWriteError

RNG_KEY = "zoo_rng"
#: OSErrors that mean "the run directory cannot be written" (full disk, quota, read-only, I/O error)
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG)


def _cause(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0)
    text = exc.strerror or str(exc) or type(exc).__name__
    return f"{text} ({name})" if name else text


def write_error(path: Path | str, exc: OSError) -> RunDirWriteError:
    hint = "; free some space, or pass --runs-dir on another disk" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return RunDirWriteError(f"cannot write {path}: {_cause(exc)}{hint}; files written before are kept")


@contextlib.contextmanager
def write_errors_reported(path: Path | str):
    """Turn a write failure (:data:`WRITE_ERRNOS`) inside the block into a one-line error naming
    the file (the OSError's own, else ``path``); other errors pass through."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        raise write_error(exc.filename or path, exc) from None


def _write_fd(fd: int, data: bytes) -> None:
    """Write ``data`` to the open file ``fd``, flush it to the disk (``fsync``) and close it."""
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX); not possible on every platform and file system."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path | str, data: bytes | str) -> None:
    """Replace ``path`` by ``data`` atomically: all of it or (after any failure) the previous file."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # a new file of a random name, created exclusively (O_EXCL): a link planted in the directory
        # can never redirect the write
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp", dir=path.parent)
        tmp = Path(name)
        _write_fd(fd, payload)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise write_error(path, exc) from None
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose writes are atomic and durable (temporary file, fsync, os.replace)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomic(Path(path), buffer.getvalue())


# ---- RNG states --------------------------------------------------------------------------------------
def collect_rng_states() -> dict[str, Any]:
    """This process's RNG states as tensors and plain containers (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        # as one int64 tensor: a list of 625 ints costs as much to pickle as the rest of a small checkpoint
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()  # the current device's
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = states["python"]
    state = p["state"]  # (625,) int64 tensor; a list in checkpoints written before it was a tensor
    random.setstate((p["version"], tuple(state.tolist() if isinstance(state, torch.Tensor) else state), p["gauss"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


class RngStates(pl.Callback):
    """Saves every rank's RNG states in the checkpoint and restores them when training restarts.

    Restored at ``on_train_start``: after Lightning's sanity check (which runs under its own
    isolated RNG) and the train loader's first fetch (whose noise has its own generator), so the
    next draw is the one the uninterrupted run made after the checkpoint was written.
    A checkpoint from another number of processes restores rank 0's state on every rank (not exact);
    an old checkpoint without states restores nothing (training goes on, not bit-identical).
    """

    def __init__(self) -> None:
        self._pending: list | None = None

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        # Every rank builds the checkpoint (Lightning's save_checkpoint), so a gather is safe here.
        mine = collect_rng_states()
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            per_rank: list = [None] * trainer.world_size
            torch.distributed.all_gather_object(per_rank, mine)
        else:
            per_rank = [mine]
        checkpoint[RNG_KEY] = {"per_rank": per_rank}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self._pending = (checkpoint.get(RNG_KEY) or {}).get("per_rank")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._pending:
            return
        per_rank, self._pending = self._pending, None
        rank = trainer.global_rank if len(per_rank) == trainer.world_size else 0
        set_rng_states(per_rank[rank])


class StepCheckpoint(pl.Callback):
    """Write ``last.ckpt`` each time ``trainer.global_step`` (optimiser steps) passes a multiple of
    ``every_n_steps``, mid-epoch included.

    The last batch of an epoch is left to the epoch-end checkpoint, which Lightning writes after
    validation: resuming from a checkpoint taken between the last batch and validation would
    skip that validation. Every rank calls this (``trainer.save_checkpoint`` is collective).
    """

    def __init__(self, path: Path, every_n_steps: int):
        self.path, self.every_n_steps = Path(path), int(every_n_steps)
        self._last_saved = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_saved = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step  # saved when it passes a multiple of every_n_steps (a GAN may take 2 per batch)
        if step // self.every_n_steps <= (self._last_saved or 0) // self.every_n_steps:
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        trainer.save_checkpoint(self.path)
        self._last_saved = step
