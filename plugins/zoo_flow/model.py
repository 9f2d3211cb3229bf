"""Normalizing flows with an exact likelihood: RealNVP, neural spline flows, MAF and Glow.

References
----------
- L. Dinh, J. Sohl-Dickstein and S. Bengio, "Density estimation using Real NVP", ICLR 2017
  (arXiv:1605.08803).
- D. P. Kingma and P. Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions",
  NeurIPS 2018 (arXiv:1807.03039), for ActNorm and the multiscale steps of flow.
- G. Papamakarios, T. Pavlakou and I. Murray, "Masked Autoregressive Flow for Density
  Estimation", NeurIPS 2017, for the autoregressive layers.
- C. Durkan, A. Bekasov, I. Murray and G. Papamakarios, "Neural Spline Flows", NeurIPS 2019
  (arXiv:1906.04032), for the rational-quadratic spline transforms.

Two options choose the variant: ``transform`` (``affine`` or ``spline``, the elementwise map of
each layer, see ``elementwise``) and ``architecture``:

- ``coupling`` (default): ActNorm + coupling steps on the flattened vector, MLP conditioners
  (with ``transform: affine`` this is RealNVP, the family's original model);
- ``autoregressive``: ActNorm + MADE-conditioned autoregressive steps (MAF with ``affine``,
  NSF-AR with ``spline``), the order reversed in every second step;
- ``multiscale``: for images (C, H, W), the RealNVP/Glow multiscale architecture (``glow``):
  squeeze, steps of ActNorm -> invertible 1x1 convolution -> coupling with a convolutional
  network, half the channels factored out after each level.

An invertible map f = f_K o ... o f_1 takes data x to z = f(x) with a standard normal base
p(z) = N(0, I); by the change of variables

    log p(x) = log N(f(x); 0, I) + sum_k log |det df_k/dh_{k-1}|,

exactly. In the ``coupling`` architecture each step is ActNorm (a per-dimension affine map
initialised from data, so that the likelihood is the same in train and eval mode: no batch
statistics) followed by a coupling layer (``nets.AffineCoupling``, ``nets.Coupling``): half of
the dimensions pass unchanged and condition an MLP that sets the elementwise transform of the
other half; for ``affine`` the log-determinant is the sum of the log-scales, soft-clamped to
(-c, c) by c * tanh(s / c). Consecutive couplings swap the roles of the halves (checkerboard,
half-split or seeded random masks over the flattened vector; for images this is the simple
MLP-coupling variant; ``multiscale`` is the convolutional one). Every conditioner's last layer
starts at zero, so every step starts as the identity.

A class-conditional flow (data with ``conditional: true``) learns an embedding of the labels
(K, E) that is appended to every conditioner's input (as E constant channels for conv nets):
log p(x | y) by the same change of variables, one bijection per class.

Dequantized images (RealNVP section 4.1): pixels x in [0, 1) are first mapped to logit space,

    u = logit(alpha + (1 - 2 alpha) x),   log |du/dx| = sum_d [log(1 - 2 alpha) - log p_d - log(1 - p_d)],

with p = alpha + (1 - 2 alpha) x, and that log-determinant is included, so ``log_prob`` is a
density in pixel space. It is the exact density of the model's samples, whose support is the
box where 0 < p < 1, i.e. x in (-alpha / (1 - 2 alpha), (1 - alpha) / (1 - 2 alpha))^D, slightly
wider than [0, 1]^D; on [0, 1]^D it integrates to less than 1, so the discrete NLL the runner
reports (adding -D log L) remains a valid, slightly loose upper bound. Outside the box it is -inf.
(The looseness is at most -log of that mass: on the flow-digits entry about 60% of samples have
some pixel outside [0, 1] (1.5% of all pixels), i.e. at most ~0.9 nats or 0.02 bits/dim.)
Binarized data are discrete: a flow is no density for them, and the family refuses them.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from zoo_core.errors import ContextError
from zoo_core.model import GenerativeModel, as_sample_shape
from zoo_core.nn import ACTIVATIONS

from .elementwise import TRANSFORMS, make_elementwise
from .glow import MultiscaleFlow
from .made import MaskedAutoregressive, autoregressive_degrees
from .nets import MASKS, ActNorm, AffineCoupling, Coupling, coupling_masks

ARCHITECTURES = ("coupling", "autoregressive", "multiscale")

LOG_2PI = math.log(2 * math.pi)


class Flow(GenerativeModel):
    """Normalizing flows: RealNVP, neural spline flows, MAF / NSF-AR and multiscale Glow.

    RealNVP (Dinh et al. 2017) with ActNorm (Kingma & Dhariwal 2018) by default; spline
    transforms (Durkan et al. 2019), autoregressive layers (Papamakarios et al. 2017) or the
    multiscale Glow architecture (Kingma & Dhariwal 2018) by option.

    Args:
        data, optim: see :class:`GenerativeModel`.
        transform: ``affine`` or ``spline`` (rational-quadratic, ``n_bins`` bins on
            [-tail_bound, tail_bound], identity tails).
        architecture: ``coupling``, ``autoregressive`` or ``multiscale`` (images only).
        n_couplings: number of steps K (coupling: even, so every dimension is transformed equally
            often; multiscale: steps per level).
        hidden: widths of each conditioner's hidden layers (multiscale: channels of the conv net's
            hidden layers).
        activation: one of ``relu``, ``tanh``, ``elu``, ``silu``, ``gelu`` (MLP conditioners).
        mask: ``checkerboard``, ``half`` or ``random`` (see ``nets.coupling_masks``; coupling only).
        max_log_scale: c, the soft bound on each affine log-scale.
        logit_alpha: alpha of the logit transform for dequantized images (RealNVP uses 0.05 on
            natural images; on MNIST 1e-3 trained far better than 0.05 in a short comparison).
        mask_seed: seed of the ``random`` masks.
        display_temperature: T of the base distribution z ~ N(0, T^2 I) for *pictures only*
            (``sample_for_display``; Glow shows T < 1). ``sample`` always uses T = 1.
        n_bins, tail_bound: the spline's K and B.
        n_levels: the number of scales of the multiscale architecture.
        embed_dim: size E of the learned class embedding of a conditional flow (data with
            ``conditional: true``), appended to every conditioner's input; unused otherwise.
    """

    family = "flow"
    likelihood = "exact"
    conditional = True
    samples_marginal = False
    representations = ("dequantized", "continuous")

    def __init__(
        self,
        data: dict,
        optim: dict | None = None,
        n_couplings: int = 8,
        hidden: Sequence[int] = (128, 128),
        activation: str = "relu",
        mask: str = "checkerboard",
        max_log_scale: float = 3.0,
        logit_alpha: float = 1e-3,
        mask_seed: int = 0,
        display_temperature: float = 1.0,
        transform: str = "affine",
        architecture: str = "coupling",
        n_bins: int = 8,
        tail_bound: float = 3.0,
        n_levels: int = 2,
        embed_dim: int = 8,
    ):
        # plain Python types: save_hyperparameters captures these locals (weights_only checkpoints)
        n_couplings, mask_seed, n_bins, n_levels = int(n_couplings), int(mask_seed), int(n_bins), int(n_levels)
        embed_dim = int(embed_dim)
        hidden = [int(h) for h in hidden]
        activation, mask, transform, architecture = str(activation), str(mask), str(transform), str(architecture)
        max_log_scale, logit_alpha, tail_bound = float(max_log_scale), float(logit_alpha), float(tail_bound)
        display_temperature = float(display_temperature)
        super().__init__(data, optim)
        if self.data_spec.representation == "binarized":
            raise ValueError("flow: a normalizing flow is a density of continuous data and cannot model "
                             "binarized (discrete) pixels; use the dequantized representation "
                             "(data: {representation: dequantized})")
        if activation not in ACTIVATIONS:
            raise ValueError(f"flow: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if mask not in MASKS:
            raise ValueError(f"flow: mask must be one of {list(MASKS)}, got {mask!r}")
        if transform not in TRANSFORMS:
            raise ValueError(f"flow: transform must be one of {list(TRANSFORMS)}, got {transform!r}")
        if architecture not in ARCHITECTURES:
            raise ValueError(f"flow: architecture must be one of {list(ARCHITECTURES)}, got {architecture!r}")
        if n_couplings < 1 or (architecture == "coupling" and (n_couplings < 2 or n_couplings % 2)):
            raise ValueError(f"flow: n_couplings must be even and >= 2 for couplings (>= 1 otherwise), "
                             f"got {n_couplings}")
        if not hidden or min(hidden) < 1 or max_log_scale <= 0 or display_temperature <= 0:
            raise ValueError("flow: hidden widths, max_log_scale and display_temperature must be positive")
        if n_bins < 2 or tail_bound <= 0:
            raise ValueError(f"flow: n_bins must be >= 2 and tail_bound positive, got {n_bins}, {tail_bound}")
        if not 0 < logit_alpha < 0.5:
            raise ValueError(f"flow: logit_alpha must lie in (0, 0.5), got {logit_alpha}")
        self.dims = self.data_spec.dims
        if self.dims < 2:
            raise ValueError("flow: coupling layers need data of at least 2 dimensions")
        if architecture == "multiscale" and len(self.event_shape) != 3:
            raise ValueError(f"flow: the multiscale architecture needs images (C, H, W), got event shape "
                             f"{tuple(self.event_shape)}; use architecture: coupling or autoregressive")
        if architecture == "multiscale" and n_levels < 1:
            raise ValueError(f"flow: n_levels must be >= 1, got {n_levels}")
        if self.is_conditional and (self.data_spec.context_shape or not self.num_classes):
            raise ValueError("flow: a conditional flow takes class labels as its context (data with "
                             f"num_classes), got context shape {tuple(self.data_spec.context_shape)}")
        if self.is_conditional and embed_dim < 1:
            raise ValueError(f"flow: embed_dim must be >= 1, got {embed_dim}")
        e = embed_dim if self.is_conditional else 0
        # (K, E) class embedding, or None for an unconditional flow
        self.embedding = nn.Embedding(self.num_classes, e) if e else None
        self.architecture = architecture
        self.logit_alpha = logit_alpha
        self.display_temperature = display_temperature
        self.use_logit = self.data_spec.representation == "dequantized"
        elementwise = make_elementwise(transform, max_log_scale, n_bins, tail_bound)
        if architecture == "multiscale":
            self.multiscale = MultiscaleFlow(self.event_shape, n_levels, n_couplings, hidden, elementwise, e)
            return
        self.actnorms = nn.ModuleList([ActNorm(self.dims) for _ in range(n_couplings)])
        if architecture == "autoregressive":
            self.couplings = nn.ModuleList([MaskedAutoregressive(deg, hidden, activation, elementwise, e)
                                            for deg in autoregressive_degrees(self.dims, n_couplings)])
            return
        masks = coupling_masks(self.event_shape, n_couplings, mask, mask_seed)
        if transform == "affine":  # RealNVP's layer (its parameter names kept for saved checkpoints)
            self.couplings = nn.ModuleList([AffineCoupling(m, hidden, activation, max_log_scale, e) for m in masks])
        else:
            self.couplings = nn.ModuleList([Coupling(m, hidden, activation, elementwise, e) for m in masks])

    # ---- the logit pre-processing of dequantized pixels --------------------------------------------
    def _to_logit(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, D) pixels -> (N, D) logits and (N,) log|du/dx|; -inf where x leaves the support."""
        a = self.logit_alpha
        p = a + (1 - 2 * a) * x                                                   # (N, D)
        valid = (p > 0) & (p < 1)                                                 # (N, D)
        p = torch.where(valid, p, torch.full_like(p, 0.5))  # keeps the logs finite; rows masked below
        inside = valid.all(-1)                                                    # (N,)
        u = torch.log(p) - torch.log1p(-p)                                        # (N, D)
        log_det = (math.log(1 - 2 * a) - torch.log(p) - torch.log1p(-p)).sum(-1)  # (N,)
        return u, torch.where(inside, log_det, torch.full_like(log_det, -math.inf))

    def _from_logit(self, u: Tensor) -> Tensor:
        """The inverse map. sigmoid(u) is kept within [eps, 1 - eps] of its float type, which only
        matters where it would round to exactly 0 or 1 (|u| > 16 in float32): such a sample would
        land on the edge of the support, where log_prob is -inf."""
        a, eps = self.logit_alpha, torch.finfo(u.dtype).eps
        return (torch.sigmoid(u).clamp(eps, 1 - eps) - a) / (1 - 2 * a)

    # ---- the bijection ---------------------------------------------------------------------------
    def _embed(self, context: Tensor | None, n: int) -> Tensor | None:
        """Class labels (*batch,) -> their embeddings (N, E); None for an unconditional flow."""
        if self.embedding is None:
            return None
        if context is None:
            raise ContextError("flow: this flow is conditional; pass the class labels as context")
        return self.embedding(context.reshape(n).to(self.device).long())         # (N, E)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (*batch, *event_shape), labels (*batch,) of a conditional flow -> z (*batch, *event_shape)
        and log|det dz/dx| (*batch,)."""
        batch = self.validate_sample(x)
        h = x.reshape(-1, self.dims).to(self.dtype)                                    # (N, D)
        ctx = self._embed(context, len(h))
        log_det = torch.zeros(h.shape[0], device=h.device, dtype=h.dtype)        # (N,)
        if self.use_logit:
            h, ld = self._to_logit(h)
            log_det = log_det + ld
        if self.architecture == "multiscale":
            h, ld = self.multiscale(h.reshape(-1, *self.event_shape), ctx)
            log_det = log_det + ld
        else:
            for actnorm, coupling in zip(self.actnorms, self.couplings):
                h, ld1 = actnorm(h)
                h, ld2 = coupling(h, ctx)
                log_det = log_det + ld1 + ld2
        return h.reshape(*batch, *self.event_shape), log_det.reshape(batch)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """z (*batch, *event_shape) -> x (*batch, *event_shape), the exact inverse of ``forward``."""
        batch = self.validate_sample(z)
        h = z.reshape(-1, self.dims).to(self.dtype)                                    # (N, D)
        ctx = self._embed(context, len(h))
        if self.architecture == "multiscale":
            h = self.multiscale.inverse(h, ctx).reshape(-1, self.dims)
        else:
            for actnorm, coupling in zip(reversed(self.actnorms), reversed(self.couplings)):
                h = actnorm.inverse(coupling.inverse(h, ctx))
        if self.use_logit:
            h = self._from_logit(h)
        return h.reshape(*batch, *self.event_shape)

    @torch.no_grad()
    def init_from_data(self, x: Tensor) -> None:
        """ActNorm's data-dependent initialisation: push the batch through the flow and set each
        ActNorm so that its output has zero mean and unit variance per dimension. (The batch has no
        labels: a conditional flow passes a zero context, which the zero-initialised last layers of
        the conditioners make irrelevant at this point.)"""
        h = x.reshape(-1, self.dims).to(self.device, self.dtype)                   # (N, D)
        ctx = None if self.embedding is None else h.new_zeros(len(h), self.embedding.embedding_dim)
        if self.use_logit:
            h, _ = self._to_logit(h)
        if self.architecture == "multiscale":
            self.multiscale.initialise(h.reshape(-1, *self.event_shape), ctx)
            return
        for actnorm, coupling in zip(self.actnorms, self.couplings):
            actnorm.initialise(h)
            h, _ = coupling(actnorm(h)[0], ctx)

    # ---- the interface ---------------------------------------------------------------------------
    def _log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """(*batch, *event_shape) -> (*batch,): exact log-density in nats (given the labels, for a
        conditional flow)."""
        z, log_det = self(x, context)
        z = z.reshape(*log_det.shape, self.dims)                                  # (*batch, D)
        return -0.5 * (LOG_2PI + z ** 2).sum(-1) + log_det

    def loss(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Mean negative log-likelihood in nats per example."""
        return -self.log_prob(x, context).mean()

    def _draw(self, shape: torch.Size, temperature: float, context: Tensor | None = None) -> Tensor:
        n = math.prod(shape)
        z = temperature * torch.randn(n, *self.event_shape, device=self.device, dtype=self.dtype)  # (n, *event)
        return self.inverse(z, context).reshape(*shape, *self.event_shape)

    @torch.no_grad()
    def _sample(self, sample_shape: torch.Size, context: Tensor | None = None) -> Tensor:
        """z ~ N(0, I) through the inverse flow. For images the values are the exact inverse, so a
        small fraction may fall just outside [0, 1] (see the module docstring). A conditional flow
        samples given its labels (*sample_shape,)."""
        return self._draw(as_sample_shape(sample_shape), 1.0, context)

    @torch.no_grad()
    def sample_for_display(self, n: int) -> Tensor:
        """Samples at ``display_temperature`` (images clipped to [0, 1]); 2-D data get true samples.
        A conditional flow shows the classes in turn (labels 0, 1, ..., K - 1, 0, ...)."""
        labels = None if self.embedding is None else torch.arange(n, device=self.device) % self.num_classes
        if not self.data_spec.is_image:
            return self.sample((n,), context=labels)
        return self._draw(torch.Size([n]), self.display_temperature, labels).clamp(0.0, 1.0)

    def likelihood_description(self) -> str:
        return "exact log-likelihood (change of variables)"


#: The family's original name: ``Flow`` with its defaults is RealNVP.
RealNVP = Flow
