"""Label-free image features for the sample metrics: a fixed, seeded, *untrained* convolutional network.

For an image dataset without a trained zoo classifier (``zoo_core.metrics.classifier``: digits and
MNIST only), the Fréchet distance and precision/recall are computed in the features of a randomly
initialised CNN, as Naeem et al. 2020 ("Reliable Fidelity and Diversity Metrics for Generative
Models", section 5) propose for data far from ImageNet: random embeddings need no labels and no
training, and still separate image distributions by their local statistics.

The network (weights drawn once from ``torch.Generator().manual_seed(SEED)``, He-normal: N(0, 2 / fan_in),
biases zero; so the same on every machine and process):

    x in [0, 1] -> 2 x - 1 -> conv3x3(C -> 32) -> ReLU -> avg-pool to ceil(H/2) x ceil(W/2)
                -> conv3x3(32 -> 64) -> ReLU -> avg-pool to 2 x 2 -> flatten: 256 features

Values are comparable between runs of the same dataset, image shape and representation only.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

SEED = 0
WIDTHS = (32, 64)
POOL = 2  # final spatial size: features = WIDTHS[-1] * POOL * POOL


class RandomConvFeatures(nn.Module):
    """(N, C, H, W) float images in [0, 1] -> (N, 256) features of a fixed random CNN; ``num_features``
    and ``describe()`` as the zoo's classifier extractors have them. Always in eval mode, no gradients."""

    def __init__(self, event_shape: tuple[int, ...], name: str = "images"):
        super().__init__()
        c, h, w = (int(d) for d in event_shape)
        self.name = name
        self.event_shape = (c, h, w)
        self.net = nn.Sequential(
            nn.Conv2d(c, WIDTHS[0], 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d((math.ceil(h / 2), math.ceil(w / 2))),  # (N, 32, H/2, W/2)
            nn.Conv2d(WIDTHS[0], WIDTHS[1], 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d((POOL, POOL)), nn.Flatten())  # (N, 256)
        gen = torch.Generator().manual_seed(SEED)
        with torch.no_grad():
            for layer in self.net:
                if isinstance(layer, nn.Conv2d):
                    fan_in = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * math.sqrt(2.0 / fan_in))
                    layer.bias.zero_()
        self.num_features = WIDTHS[-1] * POOL * POOL
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "RandomConvFeatures":
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        x = x.to(dtype=torch.float32, device=self.net[0].weight.device).clamp(0.0, 1.0) * 2.0 - 1.0
        if not len(x):
            return torch.zeros(0, self.num_features)
        return torch.cat([self.net(chunk) for chunk in x.split(1000)])  # (N, 256)

    def describe(self) -> str:
        c, h, w = self.event_shape
        return (f"random-CNN features (label-free: an untrained, seed-{SEED} He-normal conv net "
                f"{c}-{WIDTHS[0]}-{WIDTHS[1]} channels on {h}x{w} images, {self.num_features} features; "
                f"Naeem et al. 2020)")
