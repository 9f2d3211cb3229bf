"""Convolutional encoder and decoder of the VQ-VAE (van den Oord et al. 2017, section 4.1:
strided convolutions, residual 3x3 -> 1x1 blocks, transposed convolutions back)."""
from __future__ import annotations

from torch import Tensor, nn


class Residual(nn.Module):
    """h + 1x1(ReLU(3x3(ReLU(h)))): (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(channels, channels, 1))

    def forward(self, h: Tensor) -> Tensor:
        return h + self.net(h)


def encoder(in_channels: int, channels: int, downsample: int, n_res: int, code_dim: int) -> nn.Sequential:
    """(N, C, H, W) -> (N, d, H / 2^s, W / 2^s): s stride-2 4x4 convolutions, residual blocks, 1x1 to d."""
    layers: list[nn.Module] = []
    c = in_channels
    for _ in range(downsample):
        layers += [nn.Conv2d(c, channels, 4, stride=2, padding=1), nn.ReLU()]
        c = channels
    if downsample == 0:
        layers += [nn.Conv2d(c, channels, 3, padding=1)]
    layers += [Residual(channels) for _ in range(n_res)]
    layers += [nn.ReLU(), nn.Conv2d(channels, code_dim, 1)]
    return nn.Sequential(*layers)


def decoder(code_dim: int, channels: int, upsample: int, n_res: int, out_channels: int) -> nn.Sequential:
    """(N, d, h, w) -> (N, out, h 2^s, w 2^s): 3x3 conv, residual blocks, s stride-2 transposed convs."""
    layers: list[nn.Module] = [nn.Conv2d(code_dim, channels, 3, padding=1)]
    layers += [Residual(channels) for _ in range(n_res)]
    layers += [nn.ReLU()]
    for i in range(upsample):
        last = i == upsample - 1
        layers += [nn.ConvTranspose2d(channels, out_channels if last else channels, 4, stride=2, padding=1)]
        if not last:
            layers += [nn.ReLU()]
    if upsample == 0:
        layers += [nn.Conv2d(channels, out_channels, 1)]
    return nn.Sequential(*layers)
