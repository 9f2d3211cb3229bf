"""Velocity networks v_theta(x, t) for flow matching, t in [0, 1].

- :class:`VelocityMLP`: for vectors (N, D): the MLP of ``zoo_core.nn.mlp`` on [x, emb(t)].
- :class:`VelocityConvNet`: for images (N, C, H, W): residual 3x3 convolution blocks at full
  resolution (GroupNorm, SiLU, a per-block dilation to widen the receptive field cheaply), the time
  embedding added inside every block, a zero-initialised output convolution.

Both treat examples independently (GroupNorm, no batch statistics), as the ODE likelihood needs.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo_core.nn import mlp


def time_features(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of t in [0, 1] (scaled by 1000, as diffusion timesteps are):
    (N,) -> (N, dim), [cos(1000 t f_i), sin(1000 t f_i)], f_i = max_period^(-i / (dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=t.dtype) / half)
    args = 1000.0 * t[:, None] * freqs[None, :]  # (N, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], -1)  # (N, 2 half)
    return F.pad(emb, (0, dim % 2))


class VelocityMLP(nn.Module):
    """v_theta for flat data: x (N, D), t (N,) -> (N, D)."""

    def __init__(self, dim: int, hidden: Sequence[int], activation: str, time_dim: int):
        super().__init__()
        self.time_dim = time_dim
        self.net = mlp([dim + time_dim, *hidden, dim], activation)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(torch.cat([x, time_features(t.to(x.dtype), self.time_dim)], -1))


class ConvBlock(nn.Module):
    """h -> h + conv(SiLU(GN(conv(SiLU(GN(h))) + W temb))), 3x3 convolutions with dilation ``dilation``."""

    def __init__(self, channels: int, time_dim: int, dilation: int):
        super().__init__()
        groups = math.gcd(8, channels)
        self.norm1, self.norm2 = nn.GroupNorm(groups, channels), nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.temb = nn.Linear(time_dim, channels)

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        a = self.conv1(F.silu(self.norm1(h))) + self.temb(temb)[:, :, None, None]  # (N, C, H, W)
        return h + self.conv2(F.silu(self.norm2(a)))


class VelocityConvNet(nn.Module):
    """v_theta for images: x (N, C, H, W), t (N,) -> (N, C, H, W)."""

    def __init__(self, in_channels: int, channels: int, dilations: Sequence[int], time_dim: int):
        super().__init__()
        self.time_dim = time_dim
        self.time = nn.Sequential(nn.Linear(time_dim, 2 * time_dim), nn.SiLU(), nn.Linear(2 * time_dim, time_dim))
        self.inp = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.blocks = nn.ModuleList(ConvBlock(channels, time_dim, int(d)) for d in dilations)
        self.norm = nn.GroupNorm(math.gcd(8, channels), channels)
        self.out = nn.Conv2d(channels, in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        temb = F.silu(self.time(time_features(t.to(x.dtype), self.time_dim)))  # (N, E)
        h = self.inp(x)  # (N, C', H, W)
        for block in self.blocks:
            h = block(h, temb)
        return self.out(F.silu(self.norm(h)))
