"""Noise-prediction networks eps_theta(x_t, t) for the diffusion family.

- :class:`TimeMLP`: a residual MLP on flattened data (2-D toys, or flattened small images)
  with a sinusoidal time embedding added inside every block.
- :class:`UNet`: a small DDPM-style U-Net (Ho et al. 2020, appendix B, scaled down for a CPU):
  residual blocks with GroupNorm and SiLU, the time embedding added after the first
  convolution of every block, stride-2 convolutions down, nearest-neighbour upsampling,
  skip connections concatenated on the way up, no attention.

Both take the time as a float tensor ``t`` of shape (N,) (the model passes t * 1000 / T, so
the embedding sees the same range whatever the number of steps T) and zero-initialise their
output layer, so an untrained network predicts eps = 0. With ``outputs=2`` (learned variances,
Nichol & Dhariwal 2021, section 3.1) the output layer is twice as wide: features (MLP) or channels
(U-Net) [0, D) are eps and [D, 2D) the variance interpolation v, both zero at initialisation.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer-style sinusoidal embedding: (N,) -> (N, dim), [cos(t f_i), sin(t f_i)]
    with frequencies f_i = max_period^(-i / (dim/2)), i = 0 .. dim/2 - 1."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]  # (N, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, 2 * half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimeEmbedding(nn.Module):
    """(N,) times -> (N, dim): sinusoidal features followed by a 2-layer MLP (as in DDPM)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.dim))


class MLPBlock(nn.Module):
    """h -> skip(h) + W2 SiLU(W1 SiLU(h) + V temb): a pre-activation residual block."""

    def __init__(self, n_in: int, n_out: int, time_dim: int, dropout: float):
        super().__init__()
        self.lin1 = nn.Linear(n_in, n_out)
        self.temb = nn.Linear(time_dim, n_out)
        self.lin2 = nn.Linear(n_out, n_out)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Identity() if n_in == n_out else nn.Linear(n_in, n_out)

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        a = F.silu(self.lin1(F.silu(h)) + self.temb(temb))  # (N, n_out)
        return self.skip(h) + self.lin2(self.dropout(a))


class TimeMLP(nn.Module):
    """eps_theta for flat data: (N, D), (N,) -> (N, outputs * D)."""

    def __init__(self, dim: int, hidden: Sequence[int], time_dim: int = 128, dropout: float = 0.0,
                 outputs: int = 1):
        super().__init__()
        self.time = TimeEmbedding(time_dim)
        self.inp = nn.Linear(dim, hidden[0])
        widths = [hidden[0], *hidden]
        self.blocks = nn.ModuleList(MLPBlock(a, b, time_dim, dropout) for a, b in zip(widths[:-1], widths[1:]))
        self.out = nn.Linear(hidden[-1], outputs * dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """``cond`` (N, E): a conditioning embedding (e.g. of class labels) added to the time embedding."""
        temb = F.silu(self.time(t) if cond is None else self.time(t) + cond)  # (N, E)
        h = self.inp(x)  # (N, H0)
        for block in self.blocks:
            h = block(h, temb)  # (N, H_i)
        return self.out(F.silu(h))  # (N, outputs * D)


def _groups(channels: int) -> int:
    """Number of GroupNorm groups: 8 where it divides the channels (DDPM uses 32 with wider nets)."""
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    """DDPM residual block: GN-SiLU-conv, + time projection, GN-SiLU-dropout-conv, + skip."""

    def __init__(self, c_in: int, c_out: int, time_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb = nn.Linear(time_dim, c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (N, c_out, H, W)
        h = h + self.temb(temb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class UNet(nn.Module):
    """eps_theta for images: (N, C, H, W), (N,) -> (N, outputs * C, H, W).

    ``channels[i]`` is the width at resolution level i (level 0 is full resolution; each next
    level halves H and W, rounding up), ``blocks`` residual blocks per level on the way down
    and ``blocks + 1`` on the way up (one per stored skip), two in the middle.
    """

    def __init__(self, in_channels: int, channels: Sequence[int] = (32, 64), blocks: int = 1,
                 time_dim: int = 128, dropout: float = 0.0, outputs: int = 1):
        super().__init__()
        channels = list(channels)
        self.time = TimeEmbedding(time_dim)
        self.inp = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        skip_widths = [channels[0]]
        c = channels[0]
        for level, width in enumerate(channels):
            for _ in range(blocks):
                self.down.append(ResBlock(c, width, time_dim, dropout))
                c = width
                skip_widths.append(c)
            if level < len(channels) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))  # downsample
                skip_widths.append(c)
        self.mid = nn.ModuleList([ResBlock(c, c, time_dim, dropout), ResBlock(c, c, time_dim, dropout)])
        self.up = nn.ModuleList()
        for level in reversed(range(len(channels))):
            width = channels[level]
            for _ in range(blocks + 1):
                self.up.append(ResBlock(c + skip_widths.pop(), width, time_dim, dropout))
                c = width
            if level > 0:
                self.up.append(nn.Conv2d(c, c, 3, padding=1))  # after nearest-neighbour upsampling
        self.out_norm = nn.GroupNorm(_groups(c), c)
        self.out = nn.Conv2d(c, outputs * in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """``cond`` (N, E): a conditioning embedding (e.g. of class labels) added to the time embedding."""
        temb = F.silu(self.time(t) if cond is None else self.time(t) + cond)  # (N, E)
        h = self.inp(x)  # (N, c0, H, W)
        skips = [h]
        for layer in self.down:
            h = layer(h, temb) if isinstance(layer, ResBlock) else layer(h)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, temb)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, skips.pop()], dim=1), temb)
            else:  # upsample to the size of the next skip (handles odd sizes such as 7 -> 14)
                h = layer(F.interpolate(h, size=skips[-1].shape[-2:], mode="nearest"))
        return self.out(F.silu(self.out_norm(h)))  # (N, outputs * C, H, W)
