"""sklearn's 8x8 handwritten digits (1797 images, grey levels 0..16, labels 0..9; ships with scikit-learn)."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from zoo_core.data.base import ZooDataModule
from zoo_core.errors import DataError

N_TRAIN, N_VAL, N_TEST = 1197, 300, 300


class DigitsDataModule(ZooDataModule):
    """Digits with a seeded permutation split: 1197 train / 300 val / 300 test, shape (N, 1, 8, 8);
    labels 0..9 (the digit), the context of conditional models with ``conditional=True``."""

    name = "digits"
    representations = ("binarized", "dequantized")
    num_levels = 17
    event_shape = (1, 8, 8)
    labelled = True
    num_classes = 10

    def load_splits(self) -> dict[str, Tensor]:
        try:
            from sklearn.datasets import load_digits
            bunch = load_digits()
            images, target = bunch.images, bunch.target  # (1797, 8, 8) float64 integer values 0..16; (1797,)
        except Exception as e:  # pragma: no cover - broken scikit-learn install
            raise DataError(f"dataset 'digits': could not load sklearn.datasets.load_digits ({e})") from e
        if images.shape != (N_TRAIN + N_VAL + N_TEST, 8, 8):
            raise DataError(f"dataset 'digits': expected 1797 images of 8x8 from scikit-learn, got {images.shape}")
        levels = torch.from_numpy(images.astype(np.uint8))[:, None]  # (1797, 1, 8, 8) uint8 0..16
        perm = torch.randperm(len(levels), generator=torch.Generator().manual_seed(self.seed))  # (1797,)
        idx = {"train": perm[:N_TRAIN], "val": perm[N_TRAIN:N_TRAIN + N_VAL], "test": perm[N_TRAIN + N_VAL:]}
        labels = torch.from_numpy(target.astype(np.int64))  # (1797,)
        if self.representation == "binarized":
            levels = levels.float() / (self.num_levels - 1)  # intensities in [0, 1]
        return {k: (levels[i], labels[i]) for k, i in idx.items()}  # integer levels 0..16 when dequantized
