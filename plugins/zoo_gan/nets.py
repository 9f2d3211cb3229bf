"""Generator and discriminator networks of the GAN family.

- MLPs (any data; flattened): the generator maps z (N, L) to (N, D), the discriminator maps
  (N, D) to one logit (N,). ReLU in the generator, LeakyReLU(0.2) in the discriminator.
- DCGAN-style conv nets (Radford et al. 2016, "Unsupervised Representation Learning with Deep
  Convolutional Generative Adversarial Networks", arXiv:1511.06434) for (C, H, W) images with
  H and W divisible by 4 (8x8 digits, 28x28 MNIST): the generator projects z to a
  (2w, H/4, W/4) map, then two stride-2 transposed convolutions (BatchNorm + ReLU between)
  double the resolution twice; the discriminator mirrors it with two stride-2 convolutions
  and LeakyReLU(0.2), then a linear layer to one logit. The discriminator has no BatchNorm, so
  each example's logit depends on that example alone (needed by the gradient penalty of
  WGAN-GP and harmless otherwise).

Generators return *pre-activation* outputs; the model applies the output map (identity for
real-valued data, a sigmoid for images in [0, 1]).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

LEAK = 0.2


def _maybe_sn(layer: nn.Module, spectral: bool) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018): W / sigma(W), sigma by one power iteration per
    training forward pass; the power-iteration vectors u, v are buffers (``..._u``, ``..._v``)."""
    return _spectral_norm(layer) if spectral else layer


class MLPGenerator(nn.Module):
    """z (N, L) -> pre-activation x (N, *event_shape)."""

    def __init__(self, latent_dim: int, hidden: Sequence[int], event_shape: Sequence[int]):
        super().__init__()
        self.event_shape = tuple(event_shape)
        dims = int(torch.Size(self.event_shape).numel())
        layers: list[nn.Module] = []
        sizes = [latent_dim, *hidden]
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], dims))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).reshape(len(z), *self.event_shape)  # (N, *event_shape)


class MLPDiscriminator(nn.Module):
    """x (N, *event_shape) -> logit (N,)."""

    def __init__(self, hidden: Sequence[int], event_shape: Sequence[int], spectral: bool = False):
        super().__init__()
        dims = int(torch.Size(tuple(event_shape)).numel())
        layers: list[nn.Module] = []
        sizes = [dims, *hidden]
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers += [_maybe_sn(nn.Linear(n_in, n_out), spectral), nn.LeakyReLU(LEAK)]
        layers.append(_maybe_sn(nn.Linear(sizes[-1], 1), spectral))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.reshape(len(x), -1)).squeeze(-1)  # (N,)


class ConvGenerator(nn.Module):
    """DCGAN generator: z (N, L) -> pre-activation images (N, C, H, W), H and W divisible by 4."""

    def __init__(self, latent_dim: int, width: int, event_shape: Sequence[int]):
        super().__init__()
        c, h, w = event_shape
        self.start = (2 * width, h // 4, w // 4)
        self.project = nn.Linear(latent_dim, 2 * width * (h // 4) * (w // 4), bias=False)
        self.net = nn.Sequential(
            nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1, bias=False),  # (N, w, H/2, W/2)
            nn.BatchNorm2d(width), nn.ReLU(),
            nn.ConvTranspose2d(width, c, 4, stride=2, padding=1),  # (N, C, H, W)
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(self.project(z).reshape(len(z), *self.start))


class ConvDiscriminator(nn.Module):
    """DCGAN discriminator: images (N, C, H, W) -> logit (N,)."""

    def __init__(self, width: int, event_shape: Sequence[int], spectral: bool = False):
        super().__init__()
        c, h, w = event_shape
        self.net = nn.Sequential(
            _maybe_sn(nn.Conv2d(c, width, 4, stride=2, padding=1), spectral), nn.LeakyReLU(LEAK),  # (N, w, H/2, W/2)
            _maybe_sn(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), spectral), nn.LeakyReLU(LEAK),
            nn.Flatten(),  # (N, 2w * H/4 * W/4)
            _maybe_sn(nn.Linear(2 * width * (h // 4) * (w // 4), 1), spectral),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)  # (N,)
