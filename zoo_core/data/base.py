"""ZooDataModule: in-memory, seeded train/val/test splits with a data representation.

Subclasses implement ``load_splits()`` returning raw tensors; this base class applies the
representation (see ``zoo_core.data.spec``), builds fast batched loaders, and shards them
over DDP ranks itself:

- train: :class:`TrainBatches`, shuffled batches whose order and noise depend only on (seed,
  epoch, rank, batch number), so a run killed mid-epoch resumes at the exact batch;
- val/test: each rank takes every ``world_size``-th example *without padding*, so summed
  metrics over ranks equal the single-process values exactly.

Labels: ``load_splits()`` may return ``(x, y)`` pairs instead of bare tensors, ``y`` the class
labels 0..K-1 of shape (N,). With ``conditional=True`` (registry ``data: {conditional: true}``)
every loader yields ``(x, y)`` batches, the labels being the context of a conditional model;
otherwise loaders yield bare ``x`` exactly as for an unlabelled dataset. ``eval_labels(split)``
gives a split's labels either way (for metrics that need them).
"""
from __future__ import annotations

import abc
import math
from typing import Callable, Iterator

import numpy as np

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from zoo_core.data.spec import DataSpec
from zoo_core.errors import DataError
from zoo_core.fused import FusedBatches

INIT_BATCH_SIZE = 2048
#: Fixed seed for the one-off binarisation/dequantisation of val/test sets (comparable across runs).
EVAL_NOISE_SEED = 1234


class BatchDataset(Dataset):
    """Tensor dataset that returns whole batches through ``__getitems__`` (one indexing op per batch).

    ``transform`` is applied per batch (dynamic binarisation or dequantisation noise for training).
    With ``labels`` (N,), a batch is ``(x, y)``.
    """

    def __init__(self, data: Tensor, transform=None, labels: Tensor | None = None):
        self.data = data
        self.transform = transform
        self.labels = labels

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        batch = self.__getitems__([index])
        return (batch[0][0], batch[1][0]) if self.labels is not None else batch[0]

    def __getitems__(self, indices: list[int]):
        index = torch.as_tensor(indices, dtype=torch.long)
        batch = self.data[index]
        batch = self.transform(batch) if self.transform is not None else batch
        return batch if self.labels is None else (batch, self.labels[index])


def _batch_is_ready(batch: Tensor) -> Tensor:
    return batch


def batch_seed(seed: int, rank: int, epoch: int, batch: int) -> int:
    """A 64-bit seed for one training batch's noise, mixed from its coordinates (numpy's SeedSequence)."""
    words = np.random.SeedSequence([seed % 2**64, rank, epoch, batch]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 32 | int(words[1])) & (2**63 - 1)


class TrainBatches(Sampler):
    """One rank's shuffled training batches, as ``(epoch, batch_number, indices)``.

    Epoch ``e`` permutes the examples with a generator seeded ``seed + e`` (as ``DistributedSampler``
    does: padded by repetition to a multiple of ``num_replicas``, rank ``r`` taking every
    ``num_replicas``-th index), so the order depends on nothing but (seed, epoch, rank).
    ``skip(k)`` makes the next pass start at batch ``k``: how a run resumes mid-epoch.

    With ``group`` g > 1 (fused optimiser steps, ``zoo_core.fused``) each item is a list of g
    consecutive such batches (fewer at the epoch's end), and lengths and ``skip`` count groups.
    """

    def __init__(self, length: int, batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0,
                 group: int = 1):
        self.length, self.batch_size, self.seed = int(length), int(batch_size), int(seed)
        self.num_replicas, self.rank, self.group = int(num_replicas), int(rank), int(group)
        self.num_samples = math.ceil(self.length / self.num_replicas)  # per rank, after padding
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip(self, items: int) -> None:
        self._skip = int(items)

    def batches_per_epoch(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def __len__(self) -> int:
        return math.ceil(self.batches_per_epoch() / self.group)

    def indices(self, epoch: int) -> Tensor:
        """This rank's example indices for ``epoch``: (num_samples,)."""
        gen = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.length, generator=gen)  # (length,)
        total = self.num_samples * self.num_replicas
        if total > self.length:
            order = torch.cat([order, order[: total - self.length]])
        return order[self.rank:total:self.num_replicas]

    def __iter__(self):
        epoch, start, self._skip = self.epoch, self._skip, 0
        mine = self.indices(epoch)
        keys = [(epoch, b, mine[b * self.batch_size:(b + 1) * self.batch_size]) for b in range(self.batches_per_epoch())]
        if self.group == 1:
            yield from keys[start:]
            return
        for g in range(start, len(self)):
            yield keys[g * self.group:(g + 1) * self.group]


class TrainDataset(Dataset):
    """Training data fetched by :class:`TrainBatches` keys; ``noise(x, generator)`` (dynamic
    binarisation or dequantisation) draws from a generator seeded by the batch's coordinates, not
    from the global RNG, so it is the same however batches are prefetched, skipped or resumed."""

    def __init__(self, data: Tensor, noise=None, seed: int = 0, rank: int = 0, labels: Tensor | None = None):
        self.data, self.noise, self.seed, self.rank = data, noise, int(seed), int(rank)
        self.labels = labels  # (N,) int64, or None: batches are then bare x

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key):
        if isinstance(key, list):  # a group of batches for fused optimiser steps
            return FusedBatches(self[k] for k in key)
        epoch, batch, indices = key
        x = self.data[indices]  # (B, *event)
        if self.noise is not None:
            gen = torch.Generator().manual_seed(batch_seed(self.seed, self.rank, epoch, batch))
            x = self.noise(x, gen)
        return x if self.labels is None else (x, self.labels[indices])  # (B, *event), (B,)


class ResumableLoader(DataLoader):
    """The training DataLoader, stateful in Lightning's sense (``state_dict``/``load_state_dict``):
    a mid-epoch checkpoint records the epoch and how many of its batches training consumed
    (``consumed()`` -> (batches taken, batches in the epoch), read from the trainer, since the loader
    itself runs one batch ahead when Lightning prefetches); loading it skips those batches on the
    next pass."""

    def __init__(self, dataset: TrainDataset, batches: TrainBatches, consumed: Callable[[], tuple[int, float]]):
        # batch_size=None: the sampler yields whole batches; a private generator keeps the
        # DataLoader's own seed draw off the global RNG (which a checkpoint restores).
        super().__init__(dataset, sampler=batches, batch_size=None, collate_fn=_batch_is_ready,
                         generator=torch.Generator())
        self._consumed = consumed

    def state_dict(self) -> dict:
        done, epoch_length = self._consumed()
        group = {"group": self.sampler.group} if self.sampler.group > 1 else {}  # in groups of batches
        if done >= min(len(self.sampler), epoch_length):  # epoch complete (limit_train_batches included)
            return {"epoch": self.sampler.epoch + 1, "batches_done": 0, **group}
        return {"epoch": self.sampler.epoch, "batches_done": done, **group}

    def load_state_dict(self, state: dict) -> None:
        saved = int(state.get("group", 1))
        if saved != self.sampler.group and state["batches_done"]:
            raise DataError(f"this checkpoint stopped in the middle of an epoch with train.fused_steps={saved}; "
                            f"resume it with the same value (got {self.sampler.group})")
        self.sampler.set_epoch(state["epoch"])
        self.sampler.skip(state["batches_done"])


class StridedShardSampler(Sampler[int]):
    """Rank r of w takes indices r, r + w, r + 2w, ... : a partition, no padding, no shuffling."""

    def __init__(self, length: int, num_replicas: int, rank: int):
        self.indices = range(rank, length, num_replicas)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class ZooDataModule(pl.LightningDataModule, abc.ABC):
    """Base datamodule. ``representation`` is one of ``binarized``, ``dequantized``, ``continuous``."""

    name: str = ""
    #: representations this dataset supports; the first is the default
    representations: tuple[str, ...] = ("continuous",)
    #: number of levels of the original discrete data (None for real-valued data)
    num_levels: int | None = None
    #: the shape of one example, where the dataset fixes it (checked when the data are loaded)
    event_shape: tuple[int, ...] | None = None
    #: whether the dataset can carry class labels at all (``load_splits`` then returns (x, y) pairs)
    labelled: bool = False
    #: number of classes where the dataset fixes it (else counted from the labels: max + 1)
    num_classes: int | None = None
    #: training batches per loader item (``train.fused_steps``, set by the runner; see zoo_core.fused)
    fused_steps: int = 1

    def __init__(self, representation: str | None = None, batch_size: int = 128,
                 eval_batch_size: int | None = None, seed: int = 0, data_dir: str | None = None,
                 conditional: bool = False):
        super().__init__()
        if not isinstance(conditional, bool):
            raise DataError(f"dataset '{self.name}': conditional must be true or false, got {conditional!r}")
        if conditional and not self.labelled:
            raise DataError(f"dataset '{self.name}' has no labels, so it cannot be conditional "
                            f"(remove data.conditional)")
        self.conditional = conditional
        representation = representation or self.representations[0]
        if representation not in self.representations:
            raise DataError(
                f"dataset '{self.name}' supports representation {' or '.join(self.representations)}, "
                f"got '{representation}'"
            )
        self.representation = representation
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or max(batch_size, 500))
        self.seed = int(seed)
        self.data_dir = data_dir
        self._raw: dict[str, Tensor] | None = None
        self._labels: dict[str, Tensor] | None = None  # per split (N,) int64, where the dataset has labels
        self._eval_cache: dict[str, Tensor] = {}
        self.test_split = "test"
        self.test_examples: int | None = None  # evaluate N evenly spaced examples of the split (eval.examples)

    # ---- to implement ------------------------------------------------------------------------
    @abc.abstractmethod
    def load_splits(self) -> dict[str, Tensor | tuple[Tensor, Tensor]]:
        """Return {'train','val','test'} tensors of raw data (or ``(x, y)`` pairs, ``y`` the integer
        class labels of shape (N,), for labelled datasets), seeded by ``self.seed``
        (the split must not depend on the rank: every process loads the same data).

        Real-valued data as float; image data as float in [0, 1] intensities for ``binarized``
        and as integer levels 0..num_levels-1 (any dtype) for ``dequantized``.
        Images have shape (N, C, H, W)."""

    def true_log_prob(self, x: Tensor) -> Tensor | None:
        """Log-density of the true data distribution where known (toy sets), else None."""
        return None

    def extras(self) -> dict:
        """Dataset facts stored in the DataSpec (e.g. the true entropy)."""
        return {}

    # ---- shared machinery ----------------------------------------------------------------------
    @property
    def raw(self) -> dict[str, Tensor]:
        """The raw splits as ``load_splits`` returned them (loaded once)."""
        if self._raw is None:
            raw = self.load_splits()
            if set(raw) != {"train", "val", "test"}:
                raise DataError(f"dataset '{self.name}': load_splits must return train, val and test")
            pairs = {k: isinstance(v, (tuple, list)) for k, v in raw.items()}
            if any(pairs.values()):
                if not all(pairs.values()):
                    raise DataError(f"dataset '{self.name}': load_splits returned labels for some splits only")
                labels = {k: v[1] for k, v in raw.items()}
                raw = {k: v[0] for k, v in raw.items()}
                self.check_raw(raw)
                self._labels = self.check_labels(labels, raw)
            else:
                self.check_raw(raw)
                if self.conditional:
                    raise DataError(f"dataset '{self.name}' has no labels here, so it cannot be conditional "
                                    f"(remove data.conditional)")
            self._raw = {k: v.float() for k, v in raw.items()}
        return self._raw

    @property
    def has_labels(self) -> bool:
        """Whether the loaded data carry class labels."""
        return self.raw is not None and self._labels is not None

    def eval_labels(self, split: str) -> Tensor:
        """The class labels (N,) int64 of a split, in the order of ``eval_data(split)``."""
        if split not in ("train", "val", "test"):
            raise DataError(f"split must be train, val or test, got '{split}'")
        if not self.has_labels:
            raise DataError(f"dataset '{self.name}' has no labels")
        return self._labels[split]

    def check_labels(self, labels: dict, raw: dict) -> dict[str, Tensor]:
        """Validate the labels ``load_splits`` returned: one integer label >= 0 per example of each
        split; returns them as int64 tensors."""
        out = {}
        for split in ("train", "val", "test"):
            y, where = labels[split], f"dataset '{self.name}', {split} labels"
            if not isinstance(y, Tensor):
                raise DataError(f"{where}: expected a tensor, got {type(y).__name__}")
            if y.dim() != 1 or len(y) != len(raw[split]):
                raise DataError(f"{where}: expected shape ({len(raw[split])},), one label per example, "
                                f"got {tuple(y.shape)}")
            if y.is_floating_point() and not bool((torch.isfinite(y) & (y == y.round())).all()):
                raise DataError(f"{where}: expected integer class labels, got non-integer values")
            if y.is_complex() or y.dtype == torch.bool:
                raise DataError(f"{where}: expected integer class labels, got dtype {y.dtype}")
            y = y.long()
            if len(y) and int(y.min()) < 0:
                raise DataError(f"{where}: expected class labels 0..K-1, got {int(y.min())}")
            if self.num_classes is not None and len(y) and int(y.max()) >= self.num_classes:
                raise DataError(f"{where}: expected class labels 0..{self.num_classes - 1}, got {int(y.max())}")
            out[split] = y
        return out

    def class_count(self) -> int | None:
        """Number of classes: the declared ``num_classes``, else the largest label + 1; None unlabelled."""
        if not self.has_labels:
            return None
        if self.num_classes is not None:
            return int(self.num_classes)
        return 1 + max(int(y.max()) for y in self._labels.values() if len(y))

    def eval_data(self, split: str) -> Tensor:
        """A split in the model's representation with *fixed* binarisation/dequantisation noise, so
        that every run and every process evaluates on exactly the same data."""
        if split not in ("train", "val", "test"):
            raise DataError(f"split must be train, val or test, got '{split}'")
        if split not in self._eval_cache:
            x = self._with_fixed_noise(self.raw[split], EVAL_NOISE_SEED + ("train", "val", "test").index(split))
            self.spec.check(x, f"dataset '{self.name}', {split} split")  # what the runner evaluates on
            self._eval_cache[split] = x
        return self._eval_cache[split]

    def check_raw(self, raw: dict) -> None:
        """Validate what ``load_splits`` returned, naming the dataset, the split and the problem:
        non-empty tensors of one shape (``event_shape`` where declared), finite values, and for
        images intensities in [0, 1] (``binarized``) or integer levels 0..L-1 (``dequantized``)."""
        shapes = {}
        for split in ("train", "val", "test"):
            x, where = raw[split], f"dataset '{self.name}' ({self.representation}), {split} split"
            if not isinstance(x, Tensor):
                raise DataError(f"{where}: expected a tensor, got {type(x).__name__}")
            if x.dim() < 2 or len(x) == 0:
                raise DataError(f"{where}: expected shape (N, *event_shape) with N >= 1, got {tuple(x.shape)}")
            if x.is_complex():
                raise DataError(f"{where}: expected real values, got dtype {x.dtype}")
            shapes[split] = tuple(x.shape[1:])
            if self.event_shape is not None and shapes[split] != tuple(self.event_shape):
                raise DataError(f"{where}: expected examples of shape {tuple(self.event_shape)}, got "
                                f"{shapes[split]} (data of shape {tuple(x.shape)}): corrupted or wrong files?")
            if x.dtype == torch.bool:
                x = x.to(torch.uint8)
            if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                raise DataError(f"{where}: {int((~torch.isfinite(x)).sum())} NaN or infinite value(s)")
            lo, hi = float(x.min()), float(x.max())
            if self.representation == "binarized" and not (lo >= 0 and hi <= 1):
                raise DataError(f"{where}: expected intensities in [0, 1] to binarize, got values in [{lo:g}, {hi:g}]")
            if self.representation == "dequantized":
                top = (self.num_levels or 0) - 1
                integral = not x.is_floating_point() or bool((x == x.round()).all())
                if not (lo >= 0 and hi <= top and integral):
                    raise DataError(f"{where}: expected integer levels 0..{top} to dequantize, got values in "
                                    f"[{lo:g}, {hi:g}]{'' if integral else ' (not all integers)'}")
        if len(set(shapes.values())) > 1:
            raise DataError(f"dataset '{self.name}': the splits have different example shapes {shapes}")

    @property
    def spec(self) -> DataSpec:
        shape = tuple(self.raw["train"].shape[1:])
        levels = self.num_levels if self.representation != "continuous" else None
        return DataSpec(self.name, shape, self.representation, levels, self.extras(),
                        num_classes=self.class_count(), conditional=self.conditional)

    def _with_fixed_noise(self, x: Tensor, seed: int) -> Tensor:
        """``x`` in the representation, its noise drawn from a generator seeded ``seed``."""
        noise = self._noise()
        return x if noise is None else noise(x, torch.Generator().manual_seed(seed))

    def init_batch(self) -> Tensor:
        """A deterministic batch of represented training data for data-dependent initialisation."""
        x = self.raw["train"][:INIT_BATCH_SIZE]
        return x.clone() if self._noise() is None else self._with_fixed_noise(x, self.seed)

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _noise(self):
        """The representation's noise as ``noise(x, generator=None)``: dynamic binarisation, or uniform
        dequantisation of the levels; None for continuous data. The generator (None: the global one)
        makes it repeatable: per batch in training, fixed for evaluation."""
        if self.representation == "binarized":
            return lambda x, generator=None: torch.bernoulli(x, generator=generator)
        if self.representation == "dequantized":
            levels = self.num_levels
            return lambda k, generator=None: (k + torch.rand(k.shape, generator=generator, dtype=k.dtype)) / levels
        return None

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches, sharded over DDP ranks, resumable mid-epoch (see :class:`TrainBatches`)."""
        world, rank = self._world()
        batches = TrainBatches(len(self.raw["train"]), self.batch_size, self.seed, world, rank, self.fused_steps)
        trainer = getattr(self, "trainer", None)
        fit_loop = getattr(trainer, "fit_loop", None)
        if fit_loop is not None:
            # Lightning draws the first batch before it calls set_epoch: start at the restored epoch.
            batches.set_epoch(fit_loop.epoch_progress.current.processed)
        labels = self._labels["train"] if self.conditional else None
        dataset = TrainDataset(self.raw["train"], self._noise(), self.seed, rank, labels)
        loader = ResumableLoader(dataset, batches, self._consumed_batches)
        position = getattr(self, "_restored_position", None)
        if position:  # a resumed run: continue at the checkpoint's batch
            loader.load_state_dict(position)
            self._restored_position = None
        self._train_loader = loader
        return loader

    def state_dict(self) -> dict:
        """The training loader's position, saved by Lightning with the datamodule.

        Lightning also restores the loader itself, but only when it builds the loader after
        restoring its loops; a model that sizes a schedule with ``trainer.estimated_stepping_batches``
        makes it build the loader earlier, and that restore is then skipped (the run would restart
        its epoch). The datamodule is restored before either, so the position always applies."""
        loader = getattr(self, "_train_loader", None)
        return {"train_position": loader.state_dict()} if loader is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self._restored_position = state.get("train_position")

    def _consumed_batches(self) -> tuple[int, float]:
        """(training batches of the current epoch the training loop has taken, batches per epoch)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, float("inf")
        return trainer.fit_loop.epoch_loop.batch_progress.current.ready, trainer.num_training_batches

    def _eval_dataloader(self, split: str, examples: int | None = None) -> DataLoader:
        """Batches of ``split``; of ``examples`` evenly spaced examples of it where given (every one
        when the split is no larger), so a subset still spans a split stored in some order."""
        data, labels = self.eval_data(split), self.eval_labels(split) if self.conditional else None
        if examples is not None and examples < len(data):
            keep = torch.arange(examples) * len(data) // examples  # (examples,) increasing, distinct
            data, labels = data[keep], labels[keep] if labels is not None else None
        dataset = BatchDataset(data, labels=labels)
        world, rank = self._world()
        sampler = StridedShardSampler(len(dataset), world, rank) if world > 1 else None
        return DataLoader(dataset, batch_size=self.eval_batch_size, sampler=sampler, collate_fn=_batch_is_ready)

    def val_dataloader(self) -> DataLoader:
        return self._eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        """The split named by ``test_split`` (the runner evaluates val and test through Lightning's test loop)."""
        return self._eval_dataloader(self.test_split, self.test_examples)

    def eval_dataloader(self, split: str) -> DataLoader:
        return self._eval_dataloader(split)
