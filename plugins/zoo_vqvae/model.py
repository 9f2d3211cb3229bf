"""VQ-VAE: an autoencoder with a discrete code grid, EMA codebook and a learned PixelCNN prior.

A. van den Oord, O. Vinyals and K. Kavukcuoglu, "Neural Discrete Representation Learning",
NeurIPS 2017 (arXiv:1711.00937).

A convolutional encoder maps an image x to a grid z_e(x) of d-vectors (h x w positions); each is
replaced by its nearest codebook vector, giving code indices z_q(x) in {0..K-1}^(h x w) (see
``codebook``); a convolutional decoder gives p(x | z). Training minimises, per example,

    -log p(x | z_q(x)) + beta ||z_e(x) - sg[e_{z_q(x)}]||^2      (beta = 0.25, the commitment loss)

with the straight-through estimator (the decoder's gradient with respect to the quantised
vectors is copied onto z_e), while the codes follow their assigned encoder outputs by
exponential moving averages (decay 0.99, Laplace smoothing), so the codebook term of the
paper's loss is not needed. The second stage, a categorical PixelCNN prior p(z) over the code
grid (``prior``), is trained in the same fit on the detached codes, -log p(z_q(x)), from step
``prior_warmup_steps`` on; no gradient flows from the prior into the autoencoder.

Likelihood (``likelihood = "bound"``): the encoder is deterministic, so q(z|x) is a point mass
on z_q(x) and the ELBO is a one-point bound,

    log p(x) = log sum_z p(x|z) p(z) >= E_q[log p(x|z)] - KL(q(z|x) || p(z))
             = log p(x | z_q(x)) + log p(z_q(x)),

(the point mass has zero entropy, so KL = -log p(z_q)). It holds for any encoder, and equals
log p(x) only if one code grid carries all of p(x)'s mass. ``log_prob`` returns it, exactly (no
Monte Carlo). ``reference_log_prob`` enumerates every code grid when K^(h w) is small, giving
the exact log p(x) that the bound must not exceed.

Decoder by data representation: ``binarized``, independent Bernoulli pixels with logits;
``dequantized``, a diagonal Gaussian density on [0, 1]^D per pixel whose log-variance is squashed
smoothly into [-7, 2] (its mass outside [0, 1] only loosens the bound; the runner adds -D log L).
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo_core.errors import ConfigError
from zoo_core.model import GenerativeModel, as_sample_shape, gaussian_log_prob

from . import nets
from .codebook import EMACodebook
from .prior import CodePixelCNN

LOG_VAR_MIN, LOG_VAR_MAX = -7.0, 2.0
#: the most code grids ``reference_log_prob`` enumerates
MAX_ENUMERATED_GRIDS = 4096
INIT_SEED = 1234


class VQVAE(GenerativeModel):
    """VQ-VAE (van den Oord et al. 2017) with an EMA codebook and a categorical PixelCNN prior.

    Args:
        data, optim: see :class:`GenerativeModel`.
        channels: feature maps of the encoder and decoder.
        downsample: stride-2 convolutions of the encoder (the code grid is H / 2^s x W / 2^s).
        n_res: residual blocks in the encoder and in the decoder.
        num_codes: K, the codebook size.
        code_dim: d, the dimension of each code vector.
        commitment: beta of the commitment loss.
        decay: gamma of the codebook's moving averages.
        epsilon: Laplace smoothing of the codebook's counts.
        prior_channels, prior_layers, prior_kernel: the PixelCNN prior's feature maps, residual
            blocks and first (type-A) kernel size.
        prior_warmup_steps: training steps of the autoencoder alone before the prior's loss joins.
    """

    family = "vqvae"
    likelihood = "bound"
    representations = ("binarized", "dequantized")
    event_ranks = (3,)

    def __init__(
        self,
        data: dict,
        optim: dict | None = None,
        channels: int = 64,
        downsample: int = 2,
        n_res: int = 1,
        num_codes: int = 64,
        code_dim: int = 16,
        commitment: float = 0.25,
        decay: float = 0.99,
        epsilon: float = 1e-5,
        prior_channels: int = 64,
        prior_layers: int = 4,
        prior_kernel: int = 5,
        prior_warmup_steps: int = 0,
    ):
        channels, downsample, n_res, num_codes, code_dim = map(int, (channels, downsample, n_res, num_codes, code_dim))
        commitment, decay, epsilon = float(commitment), float(decay), float(epsilon)
        prior_channels, prior_layers, prior_kernel = int(prior_channels), int(prior_layers), int(prior_kernel)
        prior_warmup_steps = int(prior_warmup_steps)
        super().__init__(data, optim)
        spec = self.data_spec
        if not spec.is_image or spec.representation not in self.representations:
            raise ConfigError(f"vqvae: models {'/'.join(self.representations)} images (C, H, W); got "
                              f"{spec.representation} data of shape {tuple(spec.event_shape)}")
        C, H, W = spec.event_shape
        if downsample < 0 or H % 2**downsample or W % 2**downsample:
            raise ConfigError(f"vqvae: model.downsample = {downsample} must halve the image size "
                              f"{H}x{W} exactly that many times")
        if min(channels, num_codes, code_dim, prior_channels) < 1 or n_res < 0 or prior_layers < 0:
            raise ConfigError("vqvae: channels, num_codes, code_dim and prior_channels must be positive, "
                              "n_res and prior_layers non-negative")
        if not 0 < decay < 1 or epsilon <= 0 or commitment < 0:
            raise ConfigError(f"vqvae: need 0 < decay < 1, epsilon > 0, commitment >= 0; got decay {decay}, "
                              f"epsilon {epsilon}, commitment {commitment}")
        if prior_kernel < 1 or prior_kernel % 2 == 0:
            raise ConfigError(f"vqvae: model.prior_kernel must be odd, got {prior_kernel}")
        self.commitment = commitment
        self.prior_warmup_steps = prior_warmup_steps
        self.gaussian_decoder = not spec.is_binary
        self.grid = (H // 2**downsample, W // 2**downsample)  # (h, w)
        self.encoder = nets.encoder(C, channels, downsample, n_res, code_dim)
        self.decoder = nets.decoder(code_dim, channels, downsample, n_res, (2 if self.gaussian_decoder else 1) * C)
        self.codebook = EMACodebook(num_codes, code_dim, decay, epsilon)
        self.prior = CodePixelCNN(num_codes, prior_channels, prior_layers, prior_kernel)

    # ---- the autoencoder ----------------------------------------------------------------------------
    def _check(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        """(*batch, C, H, W) -> (N, C, H, W) in the model's dtype, and the batch shape."""
        batch = self.validate_sample(x)
        return x.reshape(-1, *self.event_shape).to(self.dtype), batch

    def encode(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> z_e (N, d, h, w); pixels enter as 2x - 1."""
        return self.encoder(2 * x - 1)

    def quantize(self, z_e: Tensor) -> Tensor:
        """z_e (N, d, h, w) -> code indices (N, h, w) of the nearest codes."""
        N, d, h, w = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)  # (N h w, d)
        return self.codebook.assign(flat).reshape(N, h, w)

    def code_vectors(self, codes: Tensor) -> Tensor:
        """(N, h, w) indices -> (N, d, h, w) code vectors."""
        return self.codebook.lookup(codes).permute(0, 3, 1, 2)

    def decode(self, z_q: Tensor) -> tuple[Tensor, Tensor | None]:
        """(N, d, h, w) -> (Bernoulli logits (N, C, H, W), None) or (Gaussian mean, log-variance)."""
        out = self.decoder(z_q)
        if not self.gaussian_decoder:
            return out, None
        mean, raw = out.chunk(2, dim=1)
        return mean, LOG_VAR_MIN + (LOG_VAR_MAX - LOG_VAR_MIN) * torch.sigmoid(raw)

    def decoder_log_prob(self, x: Tensor, z_q: Tensor) -> Tensor:
        """log p(x | z): x (N, C, H, W), code vectors (N, d, h, w) -> (N,)."""
        a, log_var = self.decode(z_q)
        if log_var is None:
            return -F.binary_cross_entropy_with_logits(a, x, reduction="none").flatten(1).sum(1)
        return gaussian_log_prob(x, a, log_var).flatten(1).sum(1)

    def prior_active(self) -> bool:
        """Whether the prior's loss is part of this training step (after the warm-up)."""
        return int(self.global_step) >= self.prior_warmup_steps

    # ---- the interface --------------------------------------------------------------------------------
    def loss(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Mean over the batch of -log p(x|z_q) + beta ||z_e - sg[z_q]||^2 (straight-through), plus
        -log p(sg[z_q]) of the prior once it is active. In training mode, one EMA codebook step."""
        x, _ = self._check(x)  # (N, C, H, W)
        z_e = self.encode(x)  # (N, d, h, w)
        codes = self.quantize(z_e.detach())  # (N, h, w)
        z_q = self.code_vectors(codes)  # (N, d, h, w), no gradient (buffers)
        if self.training and torch.is_grad_enabled():
            N, d = z_e.shape[:2]
            self.codebook.ema_update(z_e.detach().permute(0, 2, 3, 1).reshape(-1, d), codes.reshape(-1))
        z_st = z_e + (z_q - z_e).detach()  # straight-through: the value of z_q, the gradient of z_e
        rec = self.decoder_log_prob(x, z_st)  # (N,)
        commit = self.commitment * ((z_e - z_q) ** 2).flatten(1).sum(1)  # (N,)
        loss = commit - rec
        if self.prior_active():
            loss = loss - self.prior.log_prob(codes)  # codes are integers: no gradient to the encoder
        return loss.mean()

    def _log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """(*batch, C, H, W) -> (*batch,): the one-point bound log p(x|z_q(x)) + log p(z_q(x))."""
        x, batch = self._check(x)
        codes = self.quantize(self.encode(x))  # (N, h, w)
        bound = self.decoder_log_prob(x, self.code_vectors(codes)) + self.prior.log_prob(codes)  # (N,)
        return bound.reshape(batch)

    def _sample(self, sample_shape: torch.Size, context: Tensor | None = None) -> Tensor:
        """z ~ p(z) (the PixelCNN prior, h w passes), then x ~ p(x|z): Bernoulli or Gaussian draws."""
        shape = as_sample_shape(sample_shape)
        n = math.prod(shape)
        a, log_var = self.decode(self.code_vectors(self.prior.sample(n, *self.grid, self.device)))
        x = torch.bernoulli(torch.sigmoid(a)) if log_var is None else a + torch.exp(0.5 * log_var) * torch.randn_like(a)
        return x.reshape(*shape, *self.event_shape)

    def sample_for_display(self, n: int) -> Tensor:
        """Decoder means (Bernoulli probabilities, or Gaussian means clipped to [0, 1]) of z ~ p(z)."""
        with torch.no_grad():
            a, log_var = self.decode(self.code_vectors(self.prior.sample(n, *self.grid, self.device)))
        return torch.sigmoid(a) if log_var is None else a.clamp(0.0, 1.0)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """(N, C, H, W) -> the decoder mean at z_q(x): Bernoulli probabilities or Gaussian means."""
        x, batch = self._check(x)
        a, log_var = self.decode(self.code_vectors(self.quantize(self.encode(x))))
        return (torch.sigmoid(a) if log_var is None else a).reshape(*batch, *self.event_shape)

    def likelihood_description(self) -> str:
        h, w = self.grid
        return (f"one-point ELBO log p(x|z_q(x)) + log p(z_q(x)) (deterministic encoder, {h}x{w} codes of "
                f"K={self.codebook.num_codes}, PixelCNN prior)")

    def init_from_data(self, x: Tensor) -> None:
        """Start the codebook at K encoder outputs of the batch, drawn without replacement where
        there are enough (seeded), so that no code starts far from the data."""
        with torch.no_grad():
            z_e = self.encode(x.to(self.dtype))  # (N, d, h, w)
            flat = z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])  # (M, d)
            K = self.codebook.num_codes
            gen = torch.Generator().manual_seed(INIT_SEED)
            pick = (torch.randperm(len(flat), generator=gen)[:K] if len(flat) >= K
                    else torch.randint(len(flat), (K,), generator=gen))
            self.codebook.reset_to(flat[pick.to(flat.device)])

    @torch.no_grad()
    def reference_log_prob(self, x: Tensor) -> Tensor | None:
        """Exact log p(x) = logsumexp_z [log p(x|z) + log p(z)] over all K^(h w) code grids, when
        there are at most MAX_ENUMERATED_GRIDS of them; None otherwise. In float64 at the end."""
        h, w = self.grid
        K = self.codebook.num_codes
        if K ** (h * w) > MAX_ENUMERATED_GRIDS:
            return None
        x, batch = self._check(x)
        grids = torch.tensor(list(itertools.product(range(K), repeat=h * w)), device=self.device).reshape(-1, h, w)
        log_prior = self.prior.log_prob(grids).double()  # (G,)
        a, log_var = self.decode(self.code_vectors(grids))  # (G, C, H, W)
        xf, af = x.flatten(1).double(), a.flatten(1).double()  # (N, D), (G, D)
        if log_var is None:
            log_lik = xf @ af.T - F.softplus(af).sum(1)  # (N, G)
        else:
            prec = torch.exp(-log_var.flatten(1).double())  # (G, D)
            sq = (xf**2) @ prec.T - 2 * xf @ (af * prec).T + (af**2 * prec).sum(1)  # (N, G)
            log_lik = -0.5 * (xf.shape[1] * math.log(2 * math.pi) + log_var.flatten(1).double().sum(1) + sq)
        return torch.logsumexp(log_lik + log_prior, dim=1).to(self.dtype).reshape(batch)
