"""The VQ-VAE codebook: nearest-neighbour quantisation with exponential-moving-average updates.

A. van den Oord, O. Vinyals and K. Kavukcuoglu, "Neural Discrete Representation Learning",
NeurIPS 2017 (arXiv:1711.00937), section 3.2 and appendix A.1.

Each encoder output z_e (a d-vector) is replaced by its nearest code, z_q = e_k with
k = argmin_j ||z_e - e_j||^2. The codes are not trained by gradient descent but follow the
mean of the encoder outputs assigned to them, as exponential moving averages with decay gamma:

    N_j <- gamma N_j + (1 - gamma) n_j,            n_j = #{i : k_i = j}
    m_j <- gamma m_j + (1 - gamma) sum_{i: k_i = j} z_e,i
    e_j  = m_j / N~_j,   N~_j = (N_j + eps) / (sum_l N_l + K eps) * sum_l N_l

(N~ is the Laplace-smoothed count, which keeps a code that no output chose from dividing by
zero). The averages start at N_j = 1, m_j = e_j: a pseudo-count of one at the initial code, so
the first update already gives the weighted mean of the old code and its new members.
Under data-parallel training the counts n_j and sums are all-reduced first, so every process
makes the same update from the whole global batch.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


class EMACodebook(nn.Module):
    """K codes of dimension d, kept as buffers (saved in checkpoints, never given gradients)."""

    def __init__(self, num_codes: int, dim: int, decay: float = 0.99, epsilon: float = 1e-5):
        super().__init__()
        self.num_codes, self.dim, self.decay, self.epsilon = num_codes, dim, decay, epsilon
        codes = torch.randn(num_codes, dim)
        self.register_buffer("codes", codes)  # (K, d) e_j
        self.register_buffer("cluster_size", torch.ones(num_codes))  # (K,) N_j
        self.register_buffer("code_sum", codes.clone())  # (K, d) m_j

    def assign(self, z: Tensor) -> Tensor:
        """(M, d) -> (M,) index of the nearest code (squared Euclidean distance)."""
        dist = (z**2).sum(1, keepdim=True) - 2 * z @ self.codes.T + (self.codes**2).sum(1)  # (M, K)
        return dist.argmin(1)

    def lookup(self, index: Tensor) -> Tensor:
        """(...,) code indices -> (..., d) codes."""
        return F.embedding(index, self.codes)

    @torch.no_grad()
    def ema_update(self, z: Tensor, index: Tensor) -> None:
        """One EMA step from encoder outputs z (M, d) assigned to codes ``index`` (M,)."""
        onehot = F.one_hot(index, self.num_codes).to(z.dtype)  # (M, K)
        counts, sums = onehot.sum(0), onehot.T @ z  # (K,), (K, d)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.code_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (total + self.num_codes * self.epsilon) * total  # (K,)
        self.codes.copy_(self.code_sum / smoothed[:, None])

    @torch.no_grad()
    def reset_to(self, codes: Tensor) -> None:
        """Start from the given codes (K, d), with a pseudo-count of one each."""
        self.codes.copy_(codes)
        self.code_sum.copy_(codes)
        self.cluster_size.fill_(1.0)
