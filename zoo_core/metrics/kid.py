"""Kernel inception distance (KID) between model samples and held-out data in a feature space.

Bińkowski, Sutherland, Arbel & Gretton 2018, "Demystifying MMD GANs" (ICLR): the squared maximum
mean discrepancy with the cubic polynomial kernel

    k(x, y) = (x . y / d + 1)^3                                   (d: the feature dimension)

between the feature distributions of samples X and held-out data Y, estimated without bias
(Gretton et al. 2012, "A Kernel Two-Sample Test", eq. 3) from m features of each:

    MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
              - 2 sum_{i, j} k(x_i, y_j) / m^2.

Unlike the Fréchet distance, whose plug-in estimate is biased upwards by O(1/n) (Chong & Forsyth
2020), E[MMD^2_u] does not depend on m: figures measured at different sample sizes estimate the
same number (only their noise differs), and two samples of one distribution score 0 on average
(negative values happen). As torchmetrics' ``KernelInceptionDistance`` (whose defaults are kept),
``kid`` is the mean of MMD^2_u over 100 random subsets of size 1000 (at most n) drawn without
replacement, independently for each set, and ``kid_std`` the (population) standard deviation over
the subsets: the spread of one subset's estimate, 0 when the subsets are the whole n.

The features are those of ``frechet`` (``zoo_core.metrics.features.feature_module``): the zoo's
classifier on digits/MNIST/CIFAR-10, the seeded random CNN for other images, the data space otherwise.
``kid_data_floor`` is KID between two disjoint halves of held-out data at the same n (expectation
0: the size of the estimate's noise for a perfect model). Every process computes the same value.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from zoo_core.metrics.features import SEED, FeatureSampleMetric, space_description

SUBSETS = 100
SUBSET_SIZE = 1000
DEGREE = 3
GRAM_MAX = 2048  # up to this n the three (n, n) kernel matrices are computed once (float64: 100 MB)


def poly_kernel(a: Tensor, b: Tensor) -> Tensor:
    """a (n, d), b (m, d) -> (n, m) k(a_i, b_j) = (a_i . b_j / d + 1)^3."""
    return (a @ b.T / a.shape[1] + 1.0) ** DEGREE


def mmd2_from_kernels(kxx: Tensor, kxy: Tensor, kyy: Tensor) -> Tensor:
    """Unbiased MMD^2 from the kernel matrices kxx (m, m), kxy (m, m), kyy (m, m) of m points each."""
    m = kxx.shape[0]
    within = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return within - 2.0 * kxy.sum() / (m * m)


def subset_mmd2(kxx: Tensor, kxy: Tensor, kyy: Tensor, sx: Tensor, sy: Tensor, m: int) -> Tensor:
    """MMD^2_u of many subset pairs at once, without copying sub-matrices: sx (S, n_x) and sy (S, n_y)
    select m points each (0/1 rows), so the sum of K over a subset is s^T K s -> (S,)."""
    within = ((sx @ kxx) * sx).sum(1) - sx @ kxx.diagonal() + ((sy @ kyy) * sy).sum(1) - sy @ kyy.diagonal()
    return within / (m * (m - 1)) - 2.0 * ((sx @ kxy) * sy).sum(1) / (m * m)


def kid_unbiased(x: Tensor, y: Tensor) -> float:
    """Features x (m, d), y (m, d) -> MMD^2_u with the cubic polynomial kernel (float64)."""
    x, y = x.double(), y.double()
    return float(mmd2_from_kernels(poly_kernel(x, x), poly_kernel(x, y), poly_kernel(y, y)))


def subset_indices(n_x: int, n_y: int, size: int, subsets: int, generator: torch.Generator):
    """``subsets`` pairs (ix (size,), iy (size,)), each a random subset without replacement; drawn in
    torchmetrics' order (x's permutation, then y's, per subset)."""
    for _ in range(subsets):
        ix = torch.randperm(n_x, generator=generator)[:size]
        iy = torch.randperm(n_y, generator=generator)[:size]
        yield ix, iy


def kernel_inception_distance(x: Tensor, y: Tensor, subsets: int = SUBSETS, subset_size: int = SUBSET_SIZE,
                              seed: int = SEED) -> tuple[float, float, int]:
    """Features x (n_x, d), y (n_y, d) -> (mean, population std of MMD^2_u over ``subsets`` random
    subsets of size m = min(subset_size, n_x, n_y), m); seeded. When m is all of both sets every
    subset is the whole set: one estimate, std 0."""
    x, y = x.double(), y.double()
    m = min(int(subset_size), len(x), len(y))
    if m < 2:
        return math.nan, math.nan, m
    if m == len(x) == len(y):
        return kid_unbiased(x, y), 0.0, m
    generator = torch.Generator().manual_seed(seed)
    pairs = subset_indices(len(x), len(y), m, subsets, generator)
    if max(len(x), len(y)) <= GRAM_MAX:  # the full kernel matrices once: ~25x fewer flops at n = 2000
        kxx, kxy, kyy = poly_kernel(x, x), poly_kernel(x, y), poly_kernel(y, y)  # (n_x, n_x), (n_x, n_y), (n_y, n_y)
        ix, iy = (torch.stack(t) for t in zip(*pairs))  # (subsets, m) each
        sx = torch.zeros(len(ix), len(x), dtype=x.dtype).scatter_(1, ix, 1.0)  # (subsets, n_x) 0/1 selections
        sy = torch.zeros(len(iy), len(y), dtype=y.dtype).scatter_(1, iy, 1.0)  # (subsets, n_y)
        values = subset_mmd2(kxx, kxy, kyy, sx, sy, m)  # (subsets,)
        return float(values.mean()), float(values.std(unbiased=False)), m
    else:
        scores = [mmd2_from_kernels(poly_kernel(x[ix], x[ix]), poly_kernel(x[ix], y[iy]), poly_kernel(y[iy], y[iy]))
                  for ix, iy in pairs]
    values = torch.stack(scores)  # (subsets,)
    return float(values.mean()), float(values.std(unbiased=False)), m


@torch.no_grad()
def features_of(feature: torch.nn.Module, x: Tensor) -> Tensor:
    """(n, *event_shape) -> (n, d) float64 features."""
    return feature(x).reshape(len(x), -1).double()


class KernelInceptionDistance(FeatureSampleMetric):
    """KID in the feature space of ``frechet`` (classifier, random-CNN or data space), with the data floor."""

    name = "kid"
    summary = ("Kernel inception distance (unbiased MMD^2, cubic polynomial kernel) between features of samples "
               "and held-out data, in the feature space of frechet; unbiased in the sample size, so figures at "
               "different n are comparable; with its two-halves data floor")
    space_key = "kid_feature_extractor"

    def describe(self, model) -> str:
        return (f"kernel inception distance (Bińkowski et al. 2018): unbiased MMD^2 with k(x, y) = (x.y/d + 1)^3 "
                f"between {space_description(model)} of n model samples and n held-out examples (a fixed random "
                f"subset of the split), n = min({self.n}, half the split); mean (kid) and standard deviation "
                f"(kid_std) over {SUBSETS} random subsets of size min({SUBSET_SIZE}, n); kid_data_floor: the same "
                f"between two disjoint halves of held-out data (expectation 0)"
                + ("; images clamped to [0, 1]" if model.data_spec.is_image else ""))

    def compute(self, model) -> dict[str, Any]:
        prepared = self.prepare(model)
        if isinstance(prepared, dict):
            return prepared
        reference, other_half, samples, feature = prepared
        f_ref = features_of(feature, reference)  # (n, d)
        floor, _, m = kernel_inception_distance(f_ref, features_of(feature, other_half))
        out = {"kid": math.nan, "kid_std": math.nan, "kid_data_floor": floor, "kid_num_samples": len(reference),
               "kid_subset_size": m, "kid_feature_extractor": space_description(model)}
        if torch.isfinite(samples).all():
            out["kid"], out["kid_std"], _ = kernel_inception_distance(f_ref, features_of(feature, samples))
        return out
