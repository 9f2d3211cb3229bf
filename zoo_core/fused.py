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


#: Lightning's hooks around one manual optimiser step (backward and step): the fused loop may call
#: backward and the optimiser directly only where none of them does anything
STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


def direct_steps(trainer, model, base) -> bool:
    """Whether the fused loop may call ``loss.backward()`` and the optimiser itself instead of
    Lightning's ``manual_backward`` and ``LightningOptimizer.step``, with the same effect: one
    process (no gradient synchronisation to arm), a precision without loss scaling, no
    ``backward`` of the model's own, and no callback or model hook listening around the step
    (``base``: the class whose hooks are known to do nothing in a fused step). On a CPU these
    hook dispatches cost about a sixth of a small model's step (gmm-moons, 1.1 ms)."""
    import pytorch_lightning as pl
    from pytorch_lightning.plugins.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision
    from pytorch_lightning.strategies import SingleDeviceStrategy

    precision = trainer.precision_plugin
    if not isinstance(trainer.strategy, SingleDeviceStrategy):
        return False
    if type(precision) not in (Precision, DoublePrecision, HalfPrecision, MixedPrecision):
        return False
    if getattr(precision, "scaler", None) is not None or type(model).backward is not pl.LightningModule.backward:
        return False
    if any(getattr(type(model), hook) is not getattr(base, hook) for hook in STEP_HOOKS):
        return False
    return not any(getattr(type(cb), hook) is not getattr(pl.Callback, hook)
                   for cb in trainer.callbacks for hook in STEP_HOOKS)
