"""Deterministic autoencoder with a Gaussian mixture fitted in its latent space for sampling.

An encoder f maps x to a code z = f(x) and a decoder g maps it back; training minimises the
reconstruction loss:

    binarised data:  L(x) = -sum_d [x_d log g_d(z) + (1 - x_d) log(1 - g_d(z))]   (Bernoulli)
    continuous data: L(x) = 1/2 sum_d (x_d - g_d(z))^2                             (unit Gaussian)

An autoencoder defines no density, so it cannot sample by itself. Following the two-stage idea of
Ghosh et al. 2020 ("From Variational to Deterministic Autoencoders", ex-post density estimation),
a Gaussian mixture from the zoo's ``gmm`` family is fitted by EM to the codes of training data at
the end of every validation epoch (so every checkpoint carries a fitted one); samples are
g(z) with z drawn from that mixture. ``log_prob`` raises ``NoLikelihoodError``.

On labelled data (``data.conditional: true``) the latent density is a mixture per class,
p(z | y) = sum_k pi_{yk} N(z; mu_{yk}, Sigma_{yk}), fitted by EM to the codes of class y, so
``sample(n, context=y)`` decodes z ~ p(z | y): codes of class y decode to examples of class y as far
as the encoder separates the classes. Without a context, z is drawn from sum_y p(y) p(z | y).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

import torch.distributed as dist

from zoo_core.errors import DataError
from zoo_core.model import GenerativeModel, as_sample_shape
from zoo_core.nn import ACTIVATIONS, mlp
from zoo_gmm import GMM

LATENT_FIT_EXAMPLES = 10000


class Autoencoder(GenerativeModel):
    """Deterministic autoencoder + latent Gaussian mixture (ex-post density estimation)."""

    family = "autoencoder"
    likelihood = "none"
    conditional = True
    no_likelihood_alternatives = "reconstruction error and sample-quality metrics (Fréchet distance, precision/recall)"

    def __init__(self, data: dict, optim: dict | None = None, latent_dim: int = 16,
                 hidden: Sequence[int] = (256, 256), activation: str = "relu", latent_components: int = 10):
        latent_dim, latent_components = int(latent_dim), int(latent_components)
        hidden, activation = [int(h) for h in hidden], str(activation)
        super().__init__(data, optim)
        if activation not in ACTIVATIONS:
            raise ValueError(f"autoencoder: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if latent_dim < 1 or latent_components < 1 or not hidden or min(hidden) < 1:
            raise ValueError("autoencoder: latent_dim, latent_components and hidden widths must be positive")
        self.latent_dim = latent_dim
        dims = self.data_spec.dims
        self.encoder = mlp([dims, *hidden, latent_dim], activation)        # (N, D) -> (N, L)
        self.decoder = mlp([latent_dim, *hidden[::-1], dims], activation)  # (N, L) -> (N, D) logits or means
        latent_spec = {"name": "latent", "event_shape": [latent_dim], "representation": "continuous"}
        if self.is_conditional:  # one latent mixture per class
            latent_spec.update(num_classes=self.num_classes, conditional=True)
        self.latent_density = GMM(latent_spec, n_components=latent_components, covariance="full", reg_covar=1e-6)
        self.latent_density.requires_grad_(False)  # fitted by EM, not by the optimiser (and ignored by DDP)

    def encode(self, x: Tensor) -> Tensor:
        """(N, *event_shape) -> (N, L)."""
        return self.encoder(x.reshape(len(x), -1))

    def decode(self, z: Tensor) -> Tensor:
        """(N, L) -> (N, D) Bernoulli logits (binarised data) or means (continuous data)."""
        return self.decoder(z)

    def reconstruction_error(self, x: Tensor) -> Tensor:
        """(N, *event_shape) -> (N,) the reconstruction loss per example (nats for Bernoulli data)."""
        self.validate_sample(x)
        flat = x.reshape(len(x), -1)
        out = self.decode(self.encode(x))
        if self.data_spec.is_binary:
            return F.binary_cross_entropy_with_logits(out, flat, reduction="none").sum(-1)
        return 0.5 * ((out - flat) ** 2).sum(-1)

    def loss(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.reconstruction_error(x).mean()

    @torch.no_grad()
    def reconstruct(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """(N, *event_shape) -> g(f(x)) as a mean: pixel probabilities for binarised data; same shape as x."""
        self.validate_sample(x)
        return self._decoded_mean(self.encode(x)).reshape(x.shape)

    def _log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        raise self.no_likelihood()

    def _decoded_mean(self, z: Tensor) -> Tensor:
        out = self.decode(z)
        return torch.sigmoid(out) if self.data_spec.is_binary else out

    def _sample(self, sample_shape: torch.Size, context: Tensor | None = None) -> Tensor:
        shape = as_sample_shape(sample_shape)
        n = int(torch.tensor(shape).prod()) if len(shape) else 1
        labels = None if context is None else context.reshape(n)             # (n,)
        with torch.no_grad():
            mean = self._decoded_mean(self.latent_density.sample((n,), context=labels))  # (n, D)
            x = torch.bernoulli(mean) if self.data_spec.is_binary else mean
        return x.reshape(*shape, *self.event_shape)

    def sample_for_display(self, n: int) -> Tensor:
        """Decoded means g(z) (pixel probabilities for binarised data), clamped to [0, 1] for images."""
        with torch.no_grad():
            mean = self._decoded_mean(self.latent_density.sample((n,))).reshape(n, *self.event_shape)
        return mean.clamp(0, 1) if self.data_spec.is_image else mean

    # ---- the latent mixture ---------------------------------------------------------------------
    def fit_latent_density(self, x: Tensor, labels: Tensor | None = None, seed: int = 0) -> None:
        """EM fit (``GMM.fit_em``: k-means start, tol 1e-3, at most 100 iterations, reg_covar 1e-6, as
        scikit-learn's defaults) of the latent mixture to the codes of ``x`` (N, *event_shape);
        per class with ``labels`` (N,) for a conditional autoencoder."""
        if self.is_conditional and labels is None:
            raise DataError("autoencoder: the latent mixture of a conditional autoencoder is fitted per class "
                            "and needs the labels of its training examples")
        with torch.no_grad():
            codes = torch.cat([self.encode(chunk) for chunk in x.split(2048)])  # (N, L)
        self.latent_density.init_seed = int(seed)
        with torch.inference_mode(False), torch.no_grad():
            self.latent_density.fit_em(codes.clone(), context=None if labels is None else labels.clone(),
                                       max_iter=100, tol=1e-3)

    def _labelled_training_data(self, datamodule) -> tuple[Tensor, Tensor]:
        """Up to LATENT_FIT_EXAMPLES (x, y) of the training split, gathered over DDP ranks."""
        xs, ys, count = [], [], 0
        for batch in datamodule.eval_dataloader("train"):
            x, y = self.split_batch(batch)
            if y is None:
                raise DataError(f"autoencoder: the training split of dataset '{self.data_spec.name}' yields no "
                                f"labels, needed for the per-class latent mixture")
            xs.append(x.to(self.device))
            ys.append(y.to(self.device))
            count += len(x)
            if count >= LATENT_FIT_EXAMPLES:
                break
        x, y = torch.cat(xs), torch.cat(ys)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts: list = [None] * dist.get_world_size()
            dist.all_gather_object(parts, (x.cpu(), y.cpu()))
            x = torch.cat([p[0] for p in parts]).to(self.device)
            y = torch.cat([p[1] for p in parts]).to(self.device)
        return x[:LATENT_FIT_EXAMPLES], y[:LATENT_FIT_EXAMPLES]

    def on_validation_epoch_end(self) -> None:
        """Refit the latent mixture before checkpoints are written (same data on every rank)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.trainer.sanity_checking or datamodule is None:
            return
        if self.is_conditional:
            x, labels = self._labelled_training_data(datamodule)
        else:
            x, labels = datamodule.eval_data("train")[:LATENT_FIT_EXAMPLES].to(self.device), None
        was_training = self.training
        self.eval()
        self.fit_latent_density(x, labels, seed=int(datamodule.seed))
        self.train(was_training)
