"""Fréchet distance between model samples and held-out data in a feature space.

FD = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)), the squared 2-Wasserstein distance
between the Gaussians N(mu_i, S_i) fitted to the two sets of features (Heusel et al. 2017, FID;
Dowson & Landau 1982). Computed by torchmetrics' ``FrechetInceptionDistance`` with a custom
feature module in place of Inception-v3:

- images (digits, mnist): the penultimate layer of the zoo's own classifier for the dataset and
  representation (``zoo_core.metrics.classifier``), so values are comparable only between runs of
  the same dataset and representation, never with published Inception FIDs;
- other data (the 2-D toy sets): the data space itself (FD between Gaussian fits, which sees only
  means and covariances: a coarse statistic for multimodal 2-D data; MMD and sliced Wasserstein in
  ``sample_quality`` see more).

FD estimates are biased upwards at finite n (Chong & Forsyth 2020), so ``fd_data_floor`` reports
the same statistic between two disjoint halves of held-out data with the same n: what a perfect
model would score; figures at different n are not comparable. ``zoo_core.metrics.kid`` (KID) uses the
same features with an estimator that is unbiased in n. Every process computes the same value (the data
are gathered, the samples seeded).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics.image.fid import FrechetInceptionDistance

from zoo_core.metrics.features import FeatureSampleMetric, space_description


def frechet_distance(reference: Tensor, other: Tensor, feature: torch.nn.Module) -> float:
    """FD between ``feature(reference)`` and ``feature(other)``; ``feature`` maps (N, ...) to (N, F)
    and has ``num_features`` (torchmetrics' custom-extractor protocol); inputs are float."""
    fid = FrechetInceptionDistance(feature=feature, normalize=True, sync_on_compute=False)
    with torch.no_grad():
        fid.update(reference, real=True)
        fid.update(other, real=False)
        return float(fid.compute())


class FrechetDistance(FeatureSampleMetric):
    """Fréchet distance in classifier-feature space (images) or data space (2-D), with the data floor."""

    name = "frechet"
    summary = ("Fréchet distance between Gaussian fits to features of samples and held-out data "
               "(a zoo classifier's features for digits/MNIST/CIFAR-10, seeded random-CNN features for other images, data "
               "space for vectors), with its two-halves data floor")
    space_key = "fd_feature_extractor"

    def describe(self, model) -> str:
        return (f"Fréchet distance (torchmetrics FrechetInceptionDistance, custom extractor) between Gaussians "
                f"fitted to {space_description(model)} of n model samples and n held-out examples (a fixed "
                f"random subset of the split), n = min({self.n}, half the split); fd_data_floor: the same "
                f"between two disjoint halves of held-out data (what a perfect model scores at this n)"
                + ("; images clamped to [0, 1]" if model.data_spec.is_image else ""))

    def compute(self, model) -> dict[str, Any]:
        prepared = self.prepare(model)
        if isinstance(prepared, dict):
            return prepared
        reference, other_half, samples, feature = prepared
        n = len(reference)
        out = {"fd": math.nan, "fd_data_floor": frechet_distance(reference, other_half, feature),
               "fd_num_samples": n, "fd_feature_extractor": space_description(model)}
        if torch.isfinite(samples).all():
            out["fd"] = frechet_distance(reference, samples, feature)
        return out
