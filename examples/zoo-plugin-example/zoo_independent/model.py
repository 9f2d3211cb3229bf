"""The factorised ("independent") family: a product of per-dimension marginals.

Every dimension d = 1..D of x is modelled on its own, with no dependence between dimensions:

    p(x) = prod_d p_d(x_d)

so ``log_prob`` is exact and costs O(D). The marginal follows the data representation
(see ``zoo_core.data.spec``):

- ``binarized`` data, x_d in {0, 1}: independent Bernoulli with logit l_d,

      log p(x) = sum_d [ x_d l_d - softplus(l_d) ]      (= -BCE-with-logits)

  Maximum likelihood from N examples with k_d ones in dimension d: sigmoid(l_d) = k_d / N. A
  dimension that is always 0 (or always 1) in the data, like the border pixels of the digits,
  then gets l_d = -inf (+inf) and any held-out example that differs there has probability 0.
  ``init_from_data`` therefore adds ``prior_count`` = a pseudo-counts to each outcome,

      sigmoid(l_d) = (k_d + a) / (N + 2a),

  the posterior mean under a Beta(a, a) prior (a = 1/2 is the Krichevsky-Trofimov / Jeffreys
  estimator, the default). ``prior_count=0`` gives the plain maximum-likelihood estimate, with
  the logits clipped to +-``MAX_LOGIT``.

- ``continuous`` or ``dequantized`` data: independent Gaussian with mean mu_d and log standard
  deviation s_d,

      log p(x) = sum_d [ -1/2 log(2 pi) - s_d - 1/2 ((x_d - mu_d) / exp(s_d))^2 ].

  Maximum likelihood: mu_d = mean of x_d, exp(s_d) = the (biased, 1/N) standard deviation of
  x_d, floored at ``min_std`` so that a constant dimension keeps a finite density.

``loss`` is the mean negative log-likelihood over the batch; gradient descent on it converges
to the same estimates that ``init_from_data`` computes in closed form. The model is the usual
baseline that any model with dependencies between dimensions must beat; its samples show the
per-pixel (or per-coordinate) marginals and nothing else.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo_core.model import GenerativeModel, as_sample_shape, gaussian_log_prob

MAX_LOGIT = 20.0  # |logit| bound for prior_count=0: p in [2e-9, 1 - 2e-9]


class Independent(GenerativeModel):
    """Product of independent per-dimension marginals (Bernoulli or Gaussian); exact likelihood."""

    family = "independent"
    likelihood = "exact"

    def __init__(self, data: dict, optim: dict | None = None, prior_count: float = 0.5, min_std: float = 1e-3):
        super().__init__(data, optim)
        if not (isinstance(prior_count, (int, float)) and prior_count >= 0):
            raise ValueError(f"prior_count must be a number >= 0, got {prior_count!r}")
        if not (isinstance(min_std, (int, float)) and min_std > 0):
            raise ValueError(f"min_std must be a number > 0, got {min_std!r}")
        self.prior_count, self.min_std = float(prior_count), float(min_std)
        self.binary = self.data_spec.is_binary
        shape = tuple(self.event_shape)
        if self.binary:
            self.logits = nn.Parameter(torch.zeros(shape))      # (*event) Bernoulli logits
        else:
            self.mean = nn.Parameter(torch.zeros(shape))        # (*event)
            self.log_std = nn.Parameter(torch.zeros(shape))     # (*event)

    # ---- closed-form fit ------------------------------------------------------------------------
    @torch.no_grad()
    def init_from_data(self, x: Tensor) -> None:
        """Set the parameters to the (smoothed, for Bernoulli) maximum-likelihood estimates on ``x``."""
        self.validate_sample(x)
        flat = x.reshape(-1, *self.event_shape).double()        # (N, *event)
        n = len(flat)
        if n == 0:
            raise ValueError(f"{self.family}: init_from_data needs at least one example")
        if self.binary:
            ones = flat.sum(0)                                  # (*event) k_d
            a = self.prior_count
            logits = torch.log(ones + a) - torch.log(n - ones + a)  # log((k + a) / (N - k + a))
            self.logits.copy_(logits.clamp(-MAX_LOGIT, MAX_LOGIT))
        else:
            mean = flat.mean(0)                                 # (*event)
            std = flat.var(0, unbiased=False).sqrt().clamp_min(self.min_std)
            self.mean.copy_(mean)
            self.log_std.copy_(std.log())

    # ---- the interface --------------------------------------------------------------------------
    def _param(self) -> Tensor:
        return self.logits if self.binary else self.mean

    def _log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        batch = self.validate_sample(x)
        x = x.to(self._param().dtype)
        if self.binary:
            per_dim = -F.binary_cross_entropy_with_logits(
                self.logits.expand_as(x), x, reduction="none")  # (*batch, *event)
        else:
            per_dim = gaussian_log_prob(x, self.mean, 2.0 * self.log_std)  # (*batch, *event)
        return per_dim.flatten(start_dim=len(batch)).sum(-1)    # (*batch,)

    def _sample(self, sample_shape: torch.Size, context: Tensor | None = None) -> Tensor:
        shape = (*as_sample_shape(sample_shape), *self.event_shape)
        with torch.no_grad():
            if self.binary:
                return torch.bernoulli(torch.sigmoid(self.logits).expand(shape))
            eps = torch.randn(shape, device=self.mean.device, dtype=self.mean.dtype)
            return self.mean + torch.exp(self.log_std) * eps

    def sample_for_display(self, n: int) -> Tensor:
        x = self.sample((n,))
        return x.clamp(0, 1) if self.data_spec.is_image else x

    def loss(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return -self.log_prob(x).mean()

    # ---- extras ---------------------------------------------------------------------------------
    def entropy(self) -> Tensor:
        """The model's exact (differential, for Gaussians) entropy in nats: a sum over dimensions."""
        if self.binary:
            p = torch.sigmoid(self.logits)
            return F.binary_cross_entropy_with_logits(self.logits, p, reduction="sum")
        return (self.log_std + 0.5 * math.log(2 * math.pi * math.e)).sum()
