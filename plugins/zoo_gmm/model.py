"""Gaussian mixture model fitted by maximum likelihood with gradient descent.

p(x) = sum_k pi_k N(x; mu_k, Sigma_k),  Sigma_k = L_k L_k^T (full) or diag(sigma_k^2) (diag).

The mixture is the simplest latent-variable model, P(x) = sum_z P(x|z) P(z) with a discrete z;
its likelihood is exact. Parameters are unconstrained (mixture logits, means, the log of the
Cholesky diagonal and its strictly lower triangle) and initialised by k-means on training data,
as scikit-learn's ``GaussianMixture`` does; see Bishop, *Pattern Recognition and Machine
Learning* (2006), ch. 9.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from zoo_core.model import GenerativeModel, as_sample_shape

COVARIANCES = ("full", "diag")


class GMM(GenerativeModel):
    """Gaussian mixture (full or diagonal covariances), maximum likelihood by gradient descent."""

    family = "gmm"
    likelihood = "exact"

    def __init__(self, data: dict, optim: dict | None = None, n_components: int = 8,
                 covariance: str = "full", reg_covar: float = 1e-6, init_seed: int = 0):
        super().__init__(data, optim)
        if covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
        if n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        self.n_components, self.covariance = n_components, covariance
        self.reg_covar, self.init_seed = reg_covar, init_seed
        k, d = n_components, self.data_spec.dims
        gen = torch.Generator().manual_seed(init_seed)
        self.logits = nn.Parameter(torch.zeros(k))                    # (K,)
        self.means = nn.Parameter(torch.randn(k, d, generator=gen))  # (K, D)
        self.log_diag = nn.Parameter(torch.zeros(k, d))              # (K, D) log of Cholesky diagonal
        if covariance == "full":
            self.lower = nn.Parameter(torch.zeros(k, d, d))          # (K, D, D) strictly lower part used
        self.register_buffer("_tril_mask", torch.tril(torch.ones(d, d), diagonal=-1), persistent=False)

    # ---- parameters -----------------------------------------------------------------------------
    def scale_tril(self) -> Tensor:
        """(K, D, D) Cholesky factors L_k with positive diagonal (sqrt(reg_covar) added)."""
        diag = torch.exp(self.log_diag) + math.sqrt(self.reg_covar)
        if self.covariance == "diag":
            return torch.diag_embed(diag)
        return self.lower * self._tril_mask + torch.diag_embed(diag)

    def init_from_data(self, x: Tensor) -> None:
        """k-means initialisation (scikit-learn's default for GaussianMixture)."""
        from sklearn.cluster import KMeans

        flat = x.reshape(len(x), -1).double().cpu().numpy()  # (N, D)
        k = min(self.n_components, len(flat))
        km = KMeans(n_clusters=k, n_init=1, random_state=self.init_seed).fit(flat)
        xs = torch.as_tensor(flat)
        labels = torch.as_tensor(km.labels_)
        with torch.no_grad():
            for j in range(k):
                members = xs[labels == j]
                weight = max(len(members), 1) / len(xs)
                centred = members - members.mean(0) if len(members) > 1 else xs - xs.mean(0)
                cov = centred.T @ centred / max(len(centred) - 1, 1) + 1e-3 * torch.eye(xs.shape[1], dtype=xs.dtype)
                self.means[j] = torch.as_tensor(km.cluster_centers_[j])
                self.logits[j] = math.log(weight)
                if self.covariance == "full":
                    chol = torch.linalg.cholesky(cov)
                    self.log_diag[j] = torch.log(torch.diagonal(chol))
                    self.lower[j] = chol
                else:
                    self.log_diag[j] = 0.5 * torch.log(torch.diagonal(cov))

    def set_mixture(self, weights: Tensor, means: Tensor, covariances: Tensor) -> None:
        """Set the parameters from a fitted mixture: weights (K,), means (K, D), and covariances
        (K, D, D) for "full" or (K, D) variances for "diag" (e.g. scikit-learn's EM result)."""
        weights, means, covariances = (torch.as_tensor(t, dtype=self.means.dtype) for t in (weights, means, covariances))
        jitter = math.sqrt(self.reg_covar)
        with torch.no_grad():
            self.logits.copy_(torch.log(weights))
            self.means.copy_(means)
            if self.covariance == "full":
                chol = torch.linalg.cholesky(covariances)                   # (K, D, D)
                self.lower.copy_(chol)
                diag = torch.diagonal(chol, dim1=-2, dim2=-1)
            else:
                diag = torch.sqrt(covariances)                              # (K, D)
            self.log_diag.copy_(torch.log(torch.clamp(diag - jitter, min=1e-12)))

    # ---- the interface --------------------------------------------------------------------------
    def component_log_prob(self, x: Tensor) -> Tensor:
        """(N, D) -> (N, K): log N(x; mu_k, Sigma_k) via a triangular solve."""
        d = x.shape[-1]
        if self.covariance == "diag":
            # sum_d (x_d - mu_kd)^2 / s_kd^2 expanded into matrix products: no (N, K, D) tensor
            std = torch.exp(self.log_diag) + math.sqrt(self.reg_covar)      # (K, D)
            precision = std ** -2                                            # (K, D)
            maha = (x ** 2) @ precision.T - 2 * x @ (self.means * precision).T \
                + (self.means ** 2 * precision).sum(-1)                      # (N, K)
            log_det = torch.log(std).sum(-1)                                 # (K,)
        else:
            scale = self.scale_tril()                                        # (K, D, D)
            diff = (x.unsqueeze(1) - self.means).permute(1, 2, 0)            # (K, D, N)
            z = torch.linalg.solve_triangular(scale, diff, upper=False)      # (K, D, N)
            maha = (z ** 2).sum(1).T                                         # (N, K)
            log_det = torch.log(torch.diagonal(scale, dim1=-2, dim2=-1)).sum(-1)  # (K,)
        return -0.5 * maha - log_det - 0.5 * d * math.log(2 * math.pi)

    def _log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        batch = self.validate_sample(x)
        flat = x.reshape(-1, self.data_spec.dims).to(self.means.dtype)       # (N, D)
        log_weights = torch.log_softmax(self.logits, dim=0)                  # (K,)
        out = torch.logsumexp(self.component_log_prob(flat) + log_weights, dim=-1)  # (N,)
        return out.reshape(batch)

    def _sample(self, sample_shape: torch.Size, context: Tensor | None = None) -> Tensor:
        shape = as_sample_shape(sample_shape)
        n = math.prod(shape)
        with torch.no_grad():
            idx = torch.distributions.Categorical(logits=self.logits).sample((n,))  # (n,)
            eps = torch.randn(n, self.data_spec.dims, device=self.means.device, dtype=self.means.dtype)
            x = self.means[idx] + (self.scale_tril()[idx] @ eps.unsqueeze(-1)).squeeze(-1)  # (n, D)
        return x.reshape(*shape, *self.event_shape)

    def sample_for_display(self, n: int) -> Tensor:
        x = self.sample((n,))
        return x.clamp(0, 1) if self.data_spec.is_image else x

    def loss(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return -self.log_prob(x).mean()
