"""The multiscale image flow of RealNVP and Glow on (N, C, H, W) tensors.

References:
- L. Dinh, J. Sohl-Dickstein and S. Bengio, "Density estimation using Real NVP", ICLR 2017,
  section 3.6: squeeze (each 2x2x1 patch to 1x1x4), couplings, and half of the channels factored
  out as latents after every scale.
- D. P. Kingma and P. Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions",
  NeurIPS 2018, section 3 and table 1: a step of flow is ActNorm -> invertible 1x1 convolution ->
  affine coupling; the 1x1 convolution is LU-decomposed, W = P L (U + diag(s)), so that
  log|det| = H W sum log|s|.

Each layer maps (N, C, H, W) -> (same, log|det| (N,)) and has an exact ``inverse``; couplings
take an optional context (N, E) (a class embedding), given to their network as E constant channels. The factored
latents are standard normal, as in RealNVP (Glow's learned prior on them is left out).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def squeeze(x: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, 4C, H/2, W/2): each 2x2 patch of a channel becomes 4 channels."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)      # (N, C, 2, 2, H/2, W/2)
    return x.reshape(n, 4 * c, h // 2, w // 2)


def unsqueeze(x: Tensor) -> Tensor:
    """The inverse of ``squeeze``: (N, 4C, H, W) -> (N, C, 2H, 2W)."""
    n, c4, h, w = x.shape
    x = x.reshape(n, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)          # (N, C, H, 2, W, 2)
    return x.reshape(n, c4 // 4, 2 * h, 2 * w)


class ActNorm2d(nn.Module):
    """Per-channel y = (x + b) exp(log_scale), log|det| = H W sum_c log_scale_c (Glow, section 3.1),
    initialised from a batch to zero mean and unit variance per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))

    @torch.no_grad()
    def initialise(self, x: Tensor, eps: float = 1e-6) -> None:
        self.bias.copy_(-x.mean((0, 2, 3), keepdim=True))
        self.log_scale.copy_(-torch.log(x.std((0, 2, 3), keepdim=True) + eps))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        hw = x.shape[2] * x.shape[3]
        return (x + self.bias) * torch.exp(self.log_scale), (hw * self.log_scale.sum()).expand(len(x))

    def inverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(-self.log_scale) - self.bias


class InvConv1x1(nn.Module):
    """Invertible 1x1 convolution with W = P L (U + diag(sign * exp(log_s))) (Glow, section 3.2):
    P a fixed permutation, L unit lower-triangular, U strictly upper-triangular; initialised from a
    random rotation. log|det| = H W sum log_s."""

    def __init__(self, channels: int):
        super().__init__()
        w = torch.linalg.qr(torch.randn(channels, channels))[0]                # (C, C) orthogonal
        p, lower, upper = torch.linalg.lu(w)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(s.abs()))

    def weight(self) -> Tensor:
        eye = torch.eye(len(self.log_s), device=self.log_s.device, dtype=self.log_s.dtype)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm @ lower @ upper                                        # (C, C)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        hw = x.shape[2] * x.shape[3]
        w = self.weight()
        return F.conv2d(x, w[:, :, None, None]), (hw * self.log_s.sum()).expand(len(x))

    def inverse(self, y: Tensor) -> Tensor:
        w_inv = torch.linalg.inv(self.weight())
        return F.conv2d(y, w_inv[:, :, None, None])


def conv_net(c_in: int, hidden: Sequence[int], c_out: int) -> nn.Sequential:
    """Glow's coupling network: 3x3 conv, ReLU, (1x1 conv, ReLU)*, then a zero-initialised 3x3 conv."""
    layers: list[nn.Module] = []
    prev = c_in
    for i, width in enumerate(hidden):
        layers += [nn.Conv2d(prev, width, 3 if i == 0 else 1, padding=1 if i == 0 else 0), nn.ReLU()]
        prev = width
    last = nn.Conv2d(prev, c_out, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


class ConvCoupling(nn.Module):
    """Channel-split coupling: the first half a of the channels passes unchanged and sets, through
    ``conv_net``, the parameters of an elementwise ``transform`` (affine or spline) of the rest."""

    def __init__(self, channels: int, hidden: Sequence[int], transform, context_dim: int = 0):
        super().__init__()
        self.ca = channels // 2
        self.cb = channels - self.ca
        self.transform = transform
        self.net = conv_net(self.ca + context_dim, hidden, self.cb * transform.n_params)

    def params(self, a: Tensor, context: Tensor | None = None) -> Tensor:
        """a (N, Ca, H, W), context (N, E) or None (as E constant channels) -> (N, Cb, H, W, P)."""
        n, _, h, w = a.shape
        if context is not None:
            a = torch.cat([a, context.to(a.dtype)[:, :, None, None].expand(-1, -1, h, w)], 1)
        out = self.net(a).to(a.dtype).reshape(n, self.cb, self.transform.n_params, h, w)
        return out.permute(0, 1, 3, 4, 2)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        a, b = x[:, : self.ca], x[:, self.ca:]
        yb, log_det = self.transform(b, self.params(a, context))
        return torch.cat([a, yb], 1), log_det.flatten(1).sum(-1)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        a, yb = y[:, : self.ca], y[:, self.ca:]
        return torch.cat([a, self.transform(yb, self.params(a, context), inverse=True)[0]], 1)


class FlowStep(nn.Module):
    """ActNorm -> invertible 1x1 convolution -> coupling (Glow, figure 2a)."""

    def __init__(self, channels: int, hidden: Sequence[int], transform, context_dim: int = 0):
        super().__init__()
        self.actnorm = ActNorm2d(channels)
        self.conv = InvConv1x1(channels)
        self.coupling = ConvCoupling(channels, hidden, transform, context_dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x, ld1 = self.actnorm(x)
        x, ld2 = self.conv(x)
        x, ld3 = self.coupling(x, context)
        return x, ld1 + ld2 + ld3

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        return self.actnorm.inverse(self.conv.inverse(self.coupling.inverse(y, context)))

    @torch.no_grad()
    def initialise(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        self.actnorm.initialise(x)
        return self(x, context)[0]


class MultiscaleFlow(nn.Module):
    """L levels of [squeeze, K steps, factor out half the channels] (no factoring after the last).

    ``forward`` maps (N, C, H, W) to the latents (N, C H W) (factored parts first, level by level,
    then the last level's output) and log|det| (N,); ``inverse`` undoes it exactly."""

    def __init__(self, event_shape: Sequence[int], n_levels: int, steps_per_level: int,
                 hidden: Sequence[int], transform, context_dim: int = 0):
        super().__init__()
        c, h, w = event_shape
        if h % (2 ** n_levels) or w % (2 ** n_levels):
            raise ValueError(f"flow: a multiscale flow with n_levels={n_levels} needs height and width "
                             f"divisible by {2 ** n_levels}, got {h}x{w}")
        self.levels = nn.ModuleList()
        self.shapes: list[tuple[int, int, int]] = []  # the shape each level works on
        for level in range(n_levels):
            c, h, w = 4 * c, h // 2, w // 2
            self.shapes.append((c, h, w))
            self.levels.append(nn.ModuleList([FlowStep(c, hidden, transform, context_dim)
                                              for _ in range(steps_per_level)]))
            if level < n_levels - 1:
                c = c // 2

    def _split(self, level: int) -> bool:
        return level < len(self.levels) - 1

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        log_det = torch.zeros(len(x), device=x.device, dtype=x.dtype)          # (N,)
        latents = []
        h = x
        for level, steps in enumerate(self.levels):
            h = squeeze(h)
            for step in steps:
                h, ld = step(h, context)
                log_det = log_det + ld
            if self._split(level):
                half = h.shape[1] // 2
                latents.append(h[:, :half].flatten(1))
                h = h[:, half:]
        latents.append(h.flatten(1))
        return torch.cat(latents, 1), log_det                                 # (N, D), (N,)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        n = len(z)
        sizes = []
        for level, (c, h, w) in enumerate(self.shapes):
            sizes.append((c // 2 if self._split(level) else c) * h * w)
        parts = list(z.split(sizes, dim=1))
        c, hh, ww = self.shapes[-1]
        h = parts[-1].reshape(n, c, hh, ww)
        for level in reversed(range(len(self.levels))):
            c, hh, ww = self.shapes[level]
            if self._split(level):
                h = torch.cat([parts[level].reshape(n, c // 2, hh, ww), h], 1)
            for step in reversed(self.levels[level]):
                h = step.inverse(h, context)
            h = unsqueeze(h)
        return h

    @torch.no_grad()
    def initialise(self, x: Tensor, context: Tensor | None = None) -> None:
        h = x
        for level, steps in enumerate(self.levels):
            h = squeeze(h)
            for step in steps:
                h = step.initialise(h, context)
            if self._split(level):
                h = h[:, h.shape[1] // 2:]
