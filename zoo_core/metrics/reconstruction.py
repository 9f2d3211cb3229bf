"""Reconstruction error of autoencoding families (models that implement ``GenerativeModel.reconstruct``).

``reconstruct(x)`` returns the decoder's mean at the encoder's mean (for a VAE: decode E_q[z];
for a deterministic autoencoder: decode f(x)). Reported per example, averaged over the split:

- ``reconstruction_bce_nats`` (binarized data only): the Bernoulli negative log-likelihood
  -sum_d [x_d log p_d + (1 - x_d) log(1 - p_d)] with p = x_hat, summed over pixels, in nats;
  p is clipped to [1e-7, 1 - 1e-7], so one pixel costs at most 16.1 nats;
- ``reconstruction_mse``: the mean over dimensions of (x - x_hat)^2, the per-dimension squared
  error of the decoder mean (in the data's own units: [0, 1] intensities for images).

Sums are all-reduced over DDP ranks in float64, so N processes give the single-process value.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from zoo_core.metrics.base import Metric, all_reduce_sum
from zoo_core.model import GenerativeModel

EPS = 1e-7


def implements_reconstruct(model) -> bool:
    return type(model).reconstruct is not GenerativeModel.reconstruct


class Reconstruction(Metric):
    """Bernoulli NLL (binarised data) and per-dimension MSE of the decoder mean at the encoder mean."""

    name = "reconstruction"
    summary = ("reconstruction error of autoencoding families: Bernoulli NLL in nats/example (binarised data) "
               "and per-dimension MSE of the decoder mean at the encoder mean")

    def applies_to(self, model) -> bool:
        return implements_reconstruct(model)

    def describe(self, model) -> str:
        bce = ("Bernoulli NLL of x given x_hat in nats/example (p clipped to [1e-7, 1-1e-7]) and "
               if model.data_spec.is_binary else "")
        return (f"reconstruction error of x_hat = {type(model).__name__}.reconstruct(x) (decoder mean at the "
                f"encoder mean) on every example of the split: {bce}mean squared error per dimension")

    def reset(self) -> None:
        self._sums = torch.zeros(4, dtype=torch.float64)  # [sum bce, sum bce^2, sum mse, count]

    @torch.no_grad()
    def update(self, model, x: Tensor, context: Tensor | None = None) -> None:
        x_hat = model.reconstruct(x) if context is None else model.reconstruct(x, context)
        if tuple(x_hat.shape) != tuple(x.shape):
            raise ValueError(f"{model.family}: reconstruct(x) returned shape {tuple(x_hat.shape)} for x of shape "
                             f"{tuple(x.shape)}")
        flat, flat_hat = x.reshape(len(x), -1).double(), x_hat.reshape(len(x), -1).double()  # (N, D)
        mse = ((flat - flat_hat) ** 2).mean(1)  # (N,)
        if model.data_spec.is_binary:
            p = flat_hat.clamp(EPS, 1 - EPS)
            bce = -(flat * p.log() + (1 - flat) * (-p).log1p()).sum(1)  # (N,)
        else:
            bce = torch.zeros_like(mse)
        batch = torch.stack([bce.sum(), (bce ** 2).sum(), mse.sum(),
                             torch.tensor(float(len(x)), dtype=torch.float64, device=mse.device)])
        self._sums = self._sums.to(mse.device) + batch

    def compute(self, model) -> dict[str, Any]:
        bce, bce_sq, mse, count = all_reduce_sum(self._sums).tolist()
        if count == 0:
            return {}
        out: dict[str, Any] = {}
        if model.data_spec.is_binary:
            mean = bce / count
            out["reconstruction_bce_nats"] = mean
            out["reconstruction_bce_nats_stderr"] = math.sqrt(max(bce_sq / count - mean ** 2, 0.0) / count)
        out["reconstruction_mse"] = mse / count
        out["reconstruction_num_examples"] = int(count)
        return out
