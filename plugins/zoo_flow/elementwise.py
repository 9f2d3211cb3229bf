"""Elementwise invertible transforms whose parameters come from a conditioner network.

A coupling or autoregressive layer computes, for every transformed dimension, a vector of P
unnormalised parameters; an elementwise transform maps each scalar with its own parameters:

- ``affine`` (P = 2; RealNVP, Dinh et al. 2017; MAF, Papamakarios et al. 2017):
  y = x exp(s) + t with the log-scale soft-clamped, s = c tanh(s_raw / c), log|dy/dx| = s;
- ``spline`` (P = 3K - 1; Durkan et al. 2019, "Neural Spline Flows"): the monotone
  rational-quadratic spline of ``splines.rational_quadratic_spline`` with identity tails
  outside [-B, B].

All-zero parameters give the identity in both cases.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .splines import params_per_dim, rational_quadratic_spline, split_params

TRANSFORMS = ("affine", "spline")


class AffineElementwise:
    """y = x exp(c tanh(s_raw / c)) + t; params (..., 2) = [s_raw, t]."""

    def __init__(self, max_log_scale: float):
        self.max_log_scale = float(max_log_scale)
        self.n_params = 2

    def __call__(self, x: Tensor, params: Tensor, inverse: bool = False) -> tuple[Tensor, Tensor]:
        """x (...,), params (..., 2) -> y (...,), log|dy/dx| (...,) (of the inverse map when ``inverse``)."""
        c = self.max_log_scale
        s = c * torch.tanh(params[..., 0] / c)
        t = params[..., 1]
        if inverse:
            return (x - t) * torch.exp(-s), -s
        return x * torch.exp(s) + t, s


class SplineElementwise:
    """The rational-quadratic spline with ``n_bins`` bins on [-B, B]; params (..., 3K - 1)."""

    def __init__(self, n_bins: int, tail_bound: float):
        self.n_bins, self.tail_bound = int(n_bins), float(tail_bound)
        self.n_params = params_per_dim(self.n_bins)

    def __call__(self, x: Tensor, params: Tensor, inverse: bool = False) -> tuple[Tensor, Tensor]:
        w, h, d = split_params(params, self.n_bins)
        return rational_quadratic_spline(x, w, h, d, self.tail_bound, inverse=inverse)


def make_elementwise(transform: str, max_log_scale: float, n_bins: int, tail_bound: float):
    if transform == "affine":
        return AffineElementwise(max_log_scale)
    if transform == "spline":
        return SplineElementwise(n_bins, tail_bound)
    raise ValueError(f"flow: transform must be one of {list(TRANSFORMS)}, got {transform!r}")
