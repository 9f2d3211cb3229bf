"""ZooDataModule: in-memory, seeded train/val/test splits with a data representation.

Subclasses implement ``load_splits()`` returning raw tensors; this base class applies the
representation (see ``zoo_core.data.spec``), builds fast batched loaders, and shards them
over DDP ranks itself:

- train: ``DistributedSampler`` (shuffled, seeded, epoch-aware) when several processes run;
- val/test: each rank takes every ``world_size``-th example *without padding*, so summed
  metrics over ranks equal the single-process values exactly.
"""
from __future__ import annotations

import abc
from typing import Iterator

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from zoo_core.data.spec import DataSpec
from zoo_core.errors import DataError

INIT_BATCH_SIZE = 2048
#: Fixed seed for the one-off binarisation/dequantisation of val/test sets (comparable across runs).
EVAL_NOISE_SEED = 1234


class BatchDataset(Dataset):
    """Tensor dataset that returns whole batches through ``__getitems__`` (one indexing op per batch).

    ``transform`` is applied per batch (dynamic binarisation or dequantisation noise for training).
    """

    def __init__(self, data: Tensor, transform=None):
        self.data = data
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Tensor:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> Tensor:
        batch = self.data[torch.as_tensor(indices, dtype=torch.long)]
        return self.transform(batch) if self.transform is not None else batch


def _batch_is_ready(batch: Tensor) -> Tensor:
    return batch


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

    def __init__(self, representation: str | None = None, batch_size: int = 128,
                 eval_batch_size: int | None = None, seed: int = 0, data_dir: str | None = None):
        super().__init__()
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
        self._eval_cache: dict[str, Tensor] = {}
        self.test_split = "test"

    # ---- to implement ------------------------------------------------------------------------
    @abc.abstractmethod
    def load_splits(self) -> dict[str, Tensor]:
        """Return {'train','val','test'} tensors of raw data, seeded by ``self.seed``
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
            self._raw = {k: v.float() for k, v in raw.items()}
        return self._raw

    def eval_data(self, split: str) -> Tensor:
        """A split in the model's representation with *fixed* binarisation/dequantisation noise, so
        that every run and every process evaluates on exactly the same data."""
        if split not in ("train", "val", "test"):
            raise DataError(f"split must be train, val or test, got '{split}'")
        if split not in self._eval_cache:
            x = self.raw[split]
            transform = self._train_transform()
            if transform is not None:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(EVAL_NOISE_SEED + ("train", "val", "test").index(split))
                    x = transform(x)
            self._eval_cache[split] = x
        return self._eval_cache[split]

    @property
    def spec(self) -> DataSpec:
        shape = tuple(self.raw["train"].shape[1:])
        levels = self.num_levels if self.representation != "continuous" else None
        return DataSpec(self.name, shape, self.representation, levels, self.extras())

    def _train_transform(self):
        if self.representation == "binarized":
            return torch.bernoulli
        if self.representation == "dequantized":
            levels = self.num_levels
            return lambda k: (k + torch.rand_like(k)) / levels
        return None

    def init_batch(self) -> Tensor:
        """A deterministic batch of represented training data for data-dependent initialisation."""
        x = self.raw["train"][:INIT_BATCH_SIZE]
        transform = self._train_transform()
        if transform is None:
            return x.clone()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return transform(x)

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def train_dataloader(self) -> DataLoader:
        dataset = BatchDataset(self.raw["train"], self._train_transform())
        world, rank = self._world()
        if world > 1:
            sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
            return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, collate_fn=_batch_is_ready)
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=True, generator=gen,
                          collate_fn=_batch_is_ready)

    def _eval_dataloader(self, split: str) -> DataLoader:
        dataset = BatchDataset(self.eval_data(split))
        world, rank = self._world()
        sampler = StridedShardSampler(len(dataset), world, rank) if world > 1 else None
        return DataLoader(dataset, batch_size=self.eval_batch_size, sampler=sampler, collate_fn=_batch_is_ready)

    def val_dataloader(self) -> DataLoader:
        return self._eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        """The split named by ``test_split`` (the runner evaluates val and test through Lightning's test loop)."""
        return self._eval_dataloader(self.test_split)

    def eval_dataloader(self, split: str) -> DataLoader:
        return self._eval_dataloader(split)
