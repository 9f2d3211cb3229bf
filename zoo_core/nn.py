"""Small network pieces shared by the families."""
from __future__ import annotations

from typing import Sequence

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU, "silu": nn.SiLU,
               "gelu": nn.GELU}


def mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """Linear layers between consecutive sizes, ``activation`` after every layer but the last."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def ema_update(ema: nn.Module, model: nn.Module, updates: int, decay: float) -> None:
    """One step of an exponential moving average of ``model``'s weights into ``ema``, with the
    warm-up decay min(decay, (1 + n) / (10 + n)) after n updates (as in TensorFlow's
    ExponentialMovingAverage with num_updates); buffers are copied."""
    import torch

    rate = 1 - min(decay, (1 + updates) / (10 + updates))
    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), model.parameters()):
            p_ema.lerp_(p.detach(), rate)
        for b_ema, b in zip(ema.buffers(), model.buffers()):
            b_ema.copy_(b)
