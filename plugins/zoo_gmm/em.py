"""Expectation-maximisation for Gaussian mixtures, in closed form.

A. Dempster, N. Laird and D. Rubin, "Maximum Likelihood from Incomplete Data via the EM
Algorithm", JRSS B 1977; C. Bishop, *Pattern Recognition and Machine Learning* (2006), sec. 9.2.2.

For p(x) = sum_j pi_j N(x; mu_j, Sigma_j) one iteration is

    E-step:  r_nj = pi_j N(x_n; mu_j, Sigma_j) / sum_i pi_i N(x_n; mu_i, Sigma_i)
    statistics:  N_j = sum_n r_nj,   s_j = sum_n r_nj x_n,   S_j = sum_n r_nj x_n x_n^T
    M-step:  pi_j = N_j / N,   mu_j = s_j / N_j,   Sigma_j = S_j / N_j - mu_j mu_j^T + reg_covar I

(only the diagonal of S_j for diagonal covariances). ``reg_covar`` on the diagonal is
scikit-learn's ``GaussianMixture`` floor, as is the 10 eps added to N_j. The statistics are sums
over examples, so they can be accumulated batch by batch and summed over processes; the M-step
sees the same numbers however the data were split. Every iteration does not decrease the data's
log-likelihood (Dempster et al., Theorem 1) when reg_covar = 0.

A label-conditional mixture (one block of K components per class y) is the same algorithm with
r_nj = 0 outside the block of the example's class y_n, and pi_j normalised within each block.
The statistics are kept as one flat float64 vector (see :class:`StatsLayout`), the form that
one ``all_reduce`` sums and a checkpoint stores.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

EPS10 = 10 * torch.finfo(torch.float64).eps  # scikit-learn's floor on N_j


@dataclass(frozen=True)
class StatsLayout:
    """Where N_j (J,), s_j (J, D), S_j (J, D, D) or its diagonal (J, D), the summed log-likelihood
    and the example count lie in the flat statistics vector."""

    components: int  # J
    dims: int  # D
    full: bool  # full covariances (else diagonal)

    @property
    def sizes(self) -> tuple[int, ...]:
        j, d = self.components, self.dims
        return (j, j * d, j * d * d if self.full else j * d, 1, 1)

    def zeros(self, device=None) -> Tensor:
        return torch.zeros(sum(self.sizes), dtype=torch.float64, device=device)

    def split(self, flat: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Views (N (J,), s (J, D), S (J, D, D) or (J, D), loglik (1,), count (1,)) into ``flat``."""
        j, d = self.components, self.dims
        n, s, ss, ll, c = torch.split(flat, self.sizes)
        return n, s.view(j, d), ss.view(j, d, d) if self.full else ss.view(j, d), ll, c


def responsibilities(log_joint: Tensor, allowed: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """log_joint (N, J) = log pi_j + log N(x_n; mu_j, Sigma_j); ``allowed`` (N, J) bool restricts each
    example to some components (its class's block). -> (r (N, J), log p(x_n) (N,))."""
    if allowed is not None:
        log_joint = log_joint.masked_fill(~allowed, float("-inf"))
    log_norm = torch.logsumexp(log_joint, dim=-1)  # (N,)
    return torch.exp(log_joint - log_norm[:, None]), log_norm


@torch.no_grad()
def accumulate(stats: Tensor, layout: StatsLayout, x: Tensor, resp: Tensor, log_norm: Tensor) -> None:
    """Add one batch's statistics to ``stats`` in place: x (N, D), r (N, J), log p(x_n) (N,). In float64."""
    n, s, ss, ll, c = layout.split(stats)
    x, resp = x.double(), resp.double()
    n += resp.sum(0)                                          # (J,)
    s += resp.T @ x                                           # (J, D)
    if layout.full:
        ss += (resp.T[:, :, None] * x).transpose(1, 2) @ x   # (J, D, D): sum_n r_nj x_n x_n^T
    else:
        ss += resp.T @ (x * x)                                # (J, D)
    ll += log_norm.double().sum()
    c += len(x)


def m_step(stats: Tensor, layout: StatsLayout, reg_covar: float, block: int) -> tuple[Tensor, Tensor, Tensor]:
    """Closed-form maximiser from the statistics: -> (log pi (J,), mu (J, D), Sigma (J, D, D) or
    variances (J, D)), float64; pi normalised within consecutive blocks of ``block`` components."""
    n, s, ss, _, _ = layout.split(stats)
    nk = n + EPS10                                             # (J,)
    means = s / nk[:, None]                                    # (J, D)
    if layout.full:
        eye = torch.eye(layout.dims, dtype=torch.float64, device=stats.device)
        cov = ss / nk[:, None, None] - means[:, :, None] * means[:, None, :] + reg_covar * eye  # (J, D, D)
        cov = 0.5 * (cov + cov.transpose(-1, -2))
    else:
        cov = ss / nk[:, None] - means ** 2 + reg_covar        # (J, D)
    blocks = nk.view(-1, block)                                # (C, K)
    log_weights = (torch.log(blocks) - torch.log(blocks.sum(-1, keepdim=True))).reshape(-1)  # (J,)
    return log_weights, means, cov


def mean_log_likelihood(stats: Tensor, layout: StatsLayout) -> float:
    """(1/N) sum_n log p(x_n) of the parameters the statistics were gathered with."""
    _, _, _, ll, c = layout.split(stats)
    return float(ll / c.clamp(min=1))
