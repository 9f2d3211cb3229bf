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
- Colour images (G channels, drawn R, G, B within each pixel, ``nets.py``): the features of
  colour group c at (i, j), in every layer, see the pixels before (i, j) and the colours < c of
  (i, j), so the step drawing colour c computes group c of each layer at (i, j) only, reading the
  groups < c computed at the earlier steps of the same pixel: the G steps of a pixel together
  multiply about as many weights as one single-channel step of the same width.

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
from .nets import MADENet, PixelCNNNet, channel_groups, masked_weight


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


def _group_bounds(features: int, colours: int) -> list[tuple[int, int]]:
    """[(start, end)] of each colour group's block of feature maps (``nets.channel_groups``)."""
    groups = channel_groups(features, colours)
    return [(int(torch.searchsorted(groups, g)), int(torch.searchsorted(groups, g, right=True)))
            for g in range(colours)]


def _pixel_index(d: int, H: int, W: int) -> tuple[int, int, int]:
    """Flattened dimension d of a (G, H, W) image -> (colour c, row i, column j)."""
    c, rest = divmod(d, H * W)
    return (c, *divmod(rest, W))


class _Head:
    """The 1x1 ReLU head at the current pixel, one colour group at a time: group c of the hidden
    1x1 layer sees groups <= c (type B), colour c's P outputs see groups <= c."""

    def __init__(self, net, n: int, bounds: list[tuple[int, int]], dtype, device):
        (w1, b1), (w2, b2) = [(masked_weight(m)[:, :, 0, 0], m.bias) for m in net.head if isinstance(m, torch.nn.Conv2d)]
        P = len(w2) // len(bounds)
        self.h = torch.zeros(n, w1.shape[1], dtype=dtype, device=device)  # (n, C) the stream entering the head
        self.hidden = torch.zeros(n, len(w1), dtype=dtype, device=device)  # (n, C) its hidden layer
        self.groups = [(s, e, w1[s:e, :e].contiguous(), b1[s:e], w2[c * P:(c + 1) * P, :e].contiguous(),
                        b2[c * P:(c + 1) * P]) for c, (s, e) in enumerate(bounds)]

    def __call__(self, c: int, h: Tensor) -> Tensor:
        """Group c of the stream (n, |c|) -> colour c's parameters (n, P)."""
        s, e, w1, b1, w2, b2 = self.groups[c]
        self.h[:, s:e] = h
        self.hidden[:, s:e] = F.linear(F.relu(self.h[:, :e]), w1, b1)
        return F.linear(F.relu(self.hidden[:, :e]), w2, b2)


class PixelCNNSteps:
    """The masked PixelCNN, images (n, G, H, W): pixels in raster order, colours within a pixel.

    The features of colour group c at pixel (i, j), in every layer, see the pixels before (i, j)
    and the colours < c of (i, j) only, so they become final at the step that draws colour c of
    (i, j): each step computes one group per layer (per pixel, one k x k window per layer)."""

    def __init__(self, net: PixelCNNNet, n: int, H: int, W: int, to_input: Callable[[Tensor], Tensor],
                 y: Tensor | None = None):
        conv = net.input_conv
        dtype, device = conv.weight.dtype, conv.weight.device
        G, C = conv.in_channels, conv.out_channels
        self.n, self.H, self.W, self.to_input = n, H, W, to_input
        self.p0 = p0 = conv.kernel_size[0] // 2
        bounds = _group_bounds(C, G)
        # every mask is zero below its centre row: only the rows up to the centre are kept
        w0 = _linear_weight(masked_weight(conv), p0 + 1)  # (C, (p0+1)(2p0+1)G)
        b0 = _bias(conv.bias, net.input_class_bias, y)  # (1|n, C)
        self.first = [(s, e, w0[s:e].contiguous(), b0[:, s:e]) for s, e in bounds]
        self.inp = torch.zeros(n, H + p0, W + 2 * p0, G, dtype=dtype, device=device)  # padded net input, channels last
        self.blocks = []
        for block in net.blocks:
            c = block.conv
            p = c.kernel_size[0] // 2
            buf = torch.zeros(n, H + p, W + 2 * p, C, dtype=dtype, device=device)  # ReLU(h) padded, channels last
            inner = torch.zeros(n, C, dtype=dtype, device=device)  # ReLU(conv + bias) at the current pixel
            w, b = _linear_weight(masked_weight(c), p + 1), _bias(c.bias, block.class_bias, y)
            mix_w = masked_weight(block.mix)[:, :, 0, 0]  # (C, C), type B: group c reads groups <= c
            self.blocks.append((p, buf, inner, [(w[s:e].contiguous(), b[:, s:e], mix_w[s:e, :e].contiguous(),
                                                 block.mix.bias[s:e]) for s, e in bounds]))
        self.head = _Head(net, n, bounds, dtype, device)

    def params(self, d: int) -> Tensor:
        c, i, j = _pixel_index(d, self.H, self.W)
        p0 = self.p0
        s, e, w0, b0 = self.first[c]
        patch = self.inp[:, i:i + p0 + 1, j:j + 2 * p0 + 1].reshape(self.n, -1)  # rows i-p0..i
        h = F.linear(patch, w0) + b0  # (n, |c|) group c of the residual stream
        for p, buf, inner, groups in self.blocks:
            w, b, mix_w, mix_b = groups[c]
            buf[:, i + p, j + p, s:e] = F.relu(h)
            patch = buf[:, i:i + p + 1, j:j + 2 * p + 1].reshape(self.n, -1)  # rows i-p..i
            inner[:, s:e] = F.relu(F.linear(patch, w) + b)
            h = h + F.linear(inner[:, :e], mix_w, mix_b)
        return self.head(c, h)

    def set(self, d: int, value: Tensor) -> None:
        c, i, j = _pixel_index(d, self.H, self.W)
        self.inp[:, i + self.p0, j + self.p0, c] = self.to_input(value)


class GatedSteps:
    """The Gated PixelCNN, images (n, G, H, W): per row, the vertical stack of the row above (one
    row per layer); per step (colour c of pixel (i, j)), group c of the horizontal stack at one
    pixel per layer.

    The pre-activations of a gate's f and g halves of group c are kept side by side (rows
    permuted once here), so each step reads one contiguous block of the row's link term."""

    def __init__(self, net: GatedPixelCNNNet, n: int, H: int, W: int, to_input: Callable[[Tensor], Tensor],
                 y: Tensor | None = None):
        first = net.layers[0]
        dtype, device = first.v_conv.weight.dtype, first.v_conv.weight.device
        G, C = first.v_conv.in_channels, first.channels
        self.n, self.H, self.W, self.to_input = n, H, W, to_input
        bounds = _group_bounds(C, G)
        pairs = [torch.cat([torch.arange(s, e), torch.arange(C + s, C + e)]) for s, e in bounds]  # f and g rows
        perm = torch.cat(pairs).to(device)  # (2C,) group by group
        self.layers = []
        for layer in net.layers:
            p, c_in = layer.p, layer.v_conv.in_channels
            h_w = _linear_weight(masked_weight(layer.h_conv))  # (2C, kw C_in)
            h_b = _bias(layer.h_conv.bias, layer.h_class_bias, y)  # (1|n, 2C)
            centre = masked_weight(layer.h_centre)[:, :, 0, 0] if layer.h_centre is not None else None  # (2C, G)
            res_w = masked_weight(layer.h_res)[:, :, 0, 0]  # (C, C)
            groups = []
            for g, ((s, e), rows) in enumerate(zip(bounds, pairs)):
                rows = rows.to(device)
                groups.append(dict(
                    h_w=h_w[rows].contiguous(), h_b=h_b[:, rows],
                    centre=centre[rows, :g].contiguous() if centre is not None and g > 0 else None,  # colours < g
                    res_w=res_w[s:e, :e].contiguous(), res_b=layer.h_res.bias[s:e]))
            self.layers.append(dict(
                p=p, first=layer.first, groups=groups,
                v_in=torch.zeros(n, c_in, H + p, W + 2 * p, dtype=dtype, device=device),  # padded v input
                h_in=torch.zeros(n, W + p, c_in, dtype=dtype, device=device),  # this row's h input, left-padded
                gated=torch.zeros(n, C, dtype=dtype, device=device),  # the gate's output at the current pixel
                v_w=layer.v_conv.weight, v_b=_bias(layer.v_conv.bias, layer.v_class_bias, y),  # (1|n, 2C)
                link_w=layer.link.weight[perm, :, 0, 0], link_b=layer.link.bias[perm],  # rows group by group
                link=None))
        self.bounds = bounds
        self.head = _Head(net, n, bounds, dtype, device)

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
            L["link"] = F.linear(v_pre, L["link_w"], L["link_b"])  # (n, W, 2C), rows group by group
            if l + 1 < len(self.layers):
                nxt = self.layers[l + 1]
                q = nxt["p"]
                nxt["v_in"][:, :, r + q, q:q + self.W] = gate(v_pre.transpose(1, 2))

    def params(self, d: int) -> Tensor:
        c, i, j = _pixel_index(d, self.H, self.W)
        if j == 0 and c == 0:
            self._start_row(i)
        s, e = self.bounds[c]
        h = None
        for L in self.layers:
            p, g = L["p"], L["groups"][c]
            if L["first"]:
                patch = L["h_in"][:, j:j + p]  # cols j-p..j-1 (the pixel itself is not drawn yet)
            else:
                L["h_in"][:, j + p, s:e] = h
                patch = L["h_in"][:, j:j + p + 1]  # cols j-p..j (at j, the groups <= c)
            h_pre = F.linear(patch.reshape(self.n, -1), g["h_w"]) + g["h_b"] + L["link"][:, j, 2 * s:2 * e]  # (n, 2|c|)
            if g["centre"] is not None:  # the colours < c of the pixel itself
                h_pre = h_pre + F.linear(L["h_in"][:, j + p, :c], g["centre"])
            L["gated"][:, s:e] = gate(h_pre)
            out = F.linear(L["gated"][:, :e], g["res_w"], g["res_b"])  # (n, |c|)
            h = out if L["first"] else h + out
        return self.head(c, h)

    def set(self, d: int, value: Tensor) -> None:
        c, i, j = _pixel_index(d, self.H, self.W)
        L = self.layers[0]
        p = L["p"]
        x = self.to_input(value)  # (n,) the net input of the drawn pixel
        L["v_in"][:, c, i + p, j + p] = x
        L["h_in"][:, j + p, c] = x


def incremental_sampler(net, n: int, event_shape, to_input: Callable[[Tensor], Tensor], k: int = 0,
                        y: Tensor | None = None):
    """The incremental sampler of ``net`` for n samples (under mask k for MADE)."""
    if isinstance(net, MADENet):
        return MADESteps(net, k, n, to_input, y)
    H, W = event_shape[-2], event_shape[-1]
    if isinstance(net, GatedPixelCNNNet):
        return GatedSteps(net, n, H, W, to_input, y)
    return PixelCNNSteps(net, n, H, W, to_input, y)
