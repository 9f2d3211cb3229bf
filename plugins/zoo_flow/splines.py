"""Monotone rational-quadratic splines with linear tails, elementwise (Neural Spline Flows).

Reference: C. Durkan, A. Bekasov, I. Murray and G. Papamakarios, "Neural Spline Flows",
NeurIPS 2019 (arXiv:1906.04032), section 3.1 and appendix A.

On [-B, B] the map is a monotone rational-quadratic spline with K bins: knots
(x_k, y_k), k = 0..K, with x_0 = y_0 = -B and x_K = y_K = B, bin widths w_k and heights h_k
(softmax of unnormalised parameters, each at least a minimum), and positive derivatives d_k at the
knots (softplus, at least a minimum; d_0 = d_K = 1 so that the spline joins the identity tails
with a continuous derivative). In bin k, with s_k = h_k / w_k and xi = (x - x_k) / w_k in [0, 1]:

    y = y_k + h_k [s_k xi^2 + d_k xi (1 - xi)] / [s_k + (d_{k+1} + d_k - 2 s_k) xi (1 - xi)],

    dy/dx = s_k^2 [d_{k+1} xi^2 + 2 s_k xi (1 - xi) + d_k (1 - xi)^2]
            / [s_k + (d_{k+1} + d_k - 2 s_k) xi (1 - xi)]^2.

The inverse solves a quadratic a xi^2 + b xi + c = 0 in closed form (appendix A, eq. 29-32), using
the numerically stable root xi = 2c / (-b - sqrt(b^2 - 4ac)). Outside [-B, B] the map is the
identity (log-derivative 0).

The derivative parameters are offset so that all-zero unnormalised parameters give uniform bins
and unit derivatives, i.e. the identity map: a flow whose last layers start at zero starts as
the identity.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

MIN_BIN_WIDTH = 1e-3
MIN_BIN_HEIGHT = 1e-3
MIN_DERIVATIVE = 1e-3


def params_per_dim(n_bins: int) -> int:
    """Unnormalised parameters per transformed dimension: K widths, K heights, K - 1 derivatives."""
    return 3 * n_bins - 1


def _knots(raw: Tensor, bound: float, minimum: float) -> tuple[Tensor, Tensor]:
    """raw (..., K) -> knot positions (..., K + 1) from -bound to bound, and bin sizes (..., K)."""
    k = raw.shape[-1]
    sizes = minimum + (1 - minimum * k) * torch.softmax(raw, dim=-1)          # (..., K), sums to 1
    cum = F.pad(torch.cumsum(sizes, dim=-1), (1, 0), value=0.0)                # (..., K + 1)
    cum = 2 * bound * cum - bound
    cum = torch.cat([torch.full_like(cum[..., :1], -bound), cum[..., 1:-1],
                     torch.full_like(cum[..., :1], bound)], dim=-1)            # exact end points
    return cum, cum[..., 1:] - cum[..., :-1]


def _gather(t: Tensor, idx: Tensor) -> Tensor:
    """t (..., M), idx (...,) -> t[..., idx] of shape (...,)."""
    return t.gather(-1, idx[..., None])[..., 0]


def rational_quadratic_spline(x: Tensor, widths: Tensor, heights: Tensor, derivatives: Tensor,
                              tail_bound: float, inverse: bool = False) -> tuple[Tensor, Tensor]:
    """Apply the spline (or its inverse) elementwise.

    Args:
        x: (...,) inputs (outputs of the forward map when ``inverse``).
        widths, heights: (..., K) unnormalised bin widths and heights.
        derivatives: (..., K - 1) unnormalised derivatives at the interior knots.
        tail_bound: B; the identity outside [-B, B].
    Returns:
        y (...,) and log|dy/dx| (...,), evaluated at the input x of the forward map (so for
        ``inverse`` the log-derivative of the inverse map, -log|dy/dx| at the returned point).
    """
    bound = float(tail_bound)
    offset = math.log(math.expm1(1 - MIN_DERIVATIVE))  # softplus(offset) + min = 1: zero raw -> slope 1
    d_inner = MIN_DERIVATIVE + F.softplus(derivatives + offset)                # (..., K - 1)
    ones = torch.ones_like(d_inner[..., :1])
    d = torch.cat([ones, d_inner, ones], dim=-1)                               # (..., K + 1)
    cum_w, w = _knots(widths, bound, MIN_BIN_WIDTH)                            # (..., K + 1), (..., K)
    cum_h, h = _knots(heights, bound, MIN_BIN_HEIGHT)

    inside = (x >= -bound) & (x <= bound)                                      # (...,)
    xc = x.clamp(-bound, bound)  # the spline branch is evaluated everywhere, then masked
    knots = cum_h if inverse else cum_w
    idx = torch.searchsorted(knots[..., 1:-1].contiguous(), xc[..., None].contiguous(), right=True)[..., 0]
    x_k, w_k = _gather(cum_w, idx), _gather(w, idx)                            # (...,)
    y_k, h_k = _gather(cum_h, idx), _gather(h, idx)
    d_k, d_k1 = _gather(d, idx), _gather(d, idx + 1)
    s_k = h_k / w_k
    curv = d_k1 + d_k - 2 * s_k

    if inverse:
        dy = xc - y_k
        a = h_k * (s_k - d_k) + dy * curv
        b = h_k * d_k - dy * curv
        c = -s_k * dy
        disc = (b ** 2 - 4 * a * c).clamp_min(0.0)
        xi = (2 * c / (-b - torch.sqrt(disc))).clamp(0.0, 1.0)
        out = x_k + xi * w_k
    else:
        xi = ((xc - x_k) / w_k).clamp(0.0, 1.0)
        out = y_k + h_k * (s_k * xi ** 2 + d_k * xi * (1 - xi)) / (s_k + curv * xi * (1 - xi))
    one_minus = 1 - xi
    denom = s_k + curv * xi * one_minus
    log_deriv = (2 * torch.log(s_k) + torch.log(d_k1 * xi ** 2 + 2 * s_k * xi * one_minus + d_k * one_minus ** 2)
                 - 2 * torch.log(denom))                                       # (...,) log dy/dx at xi
    if inverse:
        log_deriv = -log_deriv
    y = torch.where(inside, out, x)
    return y, torch.where(inside, log_deriv, torch.zeros_like(log_deriv))


def split_params(params: Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """params (..., 3K - 1) -> widths (..., K), heights (..., K), derivatives (..., K - 1)."""
    return params[..., :n_bins], params[..., n_bins: 2 * n_bins], params[..., 2 * n_bins:]
