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

Class-conditional nets (``num_classes > 0``; T. Miyato and M. Koyama, "cGANs with Projection
Discriminator", ICLR 2018, arXiv:1802.05637): the generator takes [z, e(y)], z concatenated with a
learnt class embedding e(y) of the same width as z; the discriminator is the projection
discriminator D(x, y) = psi(phi(x)) + v_y^T phi(x), phi its last hidden features, psi its
linear head and v_y a learnt class embedding (spectrally normalised with the rest of D).
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


class ClassInput(nn.Module):
    """[z, e(y)]: z (N, L) with a learnt embedding e(y) (N, L) of labels y (N,) -> (N, 2L); z alone
    when unconditional (``num_classes`` 0)."""

    def __init__(self, latent_dim: int, num_classes: int = 0):
        super().__init__()
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes else None

    def forward(self, z: Tensor, y: Tensor | None) -> Tensor:
        if self.embed is None:
            return z
        return torch.cat([z, self.embed(y)], dim=-1)


class MLPGenerator(nn.Module):
    """z (N, L) [, labels (N,)] -> pre-activation x (N, *event_shape)."""

    def __init__(self, latent_dim: int, hidden: Sequence[int], event_shape: Sequence[int], num_classes: int = 0):
        super().__init__()
        self.event_shape = tuple(event_shape)
        dims = int(torch.Size(self.event_shape).numel())
        if num_classes:
            self.classes = ClassInput(latent_dim, num_classes)
        layers: list[nn.Module] = []
        sizes = [latent_dim * (2 if num_classes else 1), *hidden]
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], dims))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        if hasattr(self, "classes"):
            z = self.classes(z, y)  # (N, 2L)
        return self.net(z).reshape(len(z), *self.event_shape)  # (N, *event_shape)


class Projection(nn.Module):
    """The class term v_y^T phi(x) of a projection discriminator: features (N, F), labels (N,) -> (N,)."""

    def __init__(self, num_classes: int, features: int, spectral: bool):
        super().__init__()
        embed = nn.Embedding(num_classes, features)
        nn.init.normal_(embed.weight, 0.0, 0.02)  # starts near the unconditional discriminator
        self.embed = _maybe_sn(embed, spectral)

    def forward(self, phi: Tensor, y: Tensor) -> Tensor:
        return (self.embed(y) * phi).sum(-1)


def _project(module: nn.Module, phi: Tensor, y: Tensor | None) -> Tensor:
    """psi(phi) + v_y^T phi for a conditional discriminator (``module.projection``), else psi(phi): (N,)."""
    out = module.net[-1](phi).squeeze(-1)  # (N,)
    if hasattr(module, "projection"):
        if y is None:
            raise ValueError("a conditional discriminator needs the labels y")
        out = out + module.projection(phi, y)
    return out


class MLPDiscriminator(nn.Module):
    """x (N, *event_shape) [, labels (N,)] -> logit (N,)."""

    def __init__(self, hidden: Sequence[int], event_shape: Sequence[int], spectral: bool = False,
                 num_classes: int = 0):
        super().__init__()
        dims = int(torch.Size(tuple(event_shape)).numel())
        layers: list[nn.Module] = []
        sizes = [dims, *hidden]
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers += [_maybe_sn(nn.Linear(n_in, n_out), spectral), nn.LeakyReLU(LEAK)]
        layers.append(_maybe_sn(nn.Linear(sizes[-1], 1), spectral))
        self.net = nn.Sequential(*layers)
        if num_classes:
            self.projection = Projection(num_classes, sizes[-1], spectral)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        phi = self.net[:-1](x.reshape(len(x), -1))  # (N, F) last hidden features
        return _project(self, phi, y)  # (N,)


class ConvGenerator(nn.Module):
    """DCGAN generator: z (N, L) -> pre-activation images (N, C, H, W), H and W divisible by 4."""

    def __init__(self, latent_dim: int, width: int, event_shape: Sequence[int], num_classes: int = 0):
        super().__init__()
        c, h, w = event_shape
        self.start = (2 * width, h // 4, w // 4)
        if num_classes:
            self.classes = ClassInput(latent_dim, num_classes)
        self.project = nn.Linear(latent_dim * (2 if num_classes else 1), 2 * width * (h // 4) * (w // 4), bias=False)
        self.net = nn.Sequential(
            nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1, bias=False),  # (N, w, H/2, W/2)
            nn.BatchNorm2d(width), nn.ReLU(),
            nn.ConvTranspose2d(width, c, 4, stride=2, padding=1),  # (N, C, H, W)
        )

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        if hasattr(self, "classes"):
            z = self.classes(z, y)  # (N, 2L)
        return self.net(self.project(z).reshape(len(z), *self.start))


class ConvDiscriminator(nn.Module):
    """DCGAN discriminator: images (N, C, H, W) -> logit (N,)."""

    def __init__(self, width: int, event_shape: Sequence[int], spectral: bool = False, num_classes: int = 0):
        super().__init__()
        c, h, w = event_shape
        self.net = nn.Sequential(
            _maybe_sn(nn.Conv2d(c, width, 4, stride=2, padding=1), spectral), nn.LeakyReLU(LEAK),  # (N, w, H/2, W/2)
            _maybe_sn(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), spectral), nn.LeakyReLU(LEAK),
            nn.Flatten(),  # (N, 2w * H/4 * W/4)
            _maybe_sn(nn.Linear(2 * width * (h // 4) * (w // 4), 1), spectral),
        )
        if num_classes:
            self.projection = Projection(num_classes, 2 * width * (h // 4) * (w // 4), spectral)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        phi = self.net[:-1](x)  # (N, 2w * H/4 * W/4) flattened features
        return _project(self, phi, y)  # (N,)
