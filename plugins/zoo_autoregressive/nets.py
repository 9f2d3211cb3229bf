"""Networks of the autoregressive family: MADE's masked MLP and PixelCNN's masked convolutions.

Both output, for every dimension d, a vector of P conditional parameters that depend only on
the dimensions before d in the model's ordering. The masks are the whole trick: a weight that
would let information flow from x_j to the output for x_i with j >= i is multiplied by an exact
zero, so the autoregressive property holds structurally (the tests check it by autograd).
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

    Mask 0 uses the natural order; masks 1.. (order-agnostic training) use random orders. All
    masks are rebuilt from ``mask_seed`` and cached per (mask, device); none is stored.
    With ``num_classes`` a one-hot class y is connected, unmasked, to every hidden unit and every
    output (a learnt per-class bias of each, ``class_hidden`` and ``class_out``), so every
    conditional p(x_d | x_<d, y) sees the class, the first one included.
    """

    def __init__(self, D: int, hidden: list[int], params_per_dim: int, num_masks: int, mask_seed: int,
                 direct: bool, num_classes: int | None = None):
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
        self._degrees = [made_degrees(D, self.hidden, mask_seed + k, natural_order=(k == 0)) for k in range(num_masks)]
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
class MaskedConv2d(nn.Conv2d):
    """A 'same' convolution whose kernel sees only pixels before the centre in raster order
    (type A) or before and at the centre (type B), as in van den Oord et al. 2016, fig. 2.

    With a single image channel no channel grouping is needed: every hidden feature at pixel i
    depends on x_<i only, so type B may use the centre of the hidden maps."""

    def __init__(self, mask_type: str, in_channels: int, out_channels: int, kernel_size: int):
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        c = kernel_size // 2
        mask = torch.ones(kernel_size, kernel_size)
        mask[c, c + (mask_type == "B"):] = 0  # the centre row from the centre (A) or after it (B)
        mask[c + 1:] = 0  # every row below the centre
        self.register_buffer("mask", mask[None, None], persistent=False)  # (1, 1, k, k)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight * self.mask.to(self.weight.dtype), self.bias)


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
    """h + 1x1(ReLU(3x3 type-B masked conv(ReLU(h)) [+ class bias])): (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, channels: int, kernel_size: int = 3, num_classes: int | None = None):
        super().__init__()
        self.conv = MaskedConv2d("B", channels, channels, kernel_size)
        self.mix = nn.Conv2d(channels, channels, 1)
        self.class_bias = class_embedding(num_classes, channels)

    def forward(self, h: Tensor, y: Tensor | None = None) -> Tensor:
        return h + self.mix(F.relu(class_bias(self.class_bias, y, self.conv(F.relu(h)))))


class PixelCNNNet(nn.Module):
    """x (N, 1, H, W) -> (N, P, H, W): a type-A k x k conv, ``n_layers`` residual blocks of 3x3
    type-B convs, and a 1x1 ReLU head (van den Oord et al. 2016, sec. 3.5 and table 1). With
    ``num_classes``, the first conv and every block add a learnt per-class bias (labels y (N,))."""

    def __init__(self, channels: int, n_layers: int, kernel_size: int, params_per_pixel: int,
                 num_classes: int | None = None):
        super().__init__()
        self.input_conv = MaskedConv2d("A", 1, channels, kernel_size)
        self.input_class_bias = class_embedding(num_classes, channels)
        self.blocks = nn.ModuleList(ResidualBlock(channels, num_classes=num_classes) for _ in range(n_layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(),
                                  nn.Conv2d(channels, params_per_pixel, 1))

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        h = class_bias(self.input_class_bias, y, self.input_conv(x))
        for block in self.blocks:
            h = block(h, y)
        return self.head(h)

    def output_bias(self) -> Tensor:
        """(P,) bias of the last 1x1 conv, shared by all pixels."""
        return self.head[-1].bias
