"""The ``ode_nll`` metric: the NLL of a model's ODE likelihood, reported next to its ``nll``.

For any model with ``ode_log_prob(x, context=None)`` returning a ``zoo_core.ode.LogDensityEstimate``
(the diffusion family's probability-flow ODE, Song et al. 2021; flow matching's own likelihood).
Keys: ``ode_nll_nats`` (mean over the split, in the original discrete space like ``nll_nats``),
``ode_bits_per_dim``, ``ode_nll_stderr`` (the standard error over examples, which includes the
Hutchinson probes' noise), ``ode_nll_probe_stderr`` (the part of it due to the probes alone:
sqrt(sum_n var_n) / N; 0 for the exact trace, NaN with one probe per example) and
``ode_likelihood`` (what was computed: trace, probes, solver).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from zoo_core.metrics.base import Metric, all_reduce_sum


class ODENLL(Metric):
    name = "ode_nll"
    summary = ("negative log-likelihood through the model's ODE (diffusion: the probability-flow ODE) in nats/example "
               "and bits/dim of the original data, with the standard error of the mean")

    def applies_to(self, model) -> bool:
        return callable(getattr(model, "ode_log_prob", None))

    def describe(self, model) -> str:
        return f"NLL of the ODE model: {_description(model)}, in nats/example and bits/dim of the original data"

    def reset(self) -> None:
        self._sums = torch.zeros(4, dtype=torch.float64)  # [sum nll, sum nll^2, count, sum probe variance]

    def update(self, model, x: Tensor, context: Tensor | None = None) -> None:
        est = model.ode_log_prob(x, context)
        nll = -(est.value.double().reshape(-1) + model.data_spec.log_prob_offset)  # (batch,)
        var = est.variance.double().reshape(-1)  # (batch,)
        batch = torch.stack([nll.sum(), (nll ** 2).sum(), torch.tensor(float(len(nll)), dtype=torch.float64,
                                                                         device=nll.device), var.sum()])
        self._sums = self._sums.to(nll.device) + batch

    def compute(self, model) -> dict[str, Any]:
        total, total_sq, count, var_sum = all_reduce_sum(self._sums).tolist()
        mean = total / count
        var = max(total_sq / count - mean ** 2, 0.0)
        return {
            "ode_nll_nats": mean,
            "ode_nll_stderr": math.sqrt(var / count),
            "ode_nll_probe_stderr": math.sqrt(var_sum) / count if not math.isnan(var_sum) else math.nan,
            "ode_bits_per_dim": model.data_spec.bits_per_dim(mean),
            "ode_likelihood": _description(model),
        }


def _description(model) -> str:
    describe = getattr(model, "ode_likelihood_description", None) or model.likelihood_description
    return describe()
