"""A categorical PixelCNN over a grid of discrete codes: the VQ-VAE's learned prior p(z).

A. van den Oord, N. Kalchbrenner and K. Kavukcuoglu, "Pixel Recurrent Neural Networks", ICML 2016
(sections 3.4-3.5), as used for the VQ-VAE prior by van den Oord, Vinyals and Kavukcuoglu,
"Neural Discrete Representation Learning", NeurIPS 2017.

    p(z) = prod_{i} p(z_i | z_<i),   p(z_i = k | z_<i) = softmax_k(f(z_<i)),   i in raster order,

over an h x w grid of codes in {0, ..., K-1}. The network is built from the autoregressive
family's masked convolutions (``zoo_autoregressive.nets``): the codes enter as K one-hot
channels, a type-A k x k convolution (centre excluded for every channel, so position i sees only
z_<i), residual blocks of type-B 3x3 convolutions, and a 1x1 head to K logits per position.
Every position is one categorical variable, so no channel grouping is needed. log p(z) costs
one pass; sampling costs h * w passes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo_autoregressive.nets import MaskedConv2d, ResidualBlock


class CodePixelCNN(nn.Module):
    """codes (N, h, w) in [0, K) -> logits (N, K, h, w) of p(z_i | z_<i)."""

    def __init__(self, num_codes: int, channels: int, n_layers: int, kernel_size: int):
        super().__init__()
        self.num_codes = num_codes
        self.input_conv = MaskedConv2d("A", num_codes, channels, kernel_size)
        self.blocks = nn.Sequential(*[ResidualBlock(channels) for _ in range(n_layers)])
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(),
                                  nn.Conv2d(channels, num_codes, 1))

    def forward_onehot(self, onehot: Tensor) -> Tensor:
        """(N, K, h, w) one-hot (or any real) inputs -> (N, K, h, w) logits."""
        return self.head(self.blocks(self.input_conv(onehot)))

    def forward(self, codes: Tensor) -> Tensor:
        onehot = F.one_hot(codes, self.num_codes).permute(0, 3, 1, 2).to(self.head[-1].weight.dtype)  # (N, K, h, w)
        return self.forward_onehot(onehot)

    def log_prob(self, codes: Tensor) -> Tensor:
        """(N, h, w) -> (N,): log p(z) in nats."""
        return -F.cross_entropy(self(codes), codes, reduction="none").sum((1, 2))

    @torch.no_grad()
    def sample(self, n: int, h: int, w: int, device) -> Tensor:
        """(n, h, w) codes drawn position by position in raster order."""
        codes = torch.zeros(n, h, w, dtype=torch.long, device=device)
        for i in range(h):
            for j in range(w):
                probs = torch.softmax(self(codes)[:, :, i, j].double(), dim=1)  # (n, K)
                codes[:, i, j] = torch.multinomial(probs, 1)[:, 0]
        return codes
