"""Gaussian mixture model fitted by maximum likelihood: closed-form EM or gradient descent.

p(x) = sum_k pi_k N(x; mu_k, Sigma_k),  Sigma_k = L_k L_k^T (full) or diag(sigma_k^2) (diag).

The mixture is the simplest latent-variable model, P(x) = sum_z P(x|z) P(z) with a discrete z;
its likelihood is exact. Parameters are unconstrained (mixture logits, means, the log of the
Cholesky diagonal and its strictly lower triangle) and initialised by k-means on training data,
as scikit-learn's ``GaussianMixture`` does; see Bishop, *Pattern Recognition and Machine
Learning* (2006), ch. 9.

``fit``: ``"em"`` runs expectation-maximisation (Dempster, Laird & Rubin 1977; ``zoo_gmm.em``)
inside the shared Lightning runner: one training epoch is one EM iteration. Each training batch
adds its sufficient statistics (N_k, sum r x, sum r x x^T) to a buffer, the M-step runs after the
epoch's last batch (statistics summed over DDP ranks first; before validation and checkpoints, so
they see the updated mixture; a checkpoint mid-epoch carries the partial sums), and training stops when the mean
training log-likelihood changes by less than ``tol`` (scikit-learn's criterion; ``max_epochs`` is
its ``max_iter``). The initial parameters are the M-step of the k-means hard assignment, as in
scikit-learn. On dequantised or binarised data every epoch draws fresh noise, so each iteration is
a stochastic EM step and the change rarely falls below a small ``tol``: bound ``max_epochs``
instead. Lightning still steps a no-op optimiser once per batch (see
``configure_optimizers``) so that ``global_step`` counts batches. ``"gradient"`` minimises the
NLL with the registry's optimiser.

Label-conditional mixtures (``data.conditional: true``): a block of ``n_components`` components
per class, p(x | y) = sum_k pi_{yk} N(x; mu_{yk}, Sigma_{yk}); without a context, log_prob and
sample use the marginal sum_y p(y) p(x | y) with p(y) the training class frequencies.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

from zoo_core.class_prior import ClassPrior
from zoo_core.errors import DataError
from zoo_core.model import GenerativeModel, as_sample_shape
from zoo_gmm import em

COVARIANCES = ("full", "diag")
FITS = ("em", "gradient")
CHUNK = 16384  # examples per E-step in full-batch fits


class GMM(GenerativeModel):
    """Gaussian mixture (full or diagonal covariances), by EM or gradient descent; label-conditional
    on labelled data (one mixture of ``n_components`` per class)."""

    family = "gmm"
    likelihood = "exact"
    conditional = True
    representations = ("continuous", "dequantized")  # a density: not for binarised pixels

    def __init__(self, data: dict, optim: dict | None = None, n_components: int = 8,
                 covariance: str = "full", reg_covar: float = 1e-6, init_seed: int = 0,
                 fit: str = "gradient", tol: float = 1e-3):
        super().__init__(data, optim)
        if covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
        if fit not in FITS:
            raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
        if n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        if reg_covar < 0 or tol < 0:
            raise ValueError(f"reg_covar and tol must be >= 0, got {reg_covar} and {tol}")
        self.n_components, self.covariance = n_components, covariance
        self.reg_covar, self.init_seed, self.fit, self.tol = float(reg_covar), init_seed, fit, float(tol)
        self.n_classes = int(self.num_classes) if self.is_conditional else 1
        k, d = self.n_classes * n_components, self.data_spec.dims  # k: all components, class-major
        gen = torch.Generator().manual_seed(init_seed)
        self.logits = nn.Parameter(torch.zeros(k))                    # (K,) normalised within each class block
        self.means = nn.Parameter(torch.randn(k, d, generator=gen))  # (K, D)
        self.log_diag = nn.Parameter(torch.zeros(k, d))              # (K, D) log of Cholesky diagonal
        if covariance == "full":
            self.lower = nn.Parameter(torch.zeros(k, d, d))          # (K, D, D) strictly lower part used
        self.register_buffer("_tril_mask", torch.tril(torch.ones(d, d), diagonal=-1), persistent=False)
        self.register_buffer("_component_class", torch.arange(k) // n_components, persistent=False)  # (K,)
        if self.is_conditional:
            self.class_prior = ClassPrior(self.n_classes)
            # labelled k-means happens on the first training batch (the init batch has no labels)
            self.register_buffer("_labelled_init_done", torch.tensor(False))
        self.layout = em.StatsLayout(k, d, covariance == "full")
        if fit == "em":
            self.automatic_optimization = False
            self.register_buffer("_em_stats", self.layout.zeros())                        # this epoch's sums
            # mean log-likelihood of the previous iteration; -inf before the first (NaN would not equal itself)
            self.register_buffer("_em_last_loglik", torch.tensor(float("-inf"), dtype=torch.float64))

    # ---- parameters -----------------------------------------------------------------------------
    def scale_tril(self) -> Tensor:
        """(K, D, D) Cholesky factors L_k with positive diagonal (sqrt(reg_covar) added)."""
        diag = torch.exp(self.log_diag) + math.sqrt(self.reg_covar)
        if self.covariance == "diag":
            return torch.diag_embed(diag)
        return self.lower * self._tril_mask + torch.diag_embed(diag)

    def log_weights(self) -> Tensor:
        """(K,) log pi_k, normalised within each class's block (the whole mixture if unconditional)."""
        return torch.log_softmax(self.logits.view(self.n_classes, self.n_components), dim=-1).reshape(-1)

    def init_from_data(self, x: Tensor) -> None:
        """k-means initialisation (scikit-learn's default for GaussianMixture). A conditional mixture
        is initialised by k-means per class on its first labelled training batch instead."""
        if self.is_conditional:
            return
        self._init_from_assignment(x, self._kmeans(x.reshape(len(x), -1)), em_start=self.fit == "em")

    def _kmeans(self, flat: Tensor) -> Tensor:
        """(N, D) -> (N,) cluster index in [0, n_components) (fewer clusters when N is smaller)."""
        from sklearn.cluster import KMeans

        k = min(self.n_components, len(flat))
        km = KMeans(n_clusters=k, n_init=1, random_state=self.init_seed).fit(flat.double().cpu().numpy())
        return torch.as_tensor(km.labels_, dtype=torch.long, device=flat.device)

    def init_labelled(self, x: Tensor, labels: Tensor, em_start: bool | None = None) -> None:
        """k-means within each class: x (N, *event_shape), labels (N,). A class absent from ``x``
        is initialised from all of ``x``. Under DDP every rank then takes rank 0's parameters."""
        flat = x.reshape(len(x), -1)
        comp = torch.empty(0, dtype=torch.long, device=flat.device)
        rows = []
        for c in range(self.n_classes):
            members = flat[labels == c] if bool((labels == c).any()) else flat
            comp = torch.cat([comp, self._kmeans(members) + c * self.n_components])
            rows.append(members)
        self._init_from_assignment(torch.cat(rows), comp, em_start=self.fit == "em" if em_start is None else em_start)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for p in self.parameters():
                dist.broadcast(p.data, src=0)
        self._labelled_init_done.fill_(True)

    @torch.no_grad()
    def _init_from_assignment(self, x: Tensor, comp: Tensor, em_start: bool) -> None:
        """Parameters from a hard assignment comp (N,) of x (N, D): with ``em_start`` the M-step of
        the one-hot responsibilities (as scikit-learn); otherwise (gradient fits) the clusters' mean
        and unbiased covariance + 1e-3 I."""
        xs = x.reshape(len(x), -1).double()
        k = self.layout.components
        if em_start:
            resp = torch.nn.functional.one_hot(comp, k).double()  # (N, K)
            stats = self.layout.zeros(xs.device)
            em.accumulate(stats, self.layout, xs, resp, torch.zeros(len(xs), dtype=torch.float64))
            self._set_from_m_step(*em.m_step(stats, self.layout, self.reg_covar, self.n_components))
            return
        eye = torch.eye(xs.shape[1], dtype=xs.dtype, device=xs.device)
        for c in range(self.n_classes):
            block = range(c * self.n_components, (c + 1) * self.n_components)
            in_class = sum(int((comp == j).sum()) for j in block)
            for j in block:
                members = xs[comp == j]
                weight = max(len(members), 1) / max(in_class, 1)
                centred = members - members.mean(0) if len(members) > 1 else xs - xs.mean(0)
                cov = centred.T @ centred / max(len(centred) - 1, 1) + 1e-3 * eye
                self.means[j] = members.mean(0) if len(members) else xs.mean(0)
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
        weights, means, covariances = (torch.as_tensor(t, dtype=torch.float64) for t in (weights, means, covariances))
        log_w = torch.log(weights.view(self.n_classes, -1))
        self._set_from_m_step((log_w - torch.logsumexp(log_w, -1, keepdim=True)).reshape(-1), means, covariances)

    @torch.no_grad()
    def _set_from_m_step(self, log_weights: Tensor, means: Tensor, covariances: Tensor) -> None:
        """Write log pi (K,), mu (K, D) and Sigma (K, D, D) or variances (K, D) into the parameters.
        Since Sigma >= reg_covar I, every Cholesky diagonal entry is >= sqrt(reg_covar)."""
        dtype, device = self.means.dtype, self.means.device
        jitter = math.sqrt(self.reg_covar)
        if self.covariance == "full":
            chol = torch.linalg.cholesky(covariances.to(device))       # (K, D, D)
            self.lower.copy_(chol.to(dtype))
            diag = torch.diagonal(chol, dim1=-2, dim2=-1)
        else:
            diag = torch.sqrt(covariances.to(device))                   # (K, D)
        self.log_diag.copy_(torch.log(torch.clamp(diag - jitter, min=1e-30)).to(dtype))
        self.logits.copy_(log_weights.to(device, dtype))
        self.means.copy_(means.to(device, dtype))

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

    def class_log_prob(self, x: Tensor) -> Tensor:
        """(N, D) -> (N, C): log p(x | y = c) for every class (C = 1 for an unconditional mixture)."""
        joint = self.component_log_prob(x) + self.log_weights()             # (N, K)
        return torch.logsumexp(joint.view(len(x), self.n_classes, self.n_components), dim=-1)

    def _log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        batch = self.validate_sample(x)
        flat = x.reshape(-1, self.data_spec.dims).to(self.means.dtype)       # (N, D)
        per_class = self.class_log_prob(flat)                               # (N, C)
        if context is not None:
            out = per_class.gather(1, context.reshape(-1, 1)).squeeze(1)    # (N,) log p(x | y)
        elif self.is_conditional:
            out = torch.logsumexp(per_class + self.class_prior.log_probs().to(per_class), dim=-1)
        else:
            out = per_class[:, 0]
        return out.reshape(batch)

    def _sample(self, sample_shape: torch.Size, context: Tensor | None = None) -> Tensor:
        shape = as_sample_shape(sample_shape)
        n = math.prod(shape)
        with torch.no_grad():
            if self.is_conditional:
                labels = (self.class_prior.sample(torch.Size([n])) if context is None
                          else context.reshape(n)).to(self.means.device)  # (n,)
            else:
                labels = torch.zeros(n, dtype=torch.long, device=self.means.device)
            block = self.logits.view(self.n_classes, self.n_components)[labels]  # (n, K_class)
            idx = labels * self.n_components + torch.distributions.Categorical(logits=block).sample()  # (n,)
            eps = torch.randn(n, self.data_spec.dims, device=self.means.device, dtype=self.means.dtype)
            x = self.means[idx] + (self.scale_tril()[idx] @ eps.unsqueeze(-1)).squeeze(-1)  # (n, D)
        return x.reshape(*shape, *self.event_shape)

    def sample_for_display(self, n: int) -> Tensor:
        x = self.sample((n,))
        return x.clamp(0, 1) if self.data_spec.is_image else x

    def loss(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Mean NLL, -log p(x | y) for a conditional mixture given labels."""
        return -self.log_prob(x, context).mean()

    # ---- EM ---------------------------------------------------------------------------------------
    def e_step(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (N, *event_shape), labels (N,) or None -> (responsibilities (N, K), log p(x_n [| y_n]) (N,))."""
        flat = x.reshape(len(x), -1).to(self.means.dtype)                   # (N, D)
        joint = self.component_log_prob(flat) + self.log_weights()          # (N, K)
        allowed = None if labels is None else self._component_class[None, :] == labels.reshape(-1, 1)
        return em.responsibilities(joint, allowed)

    @torch.no_grad()
    def em_accumulate(self, stats: Tensor, x: Tensor, labels: Tensor | None = None) -> None:
        """E-step on a batch and add its sufficient statistics to ``stats`` (a flat float64 vector)."""
        resp, log_norm = self.e_step(x, labels)
        em.accumulate(stats, self.layout, x.reshape(len(x), -1), resp, log_norm)

    @torch.no_grad()
    def em_update(self, stats: Tensor) -> float:
        """M-step from accumulated statistics; returns the mean log-likelihood they were gathered at."""
        self._set_from_m_step(*em.m_step(stats, self.layout, self.reg_covar, self.n_components))
        return em.mean_log_likelihood(stats, self.layout)

    @torch.no_grad()
    def fit_em(self, x: Tensor, context: Tensor | None = None, max_iter: int = 100, tol: float | None = None,
               init: bool = True) -> list[float]:
        """Full-batch EM on x (N, *event_shape) (labels ``context`` (N,) for a conditional mixture)
        from a k-means start (``init``), until the mean log-likelihood changes by less than ``tol``.
        Returns the mean log-likelihood before each M-step (non-decreasing when reg_covar = 0)."""
        tol = self.tol if tol is None else float(tol)
        if self.is_conditional and context is None:
            raise ValueError("gmm: fit_em of a conditional mixture needs the labels (context=)")
        if init:
            if context is None:
                self._init_from_assignment(x, self._kmeans(x.reshape(len(x), -1)), em_start=True)
            else:
                self.init_labelled(x, context, em_start=True)
        if context is not None:
            self.class_prior.set_counts(torch.bincount(context.long(), minlength=self.n_classes))
        history: list[float] = []
        for _ in range(max_iter):
            stats = self.layout.zeros(self.means.device)
            for i in range(0, len(x), CHUNK):
                self.em_accumulate(stats, x[i:i + CHUNK], None if context is None else context[i:i + CHUNK])
            history.append(self.em_update(stats))
            if len(history) > 1 and abs(history[-1] - history[-2]) < tol:
                break
        return history

    # ---- Lightning --------------------------------------------------------------------------------
    def configure_optimizers(self):
        """EM: plain SGD with learning rate 0 over parameters that never get a gradient, stepped once per
        batch only so that Lightning's ``global_step`` counts batches (``max_steps``, step checkpoints)."""
        if self.fit == "em":
            return torch.optim.SGD(self.parameters(), lr=0.0)
        return super().configure_optimizers()

    #: the gradient fit is the shared training_step (the label counts in on_training_batch), fused or not
    FUSED_STEP_HOOKS_HANDLED = ("training_step",)

    def training_step(self, batch, batch_idx: int):
        if self.fit == "gradient":
            return super().training_step(batch, batch_idx)
        x, labels = self.split_batch(batch)  # EM: never fused (it steps no optimiser by gradient)
        self.on_training_batch(x, labels)
        with torch.no_grad():
            resp, log_norm = self.e_step(x, labels)
        self.check_finite(log_norm, "log-likelihood")
        em.accumulate(self._em_stats, self.layout, x.reshape(len(x), -1), resp, log_norm)
        if batch_idx == 0 or self.logs_this_step():
            self.log("train/loss", -log_norm.mean(), prog_bar=True, on_step=True, on_epoch=False, batch_size=len(x))
        self.optimizers().step()  # counts the batch in global_step; changes nothing (see configure_optimizers)
        if batch_idx + 1 >= self.trainer.num_training_batches:
            self._em_epoch_end()
        return None

    def on_training_batch(self, x: Tensor, labels: Tensor | None) -> None:
        """A conditional mixture counts the batch's labels for its class prior (the first batch also
        starts the mixture)."""
        if not self.is_conditional:
            return
        if labels is None:
            raise DataError(f"gmm: a conditional mixture trains on (x, y) batches; dataset "
                            f"'{self.data_spec.name}' gave batches without labels")
        if not bool(self._labelled_init_done):
            self.init_labelled(x, labels)
        self.class_prior.observe(labels)

    def on_train_epoch_end(self) -> None:
        if self.fit == "em":
            self._em_epoch_end()  # no-op when the last batch already ran the M-step
        if self.is_conditional:
            self.class_prior.commit()

    def _em_epoch_end(self) -> None:
        """Sum the epoch's statistics over ranks, run the M-step, and stop at convergence (|change
        in mean log-likelihood| < tol, as scikit-learn)."""
        stats = self._em_stats.clone()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats)
        self._em_stats.zero_()
        if float(self.layout.split(stats)[-1]) == 0:
            return
        if self.is_conditional:
            self.class_prior.commit()
        loglik = self.em_update(stats)
        last = float(self._em_last_loglik)
        self._em_last_loglik.fill_(loglik)
        self.log("train/em_loglik", loglik, on_step=False, on_epoch=True, batch_size=1)
        if math.isfinite(last) and abs(loglik - last) < self.tol:
            self.trainer.should_stop = True
