"""What the user's own datasets share (``array`` files and ``image_folder`` directories): the file
lookup, the declared number of levels, and a seeded train/val/test split.

- Paths: ``~`` is expanded; a relative path is taken from the working directory, else from the data
  directory (``--data-dir`` / ``ZOO_DATA_DIR``) when the file is there.
- ``levels``: a discrete dataset declares its number of levels L (256 for 8-bit images), its values
  being the integers 0..L-1. Then ``representation: dequantized`` models (k + u) / L and reports
  bits/dim of the original discrete data (see ``zoo_core.data.spec``), and ``binarized`` models
  Bernoulli draws of the intensities k / (L - 1). Without ``levels`` the data are ``continuous``.
- ``split``: fractions (train, val, test), default (0.8, 0.1, 0.1), of one permutation of the
  examples seeded by the run's seed: the same seed gives the same split on every process and run.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from zoo_core.data.base import ZooDataModule
from zoo_core.errors import ConfigError, DataError

DEFAULT_SPLIT = (0.8, 0.1, 0.1)


def resolve_path(path, data_dir, dataset: str) -> Path:
    """The user's file or directory (see the module docstring); a ConfigError when none is given."""
    if path is None or str(path) == "":
        raise ConfigError(f"dataset '{dataset}': set data.path to the file or directory of your data")
    p = Path(str(path)).expanduser()
    if not p.is_absolute() and not p.exists() and data_dir:
        candidate = Path(str(data_dir)).expanduser() / p
        if candidate.exists():
            return candidate
    return p


def check_split(split, dataset: str) -> tuple[float, float, float]:
    """Three fractions (train, val, test), each > 0, summing to 1."""
    try:
        fractions = tuple(float(f) for f in split)
    except (TypeError, ValueError):
        fractions = ()
    if len(fractions) != 3 or not all(math.isfinite(f) and f > 0 for f in fractions) \
            or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"dataset '{dataset}': data.split must be three fractions (train, val, test), each > 0, "
                          f"summing to 1, e.g. [0.8, 0.1, 0.1]; got {split!r}")
    return fractions


def split_indices(n: int, fractions: tuple[float, float, float], seed: int, where: str) -> dict[str, Tensor]:
    """Disjoint index sets of a seeded permutation of n examples: val and test get round(f * n) examples
    (at least one each), train the rest."""
    n_val = max(1, round(fractions[1] * n))
    n_test = max(1, round(fractions[2] * n))
    if n - n_val - n_test < 1:
        raise DataError(f"{where}: {n} example(s) are too few to split into train, val and test "
                        f"(fractions {list(fractions)}); at least 3 are needed")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))  # (n,)
    n_train = n - n_val - n_test
    return {"train": perm[:n_train], "val": perm[n_train:n_train + n_val], "test": perm[n_train + n_val:]}


def check_levels(levels, representation: str, dataset: str) -> int | None:
    """The declared number of levels, consistent with the representation."""
    if levels is not None:
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
            raise ConfigError(f"dataset '{dataset}': data.levels must be an integer >= 2 (e.g. 256 for 8-bit "
                              f"data), got {levels!r}")
        if representation == "continuous":
            raise ConfigError(f"dataset '{dataset}': levels={levels} declares discrete data; set "
                              f"data.representation to dequantized or binarized (continuous data take no levels)")
    elif representation != "continuous":
        raise ConfigError(f"dataset '{dataset}': representation '{representation}' needs data.levels, the number of "
                          f"levels of the discrete data (e.g. 256 for 8-bit images)")
    return levels


def as_events(x: Tensor, where: str) -> Tensor:
    """(N,) -> (N, 1); (N, D) as is; (N, H, W) -> grey images (N, 1, H, W); (N, C, H, W) as is."""
    if x.dim() == 1:
        return x[:, None]
    if x.dim() == 3:
        return x[:, None]
    if x.dim() in (2, 4):
        return x
    raise DataError(f"{where}: expected an array of shape (N, D) or (N, C, H, W), got {tuple(x.shape)}")


def check_values(x: Tensor, levels: int | None, where: str) -> Tensor:
    """Real, finite values; with ``levels`` integers 0..levels-1. Returns x as float32 (continuous) or
    int64 levels."""
    if x.is_complex():
        raise DataError(f"{where}: expected real numbers, got dtype {x.dtype}")
    if x.dtype == torch.bool:
        x = x.to(torch.uint8)
    if len(x) == 0:
        raise DataError(f"{where}: no examples (shape {tuple(x.shape)})")
    if x.is_floating_point():
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            first = int((~finite).reshape(len(x), -1).any(1).nonzero()[0, 0])
            kind = "NaN" if bool(torch.isnan(x).any()) else "infinite"
            raise DataError(f"{where}: {int((~finite).sum())} {kind} value(s), the first in example {first}; "
                            f"expected finite numbers")
    if levels is None:
        return x.to(torch.float32)
    integral = not x.is_floating_point() or bool((x == x.round()).all())
    lo, hi = float(x.min()), float(x.max())
    if not (integral and lo >= 0 and hi <= levels - 1):
        raise DataError(f"{where}: levels={levels} declares integer values 0..{levels - 1}, got values in "
                        f"[{lo:g}, {hi:g}]{'' if integral else ' (not all integers)'}")
    return x.to(torch.int64)


def check_label_values(y: Tensor, n: int, where: str) -> Tensor:
    """One integer class label >= 0 per example: (n,) or (n, 1) -> (n,) int64."""
    if y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dim() != 1 or len(y) != n:
        raise DataError(f"{where}: expected {n} labels (one per example, shape ({n},)), got shape {tuple(y.shape)}")
    if y.is_complex() or (y.is_floating_point() and not bool((torch.isfinite(y) & (y == y.round())).all())):
        raise DataError(f"{where}: expected integer class labels 0..K-1, got non-integer values")
    y = y.to(torch.int64)
    if int(y.min()) < 0:
        raise DataError(f"{where}: expected class labels 0..K-1, got {int(y.min())}")
    return y


class UserDataModule(ZooDataModule):
    """A dataset read from the user's files: subclasses implement ``read()`` -> (x, labels or None),
    x already of shape (N, *event) with float32 values (continuous) or int64 levels."""

    labelled = True  # where the files carry labels; checked when they are read

    def __init__(self, levels: int | None = None, split=DEFAULT_SPLIT, conditional: bool = False, **base_kwargs):
        super().__init__(conditional=conditional, **base_kwargs)
        self.num_levels = check_levels(levels, self.representation, self.name)
        self.split = check_split(split, self.name)
        self.class_names: list[str] | None = None

    def read(self) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def describe_source(self) -> str:
        """How messages name the data, e.g. "dataset 'array' (points.npy)"."""
        return f"dataset '{self.name}'"

    def load_splits(self) -> dict[str, Tensor | tuple[Tensor, Tensor]]:
        x, y = self.read()  # (N, *event), (N,) or None
        if self.conditional and y is None:
            raise DataError(f"{self.describe_source()} has no labels, so it cannot be conditional "
                            f"(remove data.conditional, or give the labels)")
        idx = split_indices(len(x), self.split, self.seed, self.describe_source())
        if self.representation == "binarized":
            x = x.float() / (self.num_levels - 1)  # intensities k / (L - 1) in [0, 1]
        if y is None:
            return {k: x[i] for k, i in idx.items()}
        return {k: (x[i], y[i]) for k, i in idx.items()}

    def extras(self) -> dict:
        return {"class_names": list(self.class_names)} if self.class_names else {}
