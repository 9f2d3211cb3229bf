"""Building blocks of the RealNVP flow: ActNorm, the affine coupling layer and its masks.

Every layer is a bijection on flat vectors (N, D) with a tractable log-determinant:
``forward(x) -> (y, log|det dy/dx|)`` and ``inverse(y) -> x``. Couplings take an optional
``context`` (N, E) (a class embedding) appended to their conditioner's input.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from zoo_core.nn import mlp

MASKS = ("checkerboard", "half", "random")


def with_context(a: Tensor, context: Tensor | None) -> Tensor:
    """The conditioner's input: a (N, Da), with a context embedding (N, E) appended when given."""
    return a if context is None else torch.cat([a, context.to(a.dtype)], dim=-1)


def coupling_masks(event_shape: Sequence[int], n_couplings: int, kind: str, seed: int) -> list[Tensor]:
    """Binary masks (D,) over the flattened event, one per coupling: 1 = conditioning (kept),
    0 = transformed. Consecutive couplings use a pattern and its complement, so every
    dimension is transformed by every second layer (RealNVP, section 3.4).

    - ``checkerboard``: parity of the sum of the coordinates (index parity for vectors; for 2-D
      data the two coordinates alternate);
    - ``half``: the first half of the flattened vector (the top rows of an image) against the rest;
    - ``random``: a fresh random half for every pair of couplings, from ``seed`` (so it is the
      same on every process and in every checkpoint).
    """
    if kind not in MASKS:
        raise ValueError(f"flow: mask must be one of {list(MASKS)}, got {kind!r}")
    d = math.prod(event_shape)
    gen = torch.Generator().manual_seed(seed)
    masks = []
    for i in range(n_couplings):
        if i % 2 == 0:
            if kind == "checkerboard":
                coords = torch.stack(torch.meshgrid(*[torch.arange(n) for n in event_shape], indexing="ij"))
                base = (coords.sum(0).reshape(-1) % 2 == 0)                 # (D,)
            elif kind == "half":
                base = torch.arange(d) < (d + 1) // 2                       # (D,)
            else:
                base = torch.zeros(d, dtype=torch.bool)
                base[torch.randperm(d, generator=gen)[: (d + 1) // 2]] = True
            masks.append(base)
        else:
            masks.append(~masks[-1])
    return masks


class ActNorm(nn.Module):
    """Per-dimension affine layer y = (x + bias) * exp(log_scale) (Kingma & Dhariwal 2018, Glow).

    Initialised from data (``initialise``) so that its outputs have zero mean and unit variance on
    a batch; afterwards an ordinary learned affine map, identical in train and eval mode (no
    batch statistics). log|det| = sum_d log_scale_d.
    """

    def __init__(self, dims: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(dims))        # (D,)
        self.log_scale = nn.Parameter(torch.zeros(dims))   # (D,)

    @torch.no_grad()
    def initialise(self, x: Tensor, eps: float = 1e-6) -> None:
        """x: (N, D) activations entering this layer."""
        self.bias.copy_(-x.mean(0))
        self.log_scale.copy_(-torch.log(x.std(0) + eps))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = (x + self.bias) * torch.exp(self.log_scale)                      # (N, D)
        return y, self.log_scale.sum().expand(x.shape[0])                    # (N,)

    def inverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(-self.log_scale) - self.bias


class AffineCoupling(nn.Module):
    """RealNVP affine coupling (Dinh, Sohl-Dickstein & Bengio 2017, eq. 4-6) on a flat vector.

    With a = x[mask] (kept) and b = x[~mask] (transformed):

        y_a = a,    y_b = b * exp(s(a)) + t(a),    log|det| = sum s(a),

    where [s_raw, t] = MLP(a) and the log-scale is soft-clamped, s = c * tanh(s_raw / c), so
    |s| < c = ``max_log_scale`` (a smooth bound: the gradient never vanishes abruptly). The last
    layer starts at zero, so every coupling starts as the identity.
    """

    def __init__(self, mask: Tensor, hidden: Sequence[int], activation: str, max_log_scale: float,
                 context_dim: int = 0):
        super().__init__()
        self.register_buffer("cond_idx", torch.nonzero(mask).flatten())        # (Da,)
        self.register_buffer("trans_idx", torch.nonzero(~mask).flatten())      # (Db,)
        da, db = len(self.cond_idx), len(self.trans_idx)
        self.max_log_scale = float(max_log_scale)
        self.net = mlp([da + context_dim, *hidden, 2 * db], activation)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def scale_shift(self, a: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """a: (N, Da), context (N, E) or None -> log-scale s (N, Db), shift t (N, Db), in a's dtype
        even under autocast."""
        s_raw, t = self.net(with_context(a, context)).to(a.dtype).chunk(2, dim=-1)
        c = self.max_log_scale
        return c * torch.tanh(s_raw / c), t

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        a, b = x[:, self.cond_idx], x[:, self.trans_idx]                       # (N, Da), (N, Db)
        s, t = self.scale_shift(a, context)
        y = x.clone()
        y[:, self.trans_idx] = b * torch.exp(s) + t
        return y, s.sum(-1)                                                    # (N, D), (N,)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        a, yb = y[:, self.cond_idx], y[:, self.trans_idx]
        s, t = self.scale_shift(a, context)
        x = y.clone()
        x[:, self.trans_idx] = (yb - t) * torch.exp(-s)
        return x


class Coupling(nn.Module):
    """A coupling layer with an elementwise ``transform`` (affine or rational-quadratic spline;
    Dinh et al. 2017, Durkan et al. 2019) on a flat vector. With a = x[mask], b = x[~mask]:

        y_a = a,    y_b = tau(b; theta(a)),    log|det| = sum_i log|dtau/db_i|,

    where theta(a) (N, Db, P) comes from an MLP whose last layer starts at zero (the identity).
    """

    def __init__(self, mask: Tensor, hidden: Sequence[int], activation: str, transform, context_dim: int = 0):
        super().__init__()
        self.register_buffer("cond_idx", torch.nonzero(mask).flatten())        # (Da,)
        self.register_buffer("trans_idx", torch.nonzero(~mask).flatten())      # (Db,)
        da, db = len(self.cond_idx), len(self.trans_idx)
        self.transform = transform
        self.net = mlp([da + context_dim, *hidden, db * transform.n_params], activation)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def params(self, a: Tensor, context: Tensor | None = None) -> Tensor:
        """a (N, Da), context (N, E) or None -> (N, Db, P), in a's dtype even under autocast."""
        out = self.net(with_context(a, context)).to(a.dtype)
        return out.reshape(len(a), len(self.trans_idx), self.transform.n_params)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        a, b = x[:, self.cond_idx], x[:, self.trans_idx]                       # (N, Da), (N, Db)
        yb, log_det = self.transform(b, self.params(a, context))
        y = x.clone()
        y[:, self.trans_idx] = yb
        return y, log_det.sum(-1)                                              # (N, D), (N,)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        a, yb = y[:, self.cond_idx], y[:, self.trans_idx]
        x = y.clone()
        x[:, self.trans_idx] = self.transform(yb, self.params(a, context), inverse=True)[0]
        return x
