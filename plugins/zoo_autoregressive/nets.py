"""Networks of the autoregressive family: MADE's masked MLP and PixelCNN's masked convolutions.

Both output, for every dimension d, a vector of P conditional parameters that depend only on
the dimensions before d in the model's ordering. The masks are the whole trick: a weight that
would let information flow from x_j to the output for x_i with j >= i is multiplied by an exact
zero, so the autoregressive property holds structurally (the tests check it by autograd).

For colour images (G channels) the PixelCNN's masks also order the channels within a pixel
(A. van den Oord, N. Kalchbrenner and K. Kavukcuoglu, "Pixel Recurrent Neural Networks",
ICML 2016, sec. 3.4): feature map k belongs to colour group g(k) = floor(k G / F) of its F maps
(the image's channel c is group c), and at the centre tap a weight from k' to k is kept when

    type A (first layer):  g(k) > g(k'),        type B (later layers):  g(k) >= g(k'),

every earlier pixel being connected in full; so group c at (i, j) sees x_{:, <(i,j)} and
x_{<c, i, j}, and colour c's outputs are computed from group c. With G = 1 these are the
single-channel masks (type A drops the centre, type B keeps it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


# ---- MADE ------------------------------------------------------------------------------------------
def made_degrees(D: int, hidden: list[int], seed: int, natural_order: bool) -> list[Tensor]:
    """Degrees of one MADE mask (Germain et al. 2015, sec. 4).

    m^0 (D,): the position (1..D) of each input in the ordering, the identity for the natural
    (raster) order, a seeded random permutation otherwise. Each hidden layer's degrees m^l (H_l,)
    are drawn uniformly from {min_k m^{l-1}(k), ..., D-1} so that no unit is useless. Seeded by
    ``seed`` alone, so a checkpoint rebuilds exactly the same masks without storing them.
    """
    gen = torch.Generator().manual_seed(int(seed))
    if natural_order:
        order = torch.arange(1, D + 1)
    else:
        order = torch.randperm(D, generator=gen) + 1
    degrees = [order]
    for width in hidden:
        low = int(degrees[-1].min())
        high = max(D - 1, low)  # D = 1: a single degree, never reaching the output
        degrees.append(torch.randint(low, high + 1, (width,), generator=gen))
    return degrees


def made_masks(degrees: list[Tensor], params_per_dim: int) -> tuple[list[Tensor], Tensor, Tensor]:
    """Masks from degrees: hidden M^l[k, k'] = [m^l(k) >= m^{l-1}(k')], output
    M^V[d, k] = [m^0(d) > m^L(k)], direct M^A[d, d'] = [m^0(d) > m^0(d')].

    Output rows are repeated ``params_per_dim`` times (row d * P + p belongs to dimension d).
    Returns (hidden masks [(H_l, H_{l-1})], output mask (D*P, H_L), direct mask (D*P, D)), floats.
    """
    hidden = [(m[:, None] >= prev[None, :]).float() for prev, m in zip(degrees[:-1], degrees[1:])]
    order = degrees[0]
    out = (order[:, None] > degrees[-1][None, :]).float().repeat_interleave(params_per_dim, dim=0)
    direct = (order[:, None] > order[None, :]).float().repeat_interleave(params_per_dim, dim=0)
    return hidden, out, direct


class MADENet(nn.Module):
    """Masked MLP x (N, D) -> conditional parameters (N, D, P), for one of ``num_masks`` masks.

    Mask 0 uses the natural order; masks 1.. use random orders (order-agnostic training), or with
    ``random_orders=False`` the natural order too, only their hidden connectivity differing
    (connectivity-agnostic training, Germain et al. 2015, sec. 4.3). All masks are rebuilt from
    ``mask_seed`` and cached per (mask, device); none is stored.
    With ``num_classes`` a one-hot class y is connected, unmasked, to every hidden unit and every
    output (a learnt per-class bias of each, ``class_hidden`` and ``class_out``), so every
    conditional p(x_d | x_<d, y) sees the class, the first one included.
    """

    def __init__(self, D: int, hidden: list[int], params_per_dim: int, num_masks: int, mask_seed: int,
                 direct: bool, num_classes: int | None = None, random_orders: bool = True):
        super().__init__()
        self.D, self.P, self.hidden = D, params_per_dim, list(hidden)
        self.num_masks, self.mask_seed = num_masks, mask_seed
        sizes = [D, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = nn.Linear(sizes[-1], D * params_per_dim)
        # direct input-to-output connections (the MADE paper's optional autoregressive shortcut)
        self.direct = nn.Linear(D, D * params_per_dim, bias=False) if direct else None
        if self.direct is not None:
            nn.init.zeros_(self.direct.weight)
        self.class_hidden = self.class_out = None
        if num_classes:
            self.class_hidden = nn.ModuleList(nn.Embedding(num_classes, h) for h in hidden)
            self.class_out = nn.Embedding(num_classes, D * params_per_dim)
            for emb in [*self.class_hidden, self.class_out]:
                nn.init.zeros_(emb.weight)
        self._degrees = [made_degrees(D, self.hidden, mask_seed + k, natural_order=(k == 0 or not random_orders))
                         for k in range(num_masks)]
        self._cache: dict = {}

    def order(self, k: int) -> Tensor:
        """(D,) positions 1..D of each input dimension under mask k."""
        return self._degrees[k][0]

    def masks(self, k: int, device: torch.device) -> tuple[list[Tensor], Tensor, Tensor]:
        key = (k, str(device))
        if key not in self._cache:
            if len(self._cache) > 8:
                self._cache.clear()
            with torch.inference_mode(False):  # cached masks must serve autograd later too
                hidden, out, direct = made_masks(self._degrees[k], self.P)
                self._cache[key] = ([m.to(device) for m in hidden], out.to(device), direct.to(device))
        return self._cache[key]

    def forward(self, x: Tensor, k: int = 0, y: Tensor | None = None) -> Tensor:
        """x (N, D), labels y (N,) or None -> (N, D, P) parameters of p(x_d | x_<d[, y]) under mask k."""
        hidden_masks, out_mask, direct_mask = self.masks(k, x.device)
        conditioned = y is not None and self.class_out is not None
        h = x
        for l, (layer, mask) in enumerate(zip(self.layers, hidden_masks)):
            a = F.linear(h, layer.weight * mask.to(layer.weight.dtype), layer.bias)  # (N, H_l)
            h = F.relu(a + self.class_hidden[l](y) if conditioned else a)
        out = F.linear(h, self.out.weight * out_mask.to(self.out.weight.dtype), self.out.bias)  # (N, D*P)
        if self.direct is not None:
            out = out + F.linear(x, self.direct.weight * direct_mask.to(self.direct.weight.dtype))
        if conditioned:
            out = out + self.class_out(y)
        return out.reshape(len(x), self.D, self.P)

    def output_bias(self) -> Tensor:
        """(D, P) view of the output bias (for data-dependent initialisation)."""
        return self.out.bias.view(self.D, self.P)


# ---- PixelCNN --------------------------------------------------------------------------------------
def channel_groups(features: int, colours: int) -> Tensor:
    """(features,) the colour group 0..G-1 of each feature map: G contiguous blocks of near-equal
    size (group g holds features [ceil(g F / G), ceil((g + 1) F / G)) ); with G = 1 all zero."""
    return torch.arange(features) * colours // features


def colour_mask(out_groups: Tensor, in_groups: Tensor, mask_type: str) -> Tensor:
    """(C_out, C_in) float mask of the connections at the centre pixel (van den Oord et al. 2016,
    Pixel Recurrent Neural Networks, sec. 3.4): type A [g_out > g_in], type B [g_out >= g_in]."""
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
    if mask_type == "A":
        return (out_groups[:, None] > in_groups[None, :]).float()
    return (out_groups[:, None] >= in_groups[None, :]).float()


class MaskedConv(nn.Conv2d):
    """An ``nn.Conv2d`` whose weight is multiplied by a fixed 0/1 mask (C_out, C_in, kh, kw) in
    every pass (a non-persistent buffer: checkpoints hold the plain weight)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, mask: Tensor, padding=0,
                 bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, bias=bias)
        if tuple(mask.shape) != tuple(self.weight.shape):
            raise ValueError(f"mask of shape {tuple(mask.shape)}; expected {tuple(self.weight.shape)}")
        self.register_buffer("mask", mask.float(), persistent=False)

    def masked_weight(self) -> Tensor:
        return self.weight * self.mask.to(self.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.masked_weight(), self.bias)


class MaskedConv2d(MaskedConv):
    """A 'same' k x k convolution whose kernel sees only pixels before the centre in raster order,
    plus, at the centre, the colour groups the mask type allows (van den Oord et al. 2016, fig. 2
    and sec. 3.4): type A (first layer) g_out > g_in, type B (later layers) g_out >= g_in.

    With one colour (``colours`` = 1) type A drops the centre and type B keeps it whole; with G
    colours the input and output feature maps are split into G groups by ``channel_groups``
    (the image's channels are groups 0..G-1 themselves)."""

    def __init__(self, mask_type: str, in_channels: int, out_channels: int, kernel_size: int, colours: int = 1):
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        c = kernel_size // 2
        mask = torch.ones(out_channels, in_channels, kernel_size, kernel_size)
        mask[:, :, c, c:] = 0  # the centre row from the centre on
        mask[:, :, c + 1:] = 0  # every row below the centre
        mask[:, :, c, c] = colour_mask(channel_groups(out_channels, colours), channel_groups(in_channels, colours),
                                       mask_type)
        super().__init__(in_channels, out_channels, kernel_size, mask, padding=c)


def pointwise(in_channels: int, out_channels: int, colours: int = 1) -> nn.Conv2d:
    """A 1x1 convolution, type-B colour-masked for G > 1 colours (a plain one for one colour)."""
    if colours == 1:
        return nn.Conv2d(in_channels, out_channels, 1)
    return MaskedConv2d("B", in_channels, out_channels, 1, colours)


def masked_weight(conv: nn.Conv2d) -> Tensor:
    """The weight a (possibly masked) convolution applies."""
    return conv.masked_weight() if isinstance(conv, MaskedConv) else conv.weight


def class_bias(embedding: nn.Embedding | None, y: Tensor | None, a: Tensor) -> Tensor:
    """a (N, C, H, W) plus the per-class bias embedding(y) (N, C) at every pixel, if any."""
    if embedding is None or y is None:
        return a
    return a + embedding(y)[:, :, None, None]


def class_embedding(num_classes: int | None, channels: int) -> nn.Embedding | None:
    """A per-class bias (zero at initialisation), or None for an unconditional network."""
    if not num_classes:
        return None
    emb = nn.Embedding(num_classes, channels)
    nn.init.zeros_(emb.weight)
    return emb


class ResidualBlock(nn.Module):
    """h + 1x1(ReLU(3x3 type-B masked conv(ReLU(h)) [+ class bias])): (N, C, H, W) -> (N, C, H, W);
    with G ``colours`` both convolutions are type-B colour-masked."""

    def __init__(self, channels: int, kernel_size: int = 3, num_classes: int | None = None, colours: int = 1):
        super().__init__()
        self.conv = MaskedConv2d("B", channels, channels, kernel_size, colours)
        self.mix = pointwise(channels, channels, colours)
        self.class_bias = class_embedding(num_classes, channels)

    def forward(self, h: Tensor, y: Tensor | None = None) -> Tensor:
        return h + self.mix(F.relu(class_bias(self.class_bias, y, self.conv(F.relu(h)))))


class PixelCNNNet(nn.Module):
    """x (N, G, H, W) -> (N, G P, H, W): a type-A k x k conv, ``n_layers`` residual blocks of 3x3
    type-B convs, and a 1x1 ReLU head (van den Oord et al. 2016, sec. 3.5 and table 1); output
    channels g P .. (g + 1) P - 1 are the P parameters of colour g (``params_per_pixel`` is per
    pixel and colour). With G = ``colours`` > 1 every convolution is colour-masked (sec. 3.4).
    With ``num_classes``, the first conv and every block add a learnt per-class bias (labels y (N,))."""

    def __init__(self, channels: int, n_layers: int, kernel_size: int, params_per_pixel: int,
                 num_classes: int | None = None, colours: int = 1):
        super().__init__()
        self.colours = colours
        self.input_conv = MaskedConv2d("A", colours, channels, kernel_size, colours)
        self.input_class_bias = class_embedding(num_classes, channels)
        self.blocks = nn.ModuleList(ResidualBlock(channels, num_classes=num_classes, colours=colours)
                                    for _ in range(n_layers))
        self.head = nn.Sequential(nn.ReLU(), pointwise(channels, channels, colours), nn.ReLU(),
                                  pointwise(channels, colours * params_per_pixel, colours))

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        h = class_bias(self.input_class_bias, y, self.input_conv(x))
        for block in self.blocks:
            h = block(h, y)
        return self.head(h)

    def output_bias(self) -> Tensor:
        """(G P,) bias of the last 1x1 conv, shared by all pixels (colour g: entries g P .. g P + P - 1)."""
        return self.head[-1].bias
