"""Sample quality in data space: kernel MMD and sliced Wasserstein distance to held-out data.

Both compare ``n`` model samples with ``n`` held-out examples of the evaluated split, flattened
to vectors (pixels for images):

- MMD^2 (Gretton et al. 2012, "A Kernel Two-Sample Test"), the unbiased estimator with a
  Gaussian kernel whose bandwidth is the median pairwise distance of the held-out data;
- sliced Wasserstein-1 (Bonneel et al. 2015): the mean over random unit directions of the 1-D
  Wasserstein distance between the projected sets.

The same statistics between two disjoint halves of the held-out data are reported as
``*_data_floor``: what a perfect model would score at this sample size. Every process computes
the same value (the data are gathered, the samples seeded).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from zoo_core.metrics.features import SEED, SampleMetric, model_samples

PROJECTIONS = 256


def _kernel_mean(a: Tensor, b: Tensor, bandwidth: float, same: bool = False) -> Tensor:
    """Mean of k(a_i, b_j) = exp(-|a_i - b_j|^2 / (2 bandwidth^2)) over a (n, D), b (m, D); over
    the pairs i != j when ``same`` (a is b). In place on one (n, m) matrix."""
    k = torch.cdist(a, b).square_().mul_(-0.5 / bandwidth ** 2).exp_()  # (n, m)
    if same:
        n = len(a)
        return (k.sum() - k.diagonal().sum()) / (n * (n - 1))
    return k.mean()


def mmd2_unbiased(x: Tensor, y: Tensor, bandwidth: float, kyy_mean: Tensor | None = None) -> float:
    """x (n, D), y (m, D) -> unbiased MMD^2 with k(a, b) = exp(-|a - b|^2 / (2 bandwidth^2)).
    ``kyy_mean``: ``_kernel_mean(y, y, bandwidth, same=True)`` when already computed."""
    if kyy_mean is None:
        kyy_mean = _kernel_mean(y, y, bandwidth, same=True)
    return float(_kernel_mean(x, x, bandwidth, same=True) + kyy_mean - 2 * _kernel_mean(x, y, bandwidth))


def sliced_wasserstein(x: Tensor, y: Tensor, projections: int = PROJECTIONS, seed: int = SEED) -> float:
    """x, y (n, D) with equal n -> mean over random directions of the 1-D Wasserstein-1 distance."""
    gen = torch.Generator().manual_seed(seed)
    directions = torch.randn(x.shape[1], projections, generator=gen, dtype=x.dtype)
    directions = directions / directions.norm(dim=0, keepdim=True)     # (D, P)
    px, _ = torch.sort(x @ directions, dim=0)                           # (n, P)
    py, _ = torch.sort(y @ directions, dim=0)
    return float((px - py).abs().mean())


def median_bandwidth(x: Tensor) -> float:
    d = torch.pdist(x[:1000])
    return float(d.median()) if len(d) else 1.0


class SampleQuality(SampleMetric):
    """MMD^2 and sliced Wasserstein-1 between model samples and held-out data (data space)."""

    name = "sample_quality"
    summary = ("MMD^2 and sliced Wasserstein-1 between samples and held-out data in data space, "
               "with their two-halves data floor")

    def describe(self, model) -> str:
        return (f"MMD^2 (Gaussian kernel, median-distance bandwidth) and sliced Wasserstein-1 "
                f"({PROJECTIONS} directions) between {self.n} samples and {self.n} held-out examples, "
                f"in data space (flattened); *_data_floor: the same between two halves of held-out data")

    def compute(self, model) -> dict[str, Any]:
        halves = self.halves()  # from the whole split, in order, identical on every rank
        if halves is None:
            return {}
        n = len(halves[0])
        reference, other_half = (h.reshape(n, -1).double() for h in halves)
        samples = model_samples(model, n).reshape(n, -1).double()  # shared with the other sample metrics
        if not torch.isfinite(samples).all():
            return {"mmd2": math.nan, "sliced_wasserstein": math.nan, "quality_samples": n}
        bandwidth = median_bandwidth(reference)
        kyy_mean = _kernel_mean(reference, reference, bandwidth, same=True)  # shared by both statistics
        return {
            "mmd2": mmd2_unbiased(samples, reference, bandwidth, kyy_mean),
            "mmd2_data_floor": mmd2_unbiased(other_half, reference, bandwidth, kyy_mean),
            "sliced_wasserstein": sliced_wasserstein(samples, reference),
            "sliced_wasserstein_data_floor": sliced_wasserstein(other_half, reference),
            "quality_samples": n,
        }
