"""Fused optimiser steps (``train.fused_steps: k``): several optimiser steps per Lightning step.

On a CPU, Lightning's own per-step machinery (loops, hooks, closure, progress tracking, the
loader wrapper) costs a fixed fraction of a millisecond or more per step; for small models that
is a large share of each step. With ``k`` fused steps the training loader hands the model ``k``
consecutive batches at once (a :class:`FusedBatches`), and the model's ``training_step`` takes
one optimiser step per batch itself (Lightning's manual optimisation), so that fixed cost is paid
once per ``k`` steps. The batches, their order and noise, the updates, gradient clipping, the
divergence checks, the step-wise learning-rate schedule and ``max_steps`` are those of ``k = 1``;
what changes is how often Lightning's per-batch hooks run: the training loss is logged, and a
mid-epoch checkpoint can be written, once per group of ``k`` batches.
"""
from __future__ import annotations


class FusedBatches(list):
    """``k`` consecutive training batches (each ``x`` or ``(x, y)``) delivered as one loader item."""
