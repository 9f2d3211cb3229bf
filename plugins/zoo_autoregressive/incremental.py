"""Incremental evaluation of the autoregressive networks for ancestral sampling.

Sampling draws x_{o(1)}, ..., x_{o(D)} one at a time; the naive way runs the whole network once
per dimension (D full passes). Every hidden unit of these networks, however, depends only on
the dimensions before some position, so it becomes final once those are drawn and never
changes afterwards. The samplers here compute each unit once, at the step where it becomes
final, and keep it (the idea of P. Ramachandran, T. L. Paine et al. 2017, "Fast Generation for
Convolutional Autoregressive Models", applied to the three networks of this family):

- MADE (Germain et al. 2015): a hidden unit of degree m sees the inputs at positions <= m, so
  at step t (drawing the dimension at position t) only the units of degree t - 1 are new; the
  output for step t needs only its own P rows. The D steps together cost one forward pass
  (less: only the connections the masks allow are multiplied).
- PixelCNN (masked convolutions): a feature at pixel (i, j) in any layer sees only pixels before
  (i, j), so it is computed once, when (i, j) is next: per step one k x k window per layer.
- Gated PixelCNN: the vertical stack of row i also sees row i's later pixels, but the
  horizontal stack only receives it shifted down one row, so the vertical stack of row i - 1 is
  computed once when row i starts (one row per layer) and the horizontal stack one pixel per
  layer per step.

Each sampler exposes ``params(d) -> (n, P)`` (the conditional parameters of flattened dimension
d, to be called in the model's ordering) and ``set(d, value)`` (the value drawn for d, (n,)).
The results equal the full network's up to floating-point rounding (the tests check it).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .gated import GatedPixelCNNNet, gate
from .nets import MADENet, PixelCNNNet


def _bias(bias: Tensor, embedding, y: Tensor | None) -> Tensor:
    """(1, C) bias, or (n, C) with the per-class bias of labels y added."""
    if embedding is None or y is None:
        return bias[None]
    return bias[None] + embedding(y)


class MADESteps:
    """MADE under mask k, one degree group of hidden units per step.

    Everything is kept in sampling order: the inputs by position (column t - 1 holds the
    dimension at position t) and each layer's units sorted by degree, so the units of degree g
    are one contiguous block and see only a leading block of the layer below (the units of
    degree <= g, or the inputs at positions <= g): per step, one small matrix product per layer
    on exactly the connections the masks allow."""

    def __init__(self, net: MADENet, k: int, n: int, to_input: Callable[[Tensor], Tensor],
                 y: Tensor | None = None):
        weight = net.out.weight
        dtype, device = weight.dtype, weight.device
        hidden_masks, out_mask, direct_mask = net.masks(k, device)
        degrees = [m.to(device) for m in net._degrees[k]]  # [order (D,), m^1 (H_1,), ..., m^L (H_L,)]
        D, P = net.D, net.P
        self.to_input = to_input
        self.position = (degrees[0] - 1).tolist()  # column of each dimension in the sorted inputs
        self.x = torch.zeros(n, D, dtype=dtype, device=device)  # (n, D) net inputs by position
        perm = torch.argsort(degrees[0])  # dimensions by position
        below = degrees[0][perm]  # (D,) sorted degrees (positions) of the layer below
        # per layer: hidden state (n, H_l) sorted by degree, {g: (start, end, lead, weight (|g|, lead), bias)}
        self.h, self.groups = [], []
        for l, (layer, mask) in enumerate(zip(net.layers, hidden_masks)):
            order_l = torch.argsort(degrees[l + 1], stable=True)
            deg = degrees[l + 1][order_l]  # (H_l,) sorted
            w = (layer.weight * mask.to(dtype))[order_l][:, perm]  # (H_l, H_{l-1}), both sorted
            b = _bias(layer.bias, net.class_hidden[l] if net.class_hidden is not None else None, y)[:, order_l]
            gs = deg.unique()  # (G,) degrees present
            starts = torch.searchsorted(deg, gs).tolist()
            ends = torch.searchsorted(deg, gs, right=True).tolist()
            leads = torch.searchsorted(below, gs, right=True).tolist()  # units below of degree <= g
            groups = {g: (s, e, lead, w[s:e, :lead].contiguous(), b[:, s:e])
                      for g, s, e, lead in zip(gs.tolist(), starts, ends, leads)}
            self.groups.append(groups)
            self.h.append(torch.zeros(n, len(deg), dtype=dtype, device=device))
            perm, below = order_l, deg
        out_w = (weight * out_mask.to(dtype)).reshape(D, P, -1)[:, :, perm]  # (D, P, H_L) sorted
        self.out = []  # per dimension: (lead, weight (P, lead), bias (1|n, P), t, direct weight (P, t))
        out_b = _bias(net.out.bias, net.class_out, y).reshape(-1, D, P)  # (1|n, D, P)
        direct_w = None
        if net.direct is not None:
            direct_w = (net.direct.weight * direct_mask.to(dtype)).reshape(D, P, D)[:, :, torch.argsort(degrees[0])]  # by position
        leads = torch.searchsorted(below, degrees[0]).tolist()  # hidden units of degree < position
        for d, (t, lead) in enumerate(zip(self.position, leads)):  # the inputs before d: columns < t
            direct = direct_w[d, :, :t].contiguous() if direct_w is not None else None  # (P, t)
            self.out.append((lead, out_w[d, :, :lead].contiguous(), out_b[:, d], t, direct))

    def params(self, d: int) -> Tensor:
        """(n, P) parameters of p(x_d | x before d): first the hidden units that became final."""
        g = self.position[d]  # units of degree t - 1 see exactly the inputs drawn so far
        prev = self.x
        for groups, h in zip(self.groups, self.h):
            if g in groups:
                s, e, lead, w, b = groups[g]
                h[:, s:e] = F.relu(F.linear(prev[:, :lead], w) + b)
            prev = h
        lead, w, b, t, direct = self.out[d]
        out = F.linear(prev[:, :lead], w) + b  # (n, P)
        if direct is not None:
            out = out + F.linear(self.x[:, :t], direct)
        return out

    def set(self, d: int, value: Tensor) -> None:
        self.x[:, self.position[d]] = self.to_input(value)


def _linear_weight(conv_weight: Tensor, rows: int | None = None) -> Tensor:
    """A conv kernel (C_out, C_in, kh, kw), its first ``rows`` rows kept, as a matrix
    (C_out, rows*kw*C_in) acting on channels-last patches flattened in (rows, kw, C_in) order."""
    w = conv_weight if rows is None else conv_weight[:, :, :rows]
    return w.permute(0, 2, 3, 1).reshape(len(w), -1)


class PixelCNNSteps:
    """The masked PixelCNN, one pixel per layer per step, images (n, 1, H, W) in raster order."""

    def __init__(self, net: PixelCNNNet, n: int, H: int, W: int, to_input: Callable[[Tensor], Tensor],
                 y: Tensor | None = None):
        conv = net.input_conv
        dtype, device = conv.weight.dtype, conv.weight.device
        self.n, self.W, self.to_input = n, W, to_input
        self.p0 = conv.kernel_size[0] // 2
        p0 = self.p0
        # every mask is zero below its centre row: only the rows up to the centre are kept
        self.w0 = _linear_weight(conv.weight * conv.mask.to(dtype), p0 + 1)  # (C, (p0+1)(2p0+1))
        self.b0 = _bias(conv.bias, net.input_class_bias, y)  # (1|n, C)
        self.inp = torch.zeros(n, H + p0, W + 2 * p0, 1, dtype=dtype, device=device)  # padded net input, channels last
        self.blocks = []
        for block in net.blocks:
            c = block.conv
            p = c.kernel_size[0] // 2
            C = c.weight.shape[0]
            buf = torch.zeros(n, H + p, W + 2 * p, C, dtype=dtype, device=device)  # ReLU(h) padded, channels last
            self.blocks.append((p, buf, _linear_weight(c.weight * c.mask.to(dtype), p + 1),
                                _bias(c.bias, block.class_bias, y), block.mix.weight[:, :, 0, 0], block.mix.bias))
        self.head = [(m.weight[:, :, 0, 0], m.bias) for m in net.head if isinstance(m, torch.nn.Conv2d)]

    def params(self, d: int) -> Tensor:
        i, j = divmod(d, self.W)
        p0 = self.p0
        patch = self.inp[:, i:i + p0 + 1, j:j + 2 * p0 + 1].reshape(self.n, -1)  # rows i-p0..i
        h = F.linear(patch, self.w0) + self.b0  # (n, C)
        for p, buf, w, b, mix_w, mix_b in self.blocks:
            buf[:, i + p, j + p] = F.relu(h)
            patch = buf[:, i:i + p + 1, j:j + 2 * p + 1].reshape(self.n, -1)  # rows i-p..i
            h = h + F.linear(F.relu(F.linear(patch, w) + b), mix_w, mix_b)
        return _head(self.head, h)

    def set(self, d: int, value: Tensor) -> None:
        i, j = divmod(d, self.W)
        self.inp[:, i + self.p0, j + self.p0, 0] = self.to_input(value)


def _head(layers: list[tuple[Tensor, Tensor]], h: Tensor) -> Tensor:
    """The 1x1 ReLU head at one pixel: (n, C) -> (n, P)."""
    for w, b in layers:
        h = F.linear(F.relu(h), w, b)
    return h


class GatedSteps:
    """The Gated PixelCNN: per row, the vertical stack of the row above (one row per layer);
    per step, the horizontal stack at one pixel per layer. Images (n, 1, H, W) in raster order."""

    def __init__(self, net: GatedPixelCNNNet, n: int, H: int, W: int, to_input: Callable[[Tensor], Tensor],
                 y: Tensor | None = None):
        first = net.layers[0]
        dtype, device = first.v_conv.weight.dtype, first.v_conv.weight.device
        self.n, self.W, self.to_input = n, W, to_input
        self.layers = []
        for layer in net.layers:
            p, c_in = layer.p, layer.v_conv.in_channels
            self.layers.append(dict(
                p=p, first=layer.first,
                v_in=torch.zeros(n, c_in, H + p, W + 2 * p, dtype=dtype, device=device),  # padded v input
                h_in=torch.zeros(n, W + p, c_in, dtype=dtype, device=device),  # this row's h input, left-padded
                v_w=layer.v_conv.weight, v_b=_bias(layer.v_conv.bias, layer.v_class_bias, y),  # (1|n, 2C)
                h_w=_linear_weight(layer.h_conv.weight), h_b=_bias(layer.h_conv.bias, layer.h_class_bias, y),
                link_w=layer.link.weight[:, :, 0, 0], link_b=layer.link.bias,
                res_w=layer.h_res.weight[:, :, 0, 0], res_b=layer.h_res.bias,
                link=None))
        self.head = [(m.weight[:, :, 0, 0], m.bias) for m in net.head if isinstance(m, torch.nn.Conv2d)]

    def _start_row(self, i: int) -> None:
        """The vertical stack of row i - 1 (final now) and its link into row i; clear the row buffers."""
        for l, L in enumerate(self.layers):
            L["h_in"].zero_()
            if i == 0:  # the row above the image: zero padding, so the link is its bias alone
                L["link"] = L["link_b"].expand(self.W, -1)[None]  # (1, W, 2C)
                continue
            p, r = L["p"], i - 1
            strip = L["v_in"][:, :, r:r + p + 1]  # (n, C_in, p+1, W+2p): rows r-p..r
            v_pre = F.conv2d(strip, L["v_w"])[:, :, 0].transpose(1, 2) + L["v_b"][:, None]  # (n, W, 2C)
            L["link"] = F.linear(v_pre, L["link_w"], L["link_b"])  # (n, W, 2C)
            if l + 1 < len(self.layers):
                nxt = self.layers[l + 1]
                q = nxt["p"]
                nxt["v_in"][:, :, r + q, q:q + self.W] = gate(v_pre.transpose(1, 2))

    def params(self, d: int) -> Tensor:
        i, j = divmod(d, self.W)
        if j == 0:
            self._start_row(i)
        h = None
        for L in self.layers:
            p = L["p"]
            if L["first"]:
                patch = L["h_in"][:, j:j + p]  # cols j-p..j-1 (the pixel itself is not drawn yet)
            else:
                L["h_in"][:, j + p] = h
                patch = L["h_in"][:, j:j + p + 1]  # cols j-p..j
            h_pre = F.linear(patch.reshape(self.n, -1), L["h_w"]) + L["h_b"] + L["link"][:, j]  # (n, 2C)
            out = F.linear(gate(h_pre), L["res_w"], L["res_b"])  # (n, C)
            h = out if L["first"] else h + out
        return _head(self.head, h)

    def set(self, d: int, value: Tensor) -> None:
        i, j = divmod(d, self.W)
        L = self.layers[0]
        p = L["p"]
        x = self.to_input(value)  # (n,) the net input of the drawn pixel
        L["v_in"][:, 0, i + p, j + p] = x
        L["h_in"][:, j + p, 0] = x


def incremental_sampler(net, n: int, event_shape, to_input: Callable[[Tensor], Tensor], k: int = 0,
                        y: Tensor | None = None):
    """The incremental sampler of ``net`` for n samples (under mask k for MADE)."""
    if isinstance(net, MADENet):
        return MADESteps(net, k, n, to_input, y)
    H, W = event_shape[-2], event_shape[-1]
    if isinstance(net, GatedPixelCNNNet):
        return GatedSteps(net, n, H, W, to_input, y)
    return PixelCNNSteps(net, n, H, W, to_input, y)
