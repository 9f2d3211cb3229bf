"""The Metric interface."""
from __future__ import annotations

import abc
from typing import Any

import torch.distributed as dist
from torch import Tensor


def all_reduce_sum(values: Tensor) -> Tensor:
    """Sum a float64 tensor over all processes (a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


class Metric(abc.ABC):
    """Accumulates over test batches; ``compute`` returns flat ``{key: value}`` results."""

    name: str = ""
    #: one line for ``zoo eval --help``: what the metric measures
    summary: str = ""
    #: the result keys ``compute`` writes, headline first: ``expected:`` entries are checked against
    #: them (``zoo list``), and the leaderboard shows the first of a plugin's metric
    summary_keys: tuple[str, ...] = ()

    def __init__(self, **settings: Any):
        self.settings = settings

    def applies_to(self, model) -> bool:
        """Whether this metric is defined for ``model`` (e.g. NLL needs a likelihood)."""
        return True

    def describe(self, model) -> str:
        """One line on what was measured (which bound, K, sample count, feature extractor)."""
        return self.name

    @abc.abstractmethod
    def reset(self) -> None: ...

    @abc.abstractmethod
    def update(self, model, x: Tensor, context: Tensor | None = None) -> None:
        """Accumulate one batch x (N, *event_shape); ``context`` holds its labels for conditional models."""

    @abc.abstractmethod
    def compute(self, model) -> dict[str, Any]: ...
