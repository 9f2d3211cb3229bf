"""GenerativeModel: the abstract LightningModule every family implements.

Conventions follow ``torch.distributions``:

- ``log_prob(x)``: ``x`` of shape ``(*batch, *event_shape)`` -> ``(*batch,)`` in nats, never reduced.
  Its value is a density of the model's own data representation (see ``zoo_core.data.spec``);
  the runner adds ``DataSpec.log_prob_offset`` to report likelihoods in the original discrete space.
- ``sample(sample_shape)`` -> ``(*sample_shape, *event_shape)``.
- ``loss(x)`` -> the scalar that training minimises (a mean over the batch).

``likelihood`` declares what ``log_prob`` returns: ``"exact"``, ``"bound"`` (``bound_name``
says which, e.g. the ELBO or the importance-weighted bound with K samples) or ``"none"``
(``log_prob`` raises :class:`NoLikelihoodError`).

The Lightning plumbing (steps, ``train/`` and ``val/`` logging, optimisers from the registry
entry, ``save_hyperparameters``) lives here; a family overrides what it must.
"""
from __future__ import annotations

import abc
import math
from typing import Any, ClassVar, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor

from zoo_core.data.spec import DataSpec
from zoo_core.optim import DEFAULT_OPTIM, OPTIMIZER_NAMES
from zoo_core.errors import ConfigError, ContextError, InterfaceError, NoLikelihoodError, TrainingDiverged
from zoo_core.fused import FusedBatches, direct_steps

LIKELIHOOD_KINDS = ("exact", "bound", "none")


def _with_gradients(optimizer) -> list[tuple[int, Tensor]]:
    """(parameter group index, parameter) of every parameter of ``optimizer`` that has a gradient."""
    return [(g, p) for g, group in enumerate(optimizer.param_groups) for p in group["params"] if p.grad is not None]
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
assert tuple(OPTIMIZERS) == OPTIMIZER_NAMES


def as_sample_shape(sample_shape: int | Sequence[int] | torch.Size) -> torch.Size:
    if isinstance(sample_shape, int):
        return torch.Size([sample_shape])
    return torch.Size(sample_shape)


class GenerativeModel(pl.LightningModule, abc.ABC):
    """Base class of every family. Subclasses set ``family`` and ``likelihood`` and implement
    ``log_prob``, ``sample`` and ``loss``.

    Constructor arguments: ``data`` (a :class:`DataSpec` as a dict; the runner fills it from the
    datamodule), ``optim`` (the registry entry's optimiser settings), then the family's own model
    parameters as keyword arguments. All of them are saved as hyperparameters, so a checkpoint
    alone rebuilds the model.
    """

    family: ClassVar[str] = ""
    likelihood: ClassVar[str] = "exact"
    #: Whether the family can take a context (``log_prob(x, context)``, ``sample(shape, context)``).
    conditional: ClassVar[bool] = False
    #: For conditional families: whether ``sample`` without a context draws from the marginal.
    samples_marginal: ClassVar[bool] = True
    #: The data representations the family models (see ``zoo_core.data.spec.REPRESENTATIONS``).
    representations: ClassVar[tuple[str, ...]] = ("binarized", "dequantized", "continuous")
    #: The ranks of ``event_shape`` it models: 1 for vectors (D,), 3 for images (C, H, W).
    event_ranks: ClassVar[tuple[int, ...]] = (1, 3)
    #: For ``likelihood == "none"``: what to compare the family with instead.
    no_likelihood_alternatives: ClassVar[str] = "sample-quality metrics"

    def __init__(self, data: dict, optim: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.data_spec = DataSpec.from_dict(data)
        self.event_shape = torch.Size(self.data_spec.event_shape)
        unknown = set(optim or {}) - set(DEFAULT_OPTIM)
        if unknown:
            raise ValueError(f"unknown optimiser settings {sorted(unknown)}; expected some of {sorted(DEFAULT_OPTIM)}")
        self.optim_config = {**DEFAULT_OPTIM, **(optim or {})}
        self.zoo_metrics: list = []  # set by the runner before testing
        self.zoo_results: dict[str, float] = {}
        # Set once data-dependent initialisation ran; a buffer, so a resumed run does not redo it.
        self.register_buffer("_zoo_data_initialised", torch.tensor(False))

    # ---- the interface: public methods check the contract once, families implement the _methods ----
    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """(*batch, *event_shape) -> (*batch,) log-density (or its bound) in nats.

        ``context`` (conditional families only): class labels of shape (*batch,), or a context
        tensor of shape (*batch, *context_shape)."""
        batch = self.validate_sample(x)
        context = self.check_context(context, batch, "log_prob")
        out = self._log_prob(x, context)
        check_log_prob_shape(self, x, out)
        return out

    def sample(self, sample_shape: int | Sequence[int] | torch.Size = torch.Size(),
               context: Tensor | None = None) -> Tensor:
        """-> (*sample_shape, *event_shape). ``context`` (conditional families): one label (or
        context) for all samples, or one per sample, of shape (*sample_shape, *context_shape)."""
        shape = as_sample_shape(sample_shape)
        context = self.check_context(context, tuple(shape), "sample", broadcast=True)
        out = self._sample(shape, context)
        check_sample_shape(self, out, shape)
        return out

    @abc.abstractmethod
    def _log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """What a family implements: x (*batch, *event_shape) -> (*batch,); context already checked."""

    @abc.abstractmethod
    def _sample(self, sample_shape: torch.Size, context: Tensor | None = None) -> Tensor:
        """What a family implements: -> (*sample_shape, *event_shape); context already broadcast
        to (*sample_shape, *context_shape) or None."""

    @abc.abstractmethod
    def loss(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """(batch, *event_shape) -> scalar training objective."""

    # ---- conditioning ------------------------------------------------------------------------
    @property
    def num_classes(self) -> int | None:
        """Number of classes a label-conditional model was built for (from its DataSpec)."""
        return self.data_spec.num_classes

    @property
    def is_conditional(self) -> bool:
        """Whether this model was built to take a context (a conditional family on labelled data)."""
        return bool(self.conditional and self.data_spec.conditional)

    def check_context(self, context: Tensor | None, batch: tuple[int, ...], method: str,
                      broadcast: bool = False) -> Tensor | None:
        """Validate ``context`` against the batch shape: labels (*batch,) in [0, num_classes),
        or (*batch, *context_shape). With ``broadcast`` a single label/context is expanded."""
        if context is None:
            if self.is_conditional and not self.samples_marginal and method == "sample":
                raise ContextError(f"family '{self.family}' is conditional and cannot sample its marginal; "
                                   f"pass context= (class labels of shape {batch})")
            return None
        if not self.is_conditional:
            why = ("is not conditional" if not self.conditional
                   else "was trained without labels (set data.conditional: true)")
            raise ContextError(f"family '{self.family}' {why}; {method} takes no context")
        if not isinstance(context, Tensor):
            context = torch.as_tensor(context)
        context = context.to(self.device)
        cshape = tuple(self.data_spec.context_shape)
        tail = context.shape[context.dim() - len(cshape):] if cshape else ()
        if tuple(tail) != cshape:
            raise ContextError(f"family '{self.family}': {method} context of shape {tuple(context.shape)}; "
                               f"expected (*batch, {', '.join(map(str, cshape))})")
        lead = tuple(context.shape[: context.dim() - len(cshape)])
        if lead != tuple(batch):
            if broadcast and lead in ((), (1,)):
                context = context.reshape(*cshape).expand(*batch, *cshape) if cshape else \
                    context.reshape(()).expand(*batch)
            else:
                raise ContextError(f"family '{self.family}': {method} context of shape {tuple(context.shape)} "
                                   f"does not match the batch shape {tuple(batch)}")
        if not cshape:  # class labels
            if context.is_floating_point():
                if not bool((context == context.round()).all()):
                    raise ContextError(f"family '{self.family}': class labels must be integers, "
                                       f"got {context.dtype} values")
            context = context.long()
            k = self.num_classes
            if context.numel() and (int(context.min()) < 0 or int(context.max()) >= k):
                raise ContextError(f"family '{self.family}': class labels must be in [0, {k}), got values in "
                                   f"[{int(context.min())}, {int(context.max())}]")
        return context

    def split_batch(self, batch) -> tuple[Tensor, Tensor | None]:
        """A datamodule yields x, or (x, y) where labels exist; y is the context of conditional models."""
        if isinstance(batch, (tuple, list)):
            x, y = batch[0], (batch[1] if len(batch) > 1 else None)
            return x, (y if self.is_conditional else None)
        return batch, None

    # ---- helpers for families --------------------------------------------------------------
    def likelihood_description(self) -> str:
        """What ``log_prob`` measures, for metric output (e.g. 'exact', 'ELBO', 'IWAE bound, K=5000')."""
        return {"exact": "exact log-likelihood", "none": "no likelihood"}.get(self.likelihood, "a lower bound")

    def validate_sample(self, x: Tensor) -> tuple[int, ...]:
        """Check ``x`` ends in ``event_shape``; return the batch shape. Raises ValueError otherwise."""
        n = len(self.event_shape)
        if not isinstance(x, Tensor):
            raise ValueError(f"{self.family}: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() < n or tuple(x.shape[x.dim() - n:]) != tuple(self.event_shape):
            expected = "(*batch, " + ", ".join(str(d) for d in self.event_shape) + ")"
            raise ValueError(f"{self.family}: expected x of shape {expected}, got {tuple(x.shape)}")
        return tuple(x.shape[: x.dim() - n])

    def no_likelihood(self) -> NoLikelihoodError:
        return NoLikelihoodError(self.family, self.no_likelihood_alternatives)

    def init_from_data(self, x: Tensor) -> None:
        """Optional data-dependent initialisation (k-means, ActNorm, ...), called once before the
        first training step with a deterministic batch of training data, identical on every rank."""

    def reference_log_prob(self, x: Tensor) -> Tensor | None:
        """An independent exact log-likelihood for testing bounds (e.g. by quadrature over a small
        latent space); None where the family has none. Used by the conformance kit."""
        return None

    def sample_for_display(self, n: int) -> Tensor:
        """Samples for pictures; a family may return e.g. decoder means instead (and say so)."""
        return self.sample((n,))

    def reconstruct(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Optional, for autoencoding families: (N, *event_shape) -> x_hat of the same shape, the
        decoder's mean at the encoder's mean (Bernoulli probabilities for binarised data). Families
        that implement it are evaluated by the ``reconstruction`` metric."""
        raise NotImplementedError(f"family '{self.family}' does not reconstruct its inputs")

    def configure_evaluation(self, eval_config: dict) -> None:
        """Apply the registry entry's ``eval`` settings (e.g. the number of importance samples)."""

    # ---- Lightning plumbing ----------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> Tensor:
        if isinstance(batch, FusedBatches):
            return self._fused_training_step(batch, batch_idx)
        x, context = self.split_batch(batch)
        self.on_training_batch(x, context)
        loss = self.loss(x, context)
        self.check_finite(loss, "loss")
        if batch_idx == 0 or self.logs_this_step():  # the first batch too: the bar shows a loss from the start
            self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=len(x))
        return loss

    def on_training_batch(self, x: Tensor, context: Tensor | None) -> None:
        """Per-batch bookkeeping of a family, before the loss of every training batch that gets an
        optimiser step (fused or not); e.g. counting labels. Default: nothing."""

    # ---- fused optimiser steps (train.fused_steps; zoo_core/fused.py) ------------------------------
    fused_steps: int = 1
    #: Lightning hooks a family may not override to fuse steps (they would run once per group of batches)
    FUSED_STEP_HOOKS = ("training_step", "on_train_batch_end", "on_train_batch_start", "optimizer_step",
                        "optimizer_zero_grad", "configure_gradient_clipping")
    #: hooks of FUSED_STEP_HOOKS this family overrides in a way that fuses: a training_step that
    #: hands the shared one every batch it trains on by gradient (per-batch work in on_training_batch)
    FUSED_STEP_HOOKS_HANDLED: tuple[str, ...] = ()

    def fuse_steps(self, k: int, gradient_clip_val: float | None = None) -> None:
        """Take ``k`` optimiser steps per Lightning step, one per batch of a :class:`FusedBatches`
        (Lightning's manual optimisation; the runner then leaves gradient clipping to this model).
        Refused (ConfigError) for a family that steps its own optimisers or overrides a per-batch hook."""
        k = int(k)
        if k == 1:
            return
        why = "steps its own optimisers" if not self.automatic_optimization else next(
            (f"overrides {hook}" for hook in self.FUSED_STEP_HOOKS if hook not in self.FUSED_STEP_HOOKS_HANDLED
             and getattr(type(self), hook) is not getattr(GenerativeModel, hook)), None)
        if why:
            raise ConfigError(f"train.fused_steps: {k}: family '{self.family}' {why}, so its optimiser steps "
                              f"cannot be fused; use train.fused_steps: 1")
        self.fused_steps, self._fused_clip, self._direct_steps = k, gradient_clip_val, None
        self.automatic_optimization = False

    def _fused_training_step(self, batches: FusedBatches, batch_idx: int) -> None:
        """One optimiser step per batch, as Lightning's automatic optimisation takes it: loss check,
        backward, gradient check, clipping, step, then the step-wise learning-rate schedule."""
        trainer = self.trainer
        configs = trainer.lr_scheduler_configs
        if any(c.interval != "step" or c.reduce_on_plateau or c.frequency != 1 for c in configs):
            raise ConfigError(f"train.fused_steps: family '{self.family}' uses a learning-rate schedule that is not "
                              f"stepped after every optimiser step; use train.fused_steps: 1")
        optimizer = self.optimizers()
        if self._direct_steps is None:
            self._direct_steps = direct_steps(trainer, self, GenerativeModel)
        loss, n = None, 0
        for part in batches:
            if 0 <= trainer.max_steps <= self.global_step:
                break
            x, context = self.split_batch(part)
            self.on_training_batch(x, context)
            loss, n = self.loss(x, context), len(x)
            if self._direct_steps:  # what manual_backward does where no hook listens (zoo_core.fused)
                optimizer.zero_grad()
                loss.backward()
                self._check_loss_and_gradients(loss, optimizer.optimizer)
            else:
                self.check_finite(loss, "loss")
                optimizer.zero_grad()
                self.manual_backward(loss)
                self.check_gradients_finite(optimizer.optimizer)  # before clipping, as in automatic optimisation
            if self._fused_clip:
                self.clip_gradients(optimizer, gradient_clip_val=self._fused_clip, gradient_clip_algorithm="norm")
            if self._direct_steps:  # LightningOptimizer.step without the hooks: counts the step, steps
                optimizer._on_before_step()
                optimizer.optimizer.step()
                optimizer._on_after_step()
            else:
                optimizer.step()
            for config in configs:
                config.scheduler.step()
        if loss is not None and (batch_idx == 0 or self.logs_this_step()):
            self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=n)

    def optimizer_steps_estimate(self) -> int | float:
        """How many optimiser steps this run will take (for schedules): Lightning's
        ``estimated_stepping_batches``, in optimiser steps also when they are fused."""
        trainer = self.trainer
        total = trainer.estimated_stepping_batches
        if self.fused_steps == 1:
            return total
        sampler = getattr(trainer.train_dataloader, "sampler", None)
        per_epoch = trainer.num_training_batches * self.fused_steps
        if hasattr(sampler, "batches_per_epoch"):
            per_epoch = min(per_epoch, sampler.batches_per_epoch())
        steps = math.inf if trainer.max_epochs in (None, -1) else per_epoch * max(trainer.max_epochs, 1)
        return min(steps, trainer.max_steps) if trainer.max_steps != -1 else steps

    def logs_this_step(self) -> bool:
        """Whether the loggers record this training step (every ``train.log_every_n_steps``).

        ``self.log`` costs about 0.4 ms of CPU per call in Lightning 2.6 (it re-moves its metric
        state to the device each time), a third of a small model's whole step, and between logging
        steps the value goes nowhere but the progress bar. So the training loss is logged on the
        steps the loggers write (identical CSV/W&B logs) and on each epoch's first batch; the
        progress bar shows the latest logged value.
        Outside a Trainer: True (``self.log`` then behaves as Lightning makes it)."""
        connector = getattr(self._trainer, "_logger_connector", None)
        return connector is None or bool(connector.should_update_logs)

    def check_finite(self, value: Tensor, what: str) -> None:
        """Stop training, before the bad step is applied, when ``value`` is NaN or infinite
        (the decision is shared by all DDP ranks, so they stop together)."""
        local = not bool(torch.isfinite(value.detach()).all())
        if not self._any_rank(local):
            return
        kind = ("NaN" if torch.isnan(value).any() else "infinite") if local else "NaN or infinite on another rank"
        weights = self._nonfinite_parameters()
        cause = (f"; non-finite weights: {self._describe(weights)}" if weights else "; all weights were finite")
        raise TrainingDiverged(f"{what} became {kind} at {self._where()}{cause}; the step was not applied")

    # ---- divergence checks: gradients (after backward, before the step) and weights ---------------
    def _any_rank(self, bad: bool) -> bool:
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            return bool(trainer.strategy.reduce_boolean_decision(bad, all=False))
        return bad

    def _where(self) -> str:
        return f"step {self.global_step} (epoch {self.current_epoch}) of family '{self.family}'"

    def _nonfinite_parameters(self) -> list[tuple[str, str]]:
        """(name, 'NaN' or 'inf') of every parameter holding a non-finite value, in module order."""
        return [(name, "NaN" if torch.isnan(p).any() else "inf") for name, p in self.named_parameters()
                if not bool(torch.isfinite(p.detach()).all())]

    def _describe(self, items: list[tuple[str, str]], group_of: dict[str, str] | None = None) -> str:
        """'enc.net.0.weight' (in module 'enc.net.0', a Linear; <group>) was NaN, and N more."""
        name, kind = items[0]
        module = name.rsplit(".", 1)[0] if "." in name else ""
        try:
            mtype = type(self.get_submodule(module)).__name__
        except AttributeError:
            mtype = "?"
        group = f"; {group_of[name]}" if group_of and name in group_of else ""
        where = f"in module '{module}', a {mtype}" if module else f"in the model itself, a {mtype}"
        more = f", and {len(items) - 1} more parameter(s)" if len(items) > 1 else ""
        return f"'{name}' ({where}{group}) was {kind}{more}"

    def _check_loss_and_gradients(self, loss: Tensor, optimizer) -> None:
        """``check_finite(loss)`` then ``check_gradients_finite`` (one process, after backward, before
        the step), with a single host sync while both are finite: a small model's step is ~1 ms."""
        sums = [p.grad.sum().float() for _, p in _with_gradients(optimizer)]
        if bool(torch.isfinite(torch.stack([loss.detach().float(), *sums])).all()):  # (1 + P,)
            return
        self.check_finite(loss, "loss")
        self.check_gradients_finite(optimizer)

    def check_gradients_finite(self, optimizer) -> None:
        """Stop before ``optimizer`` steps when a gradient is NaN or infinite, naming the first such
        parameter (in module order), its module and its optimiser parameter group.

        Skipped under a GradScaler (16-mixed), which skips steps with non-finite gradients itself."""
        trainer = self._trainer
        if trainer is not None and getattr(trainer.precision_plugin, "scaler", None) is not None:
            return
        params = _with_gradients(optimizer)
        # One cheap pass (a NaN or inf in a gradient makes its sum non-finite) and one host sync; the
        # per-parameter scan runs only when it fires (a finite sum that overflows just triggers the scan).
        sums = torch.stack([p.grad.sum().float() for _, p in params]) if params else torch.zeros(0)  # (P,)
        suspicious = not bool(torch.isfinite(sums).all())
        finite = (torch.stack([torch.isfinite(p.grad).all() for _, p in params]).tolist()  # (P,)
                  if suspicious else [True] * len(params))
        if not self._any_rank(not all(finite)):
            return
        names = {id(p): n for n, p in self.named_parameters()}
        opt = next((i for i, o in enumerate(trainer.optimizers) if o is optimizer), 0) if trainer is not None else 0
        bad, group_of = [], {}
        for (g, p), ok in zip(params, finite):
            if not ok:
                name = names.get(id(p), f"<unnamed {tuple(p.shape)}>")
                bad.append((name, "NaN" if torch.isnan(p.grad).any() else "inf"))
                group_of[name] = f"optimizer {opt}, parameter group {g}"
        which = (f": gradient of {self._describe(bad, group_of)}" if bad
                 else " on another rank")
        raise TrainingDiverged(f"a gradient became non-finite at {self._where()}{which}; the step was not applied")

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.fused_steps == 1:  # fused steps check before clipping, in _fused_training_step
            self.check_gradients_finite(optimizer)

    def validation_step(self, batch, batch_idx: int) -> None:
        x, context = self.split_batch(batch)
        n = len(x)
        self.log("val/loss", self.loss(x, context), on_epoch=True, sync_dist=True, batch_size=n)
        if self.likelihood != "none":
            log_prob = self.log_prob(x, context)  # shape-checked: (batch, 1) would average silently
            nll = -(log_prob + self.data_spec.log_prob_offset).mean()
            self.log("val/nll", nll, prog_bar=True, on_epoch=True, sync_dist=True, batch_size=n)

    def on_test_epoch_start(self) -> None:
        for metric in self.zoo_metrics:
            metric.reset()

    def test_step(self, batch, batch_idx: int) -> None:
        x, context = self.split_batch(batch)
        for metric in self.zoo_metrics:
            if context is None:
                metric.update(self, x)
            else:
                metric.update(self, x, context=context)

    def on_test_epoch_end(self) -> None:
        results: dict[str, Any] = {}
        for metric in self.zoo_metrics:
            results.update(metric.compute(self))
        self.zoo_results = results

    def configure_optimizers(self):
        cfg = self.optim_config
        name = str(cfg["name"]).lower()
        if name not in OPTIMIZERS:
            raise ValueError(f"optim.name must be one of {sorted(OPTIMIZERS)}, got {cfg['name']!r}")
        kwargs: dict[str, Any] = {"lr": float(cfg["lr"]), "weight_decay": float(cfg["weight_decay"])}
        if name != "sgd":
            kwargs["betas"] = tuple(cfg["betas"])
        optimizer = OPTIMIZERS[name](self.parameters(), **kwargs)
        if cfg.get("scheduler") in (None, "none"):
            return optimizer
        if cfg["scheduler"] != "cosine":
            raise ValueError(f"optim.scheduler must be 'cosine' or null, got {cfg['scheduler']!r}")
        total = self.optimizer_steps_estimate()
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, int(total)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def setup(self, stage: str) -> None:
        if stage != "fit" or bool(self._zoo_data_initialised):
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "init_batch"):
            self.init_from_data(datamodule.init_batch().to(self.device))
        self._zoo_data_initialised.fill_(True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Adds the family and configuration; refuses to write non-finite weights (the last good
        checkpoint stays). Lightning adds the loops, optimisers and the train loader's position;
        the runner's RngStates callback adds the RNG states."""
        weights = self._nonfinite_parameters() if self._trainer is not None and self.trainer.training else []
        if weights:
            raise TrainingDiverged(f"the weights became non-finite at {self._where()}: {self._describe(weights)}; "
                                   f"not writing a checkpoint of them")
        checkpoint["zoo"] = {"family": self.family, "config": getattr(self, "zoo_config", None),
                             "plugin": getattr(self, "zoo_provider", None)}


def _interface_error(model, what: str) -> InterfaceError:
    family = getattr(model, "family", "") or type(model).__name__
    return InterfaceError(family, f"class {type(model).__module__}.{type(model).__qualname__}, family "
                                  f"'{family}': {what}")


def check_log_prob_shape(model, x: Tensor, log_prob) -> None:
    """``log_prob(x)`` of x (*batch, *event_shape) must be a tensor of shape (*batch,): one value per example."""
    n_event = len(getattr(model, "event_shape", ()))
    batch = tuple(x.shape[: x.dim() - n_event])
    if not isinstance(log_prob, Tensor):
        raise _interface_error(model, f"log_prob returned {type(log_prob).__name__}, expected a tensor of shape "
                                      f"{batch} (one log-density per example)")
    if tuple(log_prob.shape) != batch:
        raise _interface_error(model, f"log_prob returned shape {tuple(log_prob.shape)} for data of shape "
                                      f"{tuple(x.shape)}; expected {batch} (one log-density per example, "
                                      f"(*batch,) for input (*batch, *event_shape))")


def check_sample_shape(model, samples, sample_shape) -> None:
    """``sample(sample_shape)`` must return (*sample_shape, *event_shape)."""
    expected = tuple(sample_shape) + tuple(getattr(model, "event_shape", ()))
    if not isinstance(samples, Tensor):
        raise _interface_error(model, f"sample returned {type(samples).__name__}, expected a tensor of shape "
                                      f"{expected}")
    if tuple(samples.shape) != expected:
        raise _interface_error(model, f"sample({tuple(sample_shape)}) returned shape {tuple(samples.shape)}; "
                                      f"expected {expected} (*sample_shape, *event_shape)")


def gaussian_log_prob(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """Elementwise log N(x; mean, exp(log_var)) in nats."""
    return -0.5 * (math.log(2 * math.pi) + log_var + (x - mean) ** 2 * torch.exp(-log_var))
