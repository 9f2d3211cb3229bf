"""Evaluation metrics, registered through the ``register_metrics`` hook.

A metric accumulates sums over batches on each process and reduces them over DDP ranks in
float64 in ``compute``, so the value from N processes equals the single-process value on the
same data (the eval loaders partition the data without padding). Each metric declares the keys
it writes (``summary_keys``), which the leaderboard, ``expected:`` and ``--check`` read.
"""
__all__ = ["Metric", "NLL", "all_reduce_sum"]


def __getattr__(name: str):  # torch loads on first use, not when the package is named
    if name in ("Metric", "all_reduce_sum"):
        from zoo_core.metrics import base

        return getattr(base, name)
    if name == "NLL":
        from zoo_core.metrics.nll import NLL

        return NLL
    raise AttributeError(f"module 'zoo_core.metrics' has no attribute {name!r}")
