"""Negative log-likelihood in nats per example and bits per dimension of the original data."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from zoo_core.errors import MetricError
from zoo_core.metrics.base import Metric, all_reduce_sum


class NLL(Metric):
    """Mean NLL over the evaluated split, reported in the original (discrete) data space.

    Exact families give the exact NLL; bound families an upper bound on it (their
    ``likelihood_description`` names the bound, e.g. the importance-weighted bound with K samples).

    Where the dataset knows its true entropy H(p) (``DataSpec.extras["true_entropy_nats"]``: the toy
    sets 8gaussians and checkerboard), also ``nll_gap_nats`` = NLL - H(p): the cross-entropy minus the
    entropy, i.e. KL(p || q) >= 0 for an exact model (plus the bound's slack for a bound), estimated
    with the standard error ``nll_nats_stderr``; so an exact model equal to the data scores 0 +- noise.
    """

    name = "nll"
    summary = ("negative log-likelihood in nats/example and bits/dim of the original data (exact or the named "
               "bound); for 2-D data with a known density also the gap NLL - H(p) to the true entropy")

    def applies_to(self, model) -> bool:
        return model.likelihood != "none"

    def describe(self, model) -> str:
        spec = model.data_spec
        space = {"binarized": "binarised pixels", "dequantized": f"{spec.num_levels}-level pixels "
                 "(uniform dequantisation bound)", "continuous": "differential density"}[spec.representation]
        text = f"NLL from {model.likelihood_description()}, in nats/example and bits/dim of {space}"
        if getattr(model, "is_conditional", False):
            text = (f"conditional NLL -log p(x | y) given the split's labels y (the marginal -log p(x) on a split "
                    f"without labels), from {model.likelihood_description()}, in nats/example and bits/dim of {space}")
        entropy = _true_entropy(model)
        if entropy is not None:
            text += (f"; nll_gap_nats = NLL - H(p) with the true entropy H(p) = {entropy:.6f} nats of "
                     f"'{spec.name}' (KL(p || model) >= 0 up to the standard error for an exact model)")
        return text

    def reset(self) -> None:
        self._sums = torch.zeros(4, dtype=torch.float64)  # [sum nll, sum nll^2, count, non-finite count]

    def update(self, model, x: Tensor, context: Tensor | None = None) -> None:
        log_prob = model.log_prob(x, context)  # shape-checked: a wrong shape must not be averaged silently
        nll = -(log_prob.detach().double() + model.data_spec.log_prob_offset)  # (batch,)
        finite = torch.isfinite(nll)
        nll = torch.where(finite, nll, torch.zeros_like(nll))
        batch = torch.stack([nll.sum(), (nll ** 2).sum(), finite.sum().double(), (~finite).sum().double()])
        self._sums = self._sums.to(nll.device) + batch

    def compute(self, model) -> dict[str, Any]:
        total, total_sq, count, bad = all_reduce_sum(self._sums).tolist()
        if bad:
            raise MetricError(f"family '{model.family}': log_prob was NaN or infinite for {int(bad)} of "
                              f"{int(count + bad)} examples; no NLL is reported")
        mean = total / count
        spec = model.data_spec
        if spec.representation != "continuous" and mean < 0:
            raise MetricError(f"family '{model.family}': NLL {mean:.4g} nats on {spec.representation} data is "
                              f"negative, impossible for a probability of discrete data: the model's "
                              f"log_prob is not a normalised density of its {spec.representation} "
                              f"representation")
        var = max(total_sq / count - mean ** 2, 0.0)
        return {
            "nll_nats": mean,
            "nll_nats_stderr": math.sqrt(var / count),
            "bits_per_dim": model.data_spec.bits_per_dim(mean),
            "num_examples": int(count),
            "likelihood": model.likelihood_description(),
            **_gap(model, mean),
        }


def _true_entropy(model) -> float | None:
    """H(p) in nats of the data distribution, where the dataset states it (continuous data only)."""
    spec = model.data_spec
    entropy = (spec.extras or {}).get("true_entropy_nats")
    return float(entropy) if entropy is not None and spec.representation == "continuous" else None


def _gap(model, nll_mean: float) -> dict[str, float]:
    entropy = _true_entropy(model)
    return {} if entropy is None else {"nll_gap_nats": nll_mean - entropy, "true_entropy_nats": entropy}
