"""The class prior p(y) of a label-conditional model: the training set's class frequencies.

A conditional model gives p(x | y); its marginal p(x) = sum_y p(y) p(x | y) and its generative
classifier argmax_y log p(x | y) + log p(y) need p(y) as well. :class:`ClassPrior` counts the labels
of each training epoch (summed over DDP ranks when the epoch ends) and keeps the last complete
epoch's counts as a buffer, so a checkpoint carries them. Before any epoch completes p(y) is uniform.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn


class ClassPrior(nn.Module):
    """p(y) = n_y / sum_c n_c from the labels of the last training epoch; uniform before any."""

    def __init__(self, num_classes: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        self.register_buffer("counts", torch.zeros(self.num_classes))   # (C,) last complete epoch
        self.register_buffer("pending", torch.zeros(self.num_classes))  # (C,) the current epoch so far

    @torch.no_grad()
    def observe(self, labels: Tensor) -> None:
        """Count a batch of labels (*batch,) of the current epoch."""
        self.pending += torch.bincount(labels.reshape(-1).long(), minlength=self.num_classes).to(self.pending)

    @torch.no_grad()
    def commit(self) -> None:
        """End of an epoch: the epoch's counts (summed over DDP ranks) become p(y). Every rank must call it."""
        pending = self.pending.clone()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(pending)
        if float(pending.sum()) > 0:
            self.counts.copy_(pending)
        self.pending.zero_()

    def set_counts(self, counts: Tensor) -> None:
        """Set the class counts directly, e.g. from the labels a mixture was fitted to: (C,)."""
        with torch.no_grad():
            self.counts.copy_(torch.as_tensor(counts, dtype=self.counts.dtype))

    def log_probs(self) -> Tensor:
        """(C,) log p(y); classes never seen get -inf."""
        total = self.counts.sum()
        if float(total) <= 0:
            return torch.full_like(self.counts, -math.log(self.num_classes))
        return torch.log(self.counts / total)

    def sample(self, shape: torch.Size) -> Tensor:
        """Labels y ~ p(y) of shape ``shape`` (a LongTensor)."""
        n = math.prod(shape)
        probs = torch.softmax(self.log_probs(), 0)
        return torch.multinomial(probs, max(n, 1), replacement=True)[:n].reshape(shape)
