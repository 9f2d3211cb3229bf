"""Evaluation metrics, registered through the ``register_metrics`` hook.

A metric accumulates sums over batches on each process and reduces them over DDP ranks in
float64 in ``compute``, so the value from N processes equals the single-process value on the
same data (the eval loaders partition the data without padding).
"""
from zoo_core.metrics.base import Metric, all_reduce_sum
from zoo_core.metrics.nll import NLL

__all__ = ["Metric", "NLL", "all_reduce_sum"]
