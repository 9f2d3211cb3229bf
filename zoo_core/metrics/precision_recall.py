"""Precision and recall of a generative model by k-nearest-neighbour manifolds, plus density and coverage.

Kynkäänniemi et al. 2019 ("Improved Precision and Recall Metric for Assessing Generative Models"):
each set is approximated by the union of balls around its points, each ball's radius being the
distance to the point's k-th nearest neighbour within its own set (k = 3). Then

- precision = fraction of model samples inside the real manifold (sample quality / fidelity),
- recall    = fraction of real examples inside the model manifold (diversity / coverage of modes).

Naeem et al. 2020 ("Reliable Fidelity and Diversity Metrics for Generative Models") replace the
model manifold, which outliers inflate, by counts over the real balls only (radii r_i from the real
set, M samples, N real points):

- density  = 1/(k M) sum_j #{i : |y_j - x_i| <= r_i}  (1 in expectation when the model is the data),
- coverage = 1/N #{i : some sample within r_i of x_i}  (1 - 2^-k = 0.875 in expectation then, for
  M = N and large N).

Features: the zoo classifier's penultimate layer for images (``zoo_core.metrics.classifier``), the
data space for 2-D data. ``*_data_floor``: the same statistics between two disjoint halves of
held-out data with the same n, i.e. what a perfect model scores (for these a ceiling, not a floor).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from zoo_core.metrics.features import FeatureSampleMetric, space_description

K = 3
CHUNK = 1024  # query rows per distance matrix block


def knn_radii(x: Tensor, k: int = K) -> Tensor:
    """x (N, F) -> (N,) distance from each point to its k-th nearest neighbour in x (itself excluded)."""
    if len(x) <= k:
        raise ValueError(f"k-NN radii need more than k={k} points, got {len(x)}")
    out = []
    for rows in x.split(CHUNK):
        d = torch.cdist(rows, x)  # (c, N); the point itself is at distance 0, the first of the k + 1
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(out)


def _ball_counts(query: Tensor, centres: Tensor, radii: Tensor) -> Tensor:
    """query (Q, F), centres (N, F), radii (N,) -> (Q,) number of balls B(centre_i, r_i) holding each query."""
    return torch.cat([(torch.cdist(rows, centres) <= radii).sum(1) for rows in query.split(CHUNK)])


def _covered(centres: Tensor, radii: Tensor, query: Tensor) -> Tensor:
    """(N,) whether each ball B(centre_i, r_i) holds at least one query point."""
    nearest = torch.cat([torch.cdist(rows, query).min(1).values for rows in centres.split(CHUNK)])  # (N,)
    return nearest <= radii


def precision_recall(real: Tensor, fake: Tensor, k: int = K) -> dict[str, float]:
    """real (N, F), fake (M, F) features -> precision, recall (Kynkäänniemi 2019), density, coverage (Naeem 2020)."""
    real, fake = real.double(), fake.double()
    r_real, r_fake = knn_radii(real, k), knn_radii(fake, k)  # (N,), (M,)
    in_real = _ball_counts(fake, real, r_real)  # (M,) real balls holding each sample
    return {
        "precision": float((in_real > 0).double().mean()),
        "recall": float((_ball_counts(real, fake, r_fake) > 0).double().mean()),
        "density": float(in_real.double().sum() / (k * len(fake))),
        "coverage": float(_covered(real, r_real, fake).double().mean()),
    }


class PrecisionRecall(FeatureSampleMetric):
    """k-NN precision/recall (k=3) and density/coverage in classifier-feature or data space."""

    name = "precision_recall"
    summary = ("k-NN (k=3) precision/recall (Kynkäänniemi 2019) and density/coverage (Naeem 2020) of samples "
               "vs held-out data, in the Fréchet metric's feature space (classifier or random-CNN features for images, "
               "data space for vectors)")
    space_key = "pr_space"

    def describe(self, model) -> str:
        return (f"precision and recall (Kynkäänniemi et al. 2019, k-NN manifolds, k={K}) and density and coverage "
                f"(Naeem et al. 2020) of n model samples against n held-out examples (a fixed random subset of "
                f"the split) in {space_description(model)}, n = min({self.n}, half the split); *_data_floor: the "
                f"same between two disjoint halves of held-out data (what a perfect model scores at this n)")

    def compute(self, model) -> dict[str, Any]:
        prepared = self.prepare(model, minimum=K + 1)
        if isinstance(prepared, dict):
            return prepared
        reference, other_half, samples, feature = prepared
        n = len(reference)
        real = feature(reference)
        floor = precision_recall(real, feature(other_half))
        values = (precision_recall(real, feature(samples)) if torch.isfinite(samples).all()
                  else dict.fromkeys(floor, math.nan))
        return {**values, **{f"{key}_data_floor": value for key, value in floor.items()},
                "pr_num_samples": n, "pr_k": K, "pr_space": space_description(model)}
