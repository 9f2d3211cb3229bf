"""Autoregressive flow layers conditioned by MADE (MAF / NSF-AR).

References:
- M. Germain, K. Gregor, I. Murray and H. Larochelle, "MADE: Masked Autoencoder for Distribution
  Estimation", ICML 2015: a masked MLP whose output for dimension i depends only on x_{<i} (in a
  chosen order), through binary masks built from unit degrees.
- G. Papamakarios, T. Pavlakou and I. Murray, "Masked Autoregressive Flow for Density
  Estimation", NeurIPS 2017 (MAF): z_i = tau(x_i; theta_i(x_{<i})) in one pass for the density.
- C. Durkan et al., "Neural Spline Flows", NeurIPS 2019: the same with rational-quadratic splines
  as tau (the autoregressive NSF).

The Jacobian dz/dx is triangular (in the layer's order), so log|det| = sum_i log|dtau/dx_i|. The
inverse needs D sequential passes: after pass i, the first i dimensions (in order) are exact.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo_core.nn import ACTIVATIONS


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed binary mask (out, in)."""

    def __init__(self, n_in: int, n_out: int, mask: Tensor):
        super().__init__(n_in, n_out)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """x (N, D) -> parameters (N, D, P), where row i depends only on inputs of lower degree.

    ``degrees`` (D,): the position 1..D of each input in the autoregressive order. Hidden unit
    degrees cycle through 1..D-1; a hidden unit of degree m sees inputs of degree <= m, an output of
    dimension i sees hidden units of degree < degrees[i]. The last layer starts at zero.
    """

    def __init__(self, degrees: Tensor, hidden: Sequence[int], n_params: int, activation: str,
                 context_dim: int = 0):
        super().__init__()
        d = len(degrees)
        self.dims, self.n_params = d, int(n_params)
        self.register_buffer("degrees", degrees.long())
        layers: list[nn.Module] = []
        prev, prev_deg = d, self.degrees
        for width in hidden:
            deg = torch.arange(width) % max(1, d - 1) + 1                      # (H,)
            layers += [MaskedLinear(prev, width, deg[:, None] >= prev_deg[None, :]), ACTIVATIONS[activation]()]
            prev, prev_deg = width, deg
        out_deg = self.degrees.repeat_interleave(self.n_params)                  # (D * P,)
        self.out = MaskedLinear(prev, d * self.n_params, out_deg[:, None] > prev_deg[None, :])
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.body = nn.Sequential(*layers)
        # a context (degree 0) may reach every unit: it enters the first hidden layer unmasked
        self.context = nn.Linear(context_dim, hidden[0], bias=False) if context_dim else None

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """x (N, D), context (N, E) or None -> (N, D, P)."""
        h = self.body[0](x)
        if self.context is not None:
            h = h + self.context(context.to(x.dtype))
        return self.out(self.body[1:](h)).reshape(len(x), self.dims, self.n_params)


class MaskedAutoregressive(nn.Module):
    """z_i = tau(x_i; MADE(x)_i) with an elementwise ``transform`` (affine or spline)."""

    def __init__(self, degrees: Tensor, hidden: Sequence[int], activation: str, transform, context_dim: int = 0):
        super().__init__()
        self.transform = transform
        self.made = MADE(degrees, hidden, transform.n_params, activation, context_dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, log_det = self.transform(x, self.made(x, context))                    # (N, D), (N, D)
        return z, log_det.sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        x = torch.zeros_like(z)                                                  # (N, D)
        for _ in range(self.made.dims):
            x = self.transform(z, self.made(x, context), inverse=True)[0]
        return x


def autoregressive_degrees(dims: int, n_layers: int) -> list[Tensor]:
    """Degrees (D,) per layer: the natural order, reversed in every second layer (as in MAF)."""
    natural = torch.arange(1, dims + 1)
    return [natural if i % 2 == 0 else natural.flip(0) for i in range(n_layers)]
