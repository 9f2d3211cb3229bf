"""The Gated PixelCNN network: a vertical and a horizontal stack of gated convolutions with no
blind spot (A. van den Oord, N. Kalchbrenner, O. Vinyals, L. Espeholt, A. Graves and
K. Kavukcuoglu, "Conditional Image Generation with PixelCNN Decoders", NeurIPS 2016, sec. 2.1-2.3).

Each layer has two stacks of feature maps (pixels in raster order):

- the vertical stack v sees a (p + 1) x k window of the rows at and above its own row
  (k = 2p + 1): v_pre = W_v * v, a rectangle that never looks below;
- the horizontal stack h sees the p pixels to the left of its own (first layer, "type A") or the
  p pixels to the left and itself (later layers, "type B"), plus the vertical stack of the row
  above through a 1x1 convolution (the vertical-to-horizontal link, shifted down one row so
  that row i only receives rows < i):
      h_pre = W_h * h + W_link * shift_down(v_pre).

Both pass through the gated activation (eq. 2 of the paper),

    y = tanh(W_f * x + V_f^T c) ⊙ sigmoid(W_g * x + V_g^T c),

where c is an optional one-hot class (``num_classes``; the paper's global conditioning, eq. 4:
a learnt per-class bias of every gate), and the horizontal stack is residual after the first
layer: h_out = h + W_res * y_h. Because the vertical rectangle covers every column, the receptive
field of pixel (i, j) is every pixel before it in raster order (given enough layers), with no
blind spot, unlike the masked 3x3 PixelCNN.

Colour images (G channels, e.g. R, G, B) follow the channel masks of A. van den Oord,
N. Kalchbrenner and K. Kavukcuoglu, "Pixel Recurrent Neural Networks", ICML 2016, sec. 3.4:
every feature map of the horizontal stack belongs to a colour group g(k) in 0..G-1
(``nets.channel_groups``; the f and g halves of a gate share the group of their unit), and the
joint is factorised over pixels in raster order and colours within a pixel,

    p(x) = prod_{i,j} prod_{c=0}^{G-1} p(x_{c,i,j} | x_{:, <(i,j)}, x_{<c, i, j}).

Only the connections that read the current pixel carry a mask, on its channels: the first
layer's 1x1 centre connection of the image into the horizontal stack (type A),

    W_centre[k, c'] = 0 unless g(k) > c',

and the centre column of every later horizontal convolution, the residual 1x1 W_res and the
1x1 head (type B), W[k, k'] = 0 unless g(k) >= g(k'); output channels g P .. g P + P - 1 hold
colour g's parameters. The vertical stack and its link need no mask: the horizontal stack
only receives it from the rows above.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .nets import MaskedConv, channel_groups, class_bias, class_embedding, colour_mask, pointwise


def gate(a: Tensor) -> Tensor:
    """tanh(a_f) * sigmoid(a_g) for a = [a_f, a_g] along dim 1: (N, 2C, ...) -> (N, C, ...)."""
    f, g = a.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


def shift_down(a: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, C, H, W) with row i holding row i - 1 of a (zeros in row 0)."""
    return F.pad(a, (0, 0, 1, 0))[:, :, :-1]


class GatedLayer(nn.Module):
    """One gated layer: (v, h) (N, C_in, H, W) each -> (N, C, H, W) each.

    ``first``: the horizontal convolution sees the p pixels strictly left (type A) and there is
    no residual connection; otherwise it sees the p left pixels and the centre (type B). With G
    ``colours`` > 1 the first layer also reads the current pixel's colours through a type-A
    1x1 connection (``h_centre``), and the centre column of a later layer's horizontal
    convolution and W_res are type-B colour-masked."""

    def __init__(self, in_channels: int, channels: int, kernel_size: int, first: bool,
                 num_classes: int | None = None, colours: int = 1):
        super().__init__()
        if kernel_size < 3 or kernel_size % 2 != 1:
            raise ValueError(f"gated layers need an odd kernel_size >= 3, got {kernel_size}")
        self.p, self.first, self.channels, self.colours = kernel_size // 2, bool(first), channels, colours
        p = self.p
        self.v_conv = nn.Conv2d(in_channels, 2 * channels, (p + 1, kernel_size))  # rows r-p..r, cols c-p..c+p
        pre_groups = channel_groups(channels, colours).repeat(2)  # (2C,) a gate's f and g halves share a group
        in_groups = channel_groups(in_channels, colours)
        self.h_centre = None
        if first or colours == 1:
            self.h_conv = nn.Conv2d(in_channels, 2 * channels, (1, p if first else p + 1))  # cols c-p..c-1 or ..c
            if first and colours > 1:  # the current pixel's earlier colours, type A
                self.h_centre = MaskedConv(in_channels, 2 * channels, 1,
                                           colour_mask(pre_groups, in_groups, "A")[:, :, None, None], bias=False)
        else:
            mask = torch.ones(2 * channels, in_channels, 1, p + 1)
            mask[:, :, 0, p] = colour_mask(pre_groups, in_groups, "B")  # the centre column, type B
            self.h_conv = MaskedConv(in_channels, 2 * channels, (1, p + 1), mask)
        self.link = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_res = pointwise(channels, channels, colours)
        # per-class biases of the vertical and horizontal gates (their f and g halves)
        self.v_class_bias = class_embedding(num_classes, 2 * channels)
        self.h_class_bias = class_embedding(num_classes, 2 * channels)

    def forward(self, v: Tensor, h: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        p = self.p
        v_pre = class_bias(self.v_class_bias, y, self.v_conv(F.pad(v, (p, p, p, 0))))  # (N, 2C, H, W)
        if self.first:
            h_in = F.pad(h, (p, 0))[..., :-1]  # shifted right by one: column c sees c-p..c-1
        else:
            h_in = F.pad(h, (p, 0))  # column c sees c-p..c
        h_pre = self.h_conv(h_in)
        if self.h_centre is not None:
            h_pre = h_pre + self.h_centre(h)  # the pixel's own earlier colours
        h_pre = h_pre + self.link(shift_down(v_pre))  # (N, 2C, H, W)
        h_pre = class_bias(self.h_class_bias, y, h_pre)
        h_out = self.h_res(gate(h_pre))
        return gate(v_pre), (h_out if self.first else h + h_out)


class GatedPixelCNNNet(nn.Module):
    """x (N, G, H, W) -> (N, G P, H, W): a first gated layer with a k x k receptive window
    (``kernel_size``), ``n_layers`` gated 3x3 layers, and the 1x1 ReLU head of the PixelCNN;
    output channels g P .. (g + 1) P - 1 are the P parameters of colour g (``params_per_pixel``
    is per pixel and colour), colour-masked for G = ``colours`` > 1.
    With ``num_classes`` each gate has a per-class bias and ``forward`` takes labels y (N,)."""

    def __init__(self, channels: int, n_layers: int, kernel_size: int, params_per_pixel: int,
                 num_classes: int | None = None, colours: int = 1):
        super().__init__()
        self.colours = colours
        self.layers = nn.ModuleList(
            [GatedLayer(colours, channels, kernel_size, True, num_classes, colours)]
            + [GatedLayer(channels, channels, 3, False, num_classes, colours) for _ in range(n_layers)])
        self.head = nn.Sequential(nn.ReLU(), pointwise(channels, channels, colours), nn.ReLU(),
                                  pointwise(channels, colours * params_per_pixel, colours))

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        v = h = x
        for layer in self.layers:
            v, h = layer(v, h, y)
        return self.head(h)

    def output_bias(self) -> Tensor:
        """(G P,) bias of the last 1x1 conv, shared by all pixels (colour g: entries g P .. g P + P - 1)."""
        return self.head[-1].bias
