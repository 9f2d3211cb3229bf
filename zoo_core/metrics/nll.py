"""Negative log-likelihood in nats per example and bits per dimension of the original data."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from zoo_core.metrics.base import Metric, all_reduce_sum


class NLL(Metric):
    """Mean NLL over the evaluated split, reported in the original (discrete) data space.

    Exact families give the exact NLL; bound families an upper bound on it (their
    ``likelihood_description`` names the bound, e.g. the importance-weighted bound with K samples).
    """

    name = "nll"

    def applies_to(self, model) -> bool:
        return model.likelihood != "none"

    def describe(self, model) -> str:
        spec = model.data_spec
        space = {"binarized": "binarised pixels", "dequantized": f"{spec.num_levels}-level pixels "
                 "(uniform dequantisation bound)", "continuous": "differential density"}[spec.representation]
        return f"NLL from {model.likelihood_description()}, in nats/example and bits/dim of {space}"

    def reset(self) -> None:
        self._sums = torch.zeros(3, dtype=torch.float64)  # [sum nll, sum nll^2, count]

    def update(self, model, x: Tensor) -> None:
        nll = -(model.log_prob(x).double() + model.data_spec.log_prob_offset)  # (batch,)
        batch = torch.stack([nll.sum(), (nll ** 2).sum(), torch.tensor(float(len(nll)), dtype=torch.float64,
                                                                         device=nll.device)])
        self._sums = self._sums.to(nll.device) + batch

    def compute(self, model) -> dict[str, Any]:
        total, total_sq, count = all_reduce_sum(self._sums).tolist()
        mean = total / count
        var = max(total_sq / count - mean ** 2, 0.0)
        return {
            "nll_nats": mean,
            "nll_nats_stderr": math.sqrt(var / count),
            "bits_per_dim": model.data_spec.bits_per_dim(mean),
            "num_examples": int(count),
            "likelihood": model.likelihood_description(),
        }
