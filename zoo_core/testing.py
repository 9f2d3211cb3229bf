"""The conformance kit: checks every family must pass, reusable by any plugin's test suite.

Use it either way:

- subclass :class:`FamilyConformance` in a test module and implement ``make_case()``; pytest
  then runs every ``test_*`` check on your family;
- call the ``check_*`` functions on a :class:`ConformanceCase` yourself (the zoo's own suite
  runs them over every registry entry whose data needs no files, like timm tests every model).

Checks: shapes and dtypes; finite values; wrong shapes raise ValueError naming the expected
shape; the loss is a differentiable scalar and drops on a fixed batch within a few optimiser
steps; ``sample`` shapes; seeded reproducibility; a Lightning checkpoint save/load round trip
gives identical ``log_prob``; for exact likelihoods on 2-D data, ``exp(log_prob)`` integrates
to 1 within 2% over a grid; for bounds, the estimate stays below an exact reference value
(where the family provides ``reference_log_prob``) and tightens as K grows; a family without a
likelihood raises ``NoLikelihoodError``.

A check that does not apply (density integration on data that is not 2-D or a likelihood that is
not exact; bound checks without ``reference_log_prob``) returns :class:`Skipped` with the reason:
``FamilyConformance`` reports it as a pytest skip, :func:`run_all` records it. Every failure says
what was expected and what came back.

The checks run on the device named by ``ZOO_TEST_DEVICE`` (``cpu`` by default, ``cuda``,
``cuda:1``): the model and the case's data are moved there, the Lightning round trip trains on it.
"""
from __future__ import annotations

import copy
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytorch_lightning as pl
import torch
from torch import Tensor

from zoo_core.checkpoint import read_checkpoint, rebuild_model
from zoo_core.errors import InterfaceError, NoLikelihoodError
from zoo_core.model import LIKELIHOOD_KINDS, GenerativeModel, as_sample_shape

LOSS_DROP_STEPS = 25
INTEGRAL_TOLERANCE = 0.02
#: names the device the checks run on: cpu (default), cuda, cuda:N
DEVICE_ENV = "ZOO_TEST_DEVICE"


def conformance_device() -> torch.device:
    """The device named by ``ZOO_TEST_DEVICE`` (default cpu). A CUDA device without CUDA is an
    error, not a silent fall-back to the CPU: a GPU check must not pass without a GPU."""
    name = os.environ.get(DEVICE_ENV, "").strip() or "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"{DEVICE_ENV}={name!r}: expected cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{DEVICE_ENV}={name} but torch.cuda.is_available() is False on this machine")
    return device


@dataclass
class ConformanceCase:
    """A family, a way to build it (seeded), and a fixed batch of its data."""

    name: str
    family_cls: type
    build: Callable[[], GenerativeModel]  # a fresh model; the kit seeds torch before calling it
    data: Tensor  # (B, *event_shape) in the model's representation
    lr: float = 1e-3
    context: Tensor | None = None  # (B,) class labels of ``data`` for a conditional model, else None
    extras: dict = field(default_factory=dict)
    device: torch.device | str | None = None  # None: conformance_device()

    def __post_init__(self) -> None:
        self.device = torch.device(self.device) if self.device is not None else conformance_device()
        self.data = self.data.to(self.device)
        if self.context is not None:
            self.context = self.context.to(self.device)

    def model(self, seed: int = 0, initialise: bool = True) -> GenerativeModel:
        torch.manual_seed(seed)
        model = self.build().to(self.device)
        if initialise:
            model.init_from_data(self.data)
            model._zoo_data_initialised.fill_(True)
        return model


def case_from_config(zoo, config: dict, batch: int = 256) -> ConformanceCase:
    """A case from a resolved registry configuration (``zoo.resolve(entry)``)."""
    from zoo_core.runner import build_datamodule, build_model

    datamodule = build_datamodule(zoo, config)
    data = datamodule.eval_data("train")[:batch].clone()
    context = datamodule.eval_labels("train")[:batch].clone() if datamodule.spec.conditional else None
    return ConformanceCase(
        name=config["entry"], family_cls=zoo.family(config["family"]),
        build=lambda: build_model(zoo, config, datamodule), data=data, lr=float(config["optim"]["lr"]),
        context=context)


@dataclass(frozen=True)
class Skipped:
    """What a check returns when it does not apply to the case, with the reason."""

    reason: str

    def __str__(self) -> str:
        return f"skipped: {self.reason}"


def _seeded(fn, seed=0):
    torch.manual_seed(seed)
    return fn()


# ---- the checks --------------------------------------------------------------------------------
def check_declaration(case: ConformanceCase) -> None:
    model = case.model()
    assert isinstance(model, GenerativeModel), (
        f"the case built a {type(model).__name__}; expected a zoo_core.model.GenerativeModel subclass")
    assert isinstance(case.family_cls.family, str) and case.family_cls.family, (
        f"{case.family_cls.__name__}.family is {case.family_cls.family!r}; expected a non-empty name")
    assert case.family_cls.likelihood in LIKELIHOOD_KINDS, (
        f"{case.family_cls.__name__}.likelihood is {case.family_cls.likelihood!r}; expected one of {LIKELIHOOD_KINDS}")
    assert tuple(model.event_shape) == tuple(case.data.shape[1:]), (
        f"event_shape {tuple(model.event_shape)} does not match the data {tuple(case.data.shape[1:])}")


def check_log_prob(case: ConformanceCase) -> None:
    """(B, *event) -> (B,) finite floats; extra batch dims are kept; a likelihood-less family raises."""
    model = case.model().eval()
    x = case.data
    if model.likelihood == "none":
        try:
            model.log_prob(x, case.context)
        except NoLikelihoodError as exc:
            assert model.family in str(exc), "the NoLikelihoodError message must name the family"
            return
        raise AssertionError("a family with likelihood 'none' must raise NoLikelihoodError from log_prob")
    with torch.no_grad():
        lp = _seeded(lambda: model.log_prob(x, case.context))
        assert lp.shape == (len(x),), f"log_prob returned shape {tuple(lp.shape)}, expected ({len(x)},)"
        assert lp.dtype.is_floating_point, f"log_prob returned dtype {lp.dtype}; expected a floating point dtype"
        assert torch.isfinite(lp).all(), (f"log_prob returned {int((~torch.isfinite(lp)).sum())} NaN or infinite "
                                          f"value(s) of {len(lp)} on training data; expected finite values")
        half = len(x) // 2 * 2
        ctx2 = case.context[:half].reshape(2, half // 2) if case.context is not None else None
        lp2 = _seeded(lambda: model.log_prob(x[:half].reshape(2, half // 2, *x.shape[1:]), ctx2))
        assert lp2.shape == (2, half // 2), f"log_prob kept batch shape {tuple(lp2.shape)}, expected (2, {half // 2})"
        if model.likelihood == "exact":
            torch.testing.assert_close(lp2.reshape(-1), lp[:half], rtol=1e-4, atol=1e-4)


def check_wrong_shape(case: ConformanceCase) -> None:
    """log_prob (or loss, for likelihood-less families) on the wrong shape raises ValueError naming the shape."""
    model = case.model().eval()
    x = case.data
    bad = torch.cat([x, x[..., :1]], dim=-1)  # one extra element along the last axis
    call = model.loss if model.likelihood == "none" else model.log_prob
    try:
        call(bad, case.context)
    except ValueError as exc:
        expected = ", ".join(str(d) for d in model.event_shape)
        assert expected in str(exc), f"the error should name the expected shape ({expected}); got: {exc}"
        return
    raise AssertionError(f"{model.family}: data of shape {tuple(bad.shape)} was accepted; expected a ValueError")


def check_loss_differentiable(case: ConformanceCase) -> None:
    model = case.model().train()
    loss = _seeded(lambda: model.loss(case.data, case.context))
    assert loss.dim() == 0, f"loss must be a scalar, got shape {tuple(loss.shape)}"
    assert torch.isfinite(loss), f"loss is {float(loss)}; expected a finite value"
    assert loss.requires_grad, "loss does not require grad; expected it to be differentiable with respect to the parameters"
    loss.backward()
    grads = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
    assert grads, "no parameter received a gradient from loss.backward(); expected at least one"
    bad = [n for n, g in grads if not torch.isfinite(g).all()]
    assert not bad, f"non-finite gradients of {', '.join(bad[:5])}; expected finite gradients"


def check_loss_drops(case: ConformanceCase, steps: int = LOSS_DROP_STEPS) -> None:
    """A few Adam steps on one fixed batch lower the loss (stochastic losses compared under one seed).

    Starts from the constructor's parameters, without data-dependent initialisation, which may
    already sit at the optimum for this batch (a closed-form maximum-likelihood fit)."""
    model = case.model(initialise=False).train()
    opt = torch.optim.Adam(model.parameters(), lr=case.lr)
    with torch.no_grad():
        before = float(_seeded(lambda: model.loss(case.data, case.context), seed=123))
    for step in range(steps):
        opt.zero_grad()
        _seeded(lambda: model.loss(case.data, case.context), seed=step).backward()
        opt.step()
    with torch.no_grad():
        after = float(_seeded(lambda: model.loss(case.data, case.context), seed=123))
    assert after < before, f"loss did not drop in {steps} Adam steps on a fixed batch: {before:.4f} -> {after:.4f}"


def check_sample_shapes(case: ConformanceCase) -> None:
    model = case.model().eval()
    event = tuple(model.event_shape)
    label = _one_label(case)
    with torch.no_grad():
        for shape, shown in (((8,), "(8,)"), ((2, 3), "(2, 3)"), (4, "4"), ((), "()")):
            expected = (*as_sample_shape(shape), *event)
            try:
                got = tuple(model.sample(shape, context=label).shape)
            except InterfaceError as exc:  # the base class's own contract check
                raise AssertionError(str(exc)) from None
            assert got == expected, f"sample({shown}) returned {got}; expected {expected}"
        samples = model.sample((16,), context=label)
        assert torch.isfinite(samples).all(), (f"sample((16,)) returned {int((~torch.isfinite(samples)).sum())} "
                                               f"NaN or infinite value(s); expected finite samples")


def _one_label(case: ConformanceCase) -> Tensor | None:
    """The first example's label for a conditional case (``sample`` broadcasts it), else None."""
    return case.context[0] if case.context is not None else None


def check_reproducible(case: ConformanceCase) -> None:
    """The same seed gives the same parameters, samples and loss."""
    a, b = case.model(seed=7).eval(), case.model(seed=7).eval()
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), f"parameter {name} differs between two models built with the same seed"
    with torch.no_grad():
        label = _one_label(case)
        assert torch.equal(_seeded(lambda: a.sample((8,), context=label), 3),
                           _seeded(lambda: b.sample((8,), context=label), 3)), (
            "two models built with the same seed drew different samples under the same seed; expected identical")
        la, lb = _seeded(lambda: a.loss(case.data, case.context), 4), _seeded(lambda: b.loss(case.data, case.context), 4)
        assert torch.equal(la, lb), (f"two models built with the same seed gave losses {float(la)} and {float(lb)} "
                                     f"under the same seed; expected identical")


def check_checkpoint_round_trip(case: ConformanceCase) -> None:
    """Two Lightning training steps, ``save_checkpoint``, a weights_only load: identical log_prob/loss."""
    model = case.model()
    dataset = (case.data.cpu() if case.context is None  # batches of x, or (x, y) for a conditional model
               else torch.utils.data.TensorDataset(case.data.cpu(), case.context.cpu()))
    loader = torch.utils.data.DataLoader(dataset, batch_size=min(64, len(case.data)))  # Lightning moves batches
    cuda = case.device.type == "cuda"
    trainer = pl.Trainer(max_steps=2, accelerator="gpu" if cuda else "cpu", devices=[case.device.index or 0] if cuda else 1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, train_dataloaders=loader)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.ckpt"
        trainer.save_checkpoint(path)
        loaded = rebuild_model(case.family_cls, read_checkpoint(path), path).to(case.device)
    model.to(case.device).eval()  # Lightning's teardown moves the model back to the CPU
    for (name, pa), pb in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(pa, pb), f"parameter {name} changed in the checkpoint round trip"
    call = (lambda m: m.loss(case.data, case.context)) if model.likelihood == "none" else (lambda m: m.log_prob(case.data, case.context))
    with torch.no_grad():
        before, after = _seeded(lambda: call(model)), _seeded(lambda: call(loaded))
        what = "loss" if model.likelihood == "none" else "log_prob"
        assert torch.equal(before, after), (
            f"{what} after the checkpoint round trip differs by up to {float((before - after).abs().max()):.3g}; "
            f"expected identical values")


def check_density_integrates(case: ConformanceCase, points: int = 400) -> Skipped | None:
    """Exact families on 2-D data: the integral of exp(log_prob) over a grid is 1 within 2%."""
    model = case.model()
    if model.likelihood != "exact":
        return Skipped(f"density integration applies to exact likelihoods; family '{model.family}' has likelihood "
                       f"'{model.likelihood}'")
    if tuple(model.event_shape) != (2,):
        return Skipped(f"density integration needs 2-D data (event shape (2,)); this case's event shape is "
                       f"{tuple(model.event_shape)}")
    if case.context is not None:
        return Skipped("density integration is checked on unconditional cases (here: one integral per class)")
    points = min(points, int(getattr(model, "conformance_grid_points", points)))  # ODE likelihoods are costly
    _train_briefly(model, case)
    model.eval()
    with torch.no_grad():
        s = _seeded(lambda: model.sample((20000,)))
        lo, hi = torch.quantile(s, 0.0005, dim=0), torch.quantile(s, 0.9995, dim=0)
        lo, hi = lo - 0.75 * (hi - lo), hi + 0.75 * (hi - lo)
        xs = torch.linspace(float(lo[0]), float(hi[0]), points, device=s.device)
        ys = torch.linspace(float(lo[1]), float(hi[1]), points, device=s.device)
        gx, gy = torch.meshgrid(xs, ys, indexing="ij")
        grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)
        dens = torch.cat([model.log_prob(chunk).exp() for chunk in grid.split(20000)])
        cell = float((xs[1] - xs[0]) * (ys[1] - ys[0]))
        mass = float(dens.double().sum()) * cell
    assert abs(mass - 1) < INTEGRAL_TOLERANCE, (f"exp(log_prob) integrates to {mass:.4f} over the grid; expected 1 "
                                                f"within {INTEGRAL_TOLERANCE}")
    return None


def check_bound(case: ConformanceCase, ks: tuple[int, ...] = (1, 10, 100)) -> Skipped | None:
    """Bound families with a reference: E[L_K] <= log p(x), and the bound tightens as K grows."""
    model = case.model()
    if model.likelihood != "bound":
        return Skipped(f"bound checks apply to families whose likelihood is a bound; family '{model.family}' has "
                       f"likelihood '{model.likelihood}'")
    model.eval()
    x = case.data
    if case.context is not None:
        return Skipped("the bound checks run on unconditional cases")
    with torch.no_grad():
        reference = model.reference_log_prob(x)
        if reference is None:
            return Skipped(f"family '{model.family}' gives no reference_log_prob for this case (an exact value "
                           f"to hold the bound against)")
        means, errs = [], []
        for k in ks:
            model.configure_evaluation({"iw_samples": k})
            lp = _seeded(lambda: model.log_prob(x), seed=k).double()
            means.append(float(lp.mean()))
            errs.append(float(lp.std() / math.sqrt(len(lp))))
    ref = float(reference.double().mean())
    for k, m, e in zip(ks, means, errs):
        assert m <= ref + 3 * e + 1e-4, f"K={k}: mean bound {m:.4f} exceeds the exact value {ref:.4f}"
    # the estimates share the data, so their gaps shrink: compare with the noise of the estimates
    for (k1, m1, e1), (k2, m2, e2) in zip(zip(ks, means, errs), list(zip(ks, means, errs))[1:]):
        assert m2 >= m1 - 3 * math.hypot(e1, e2), f"bound did not tighten from K={k1} ({m1:.4f}) to K={k2} ({m2:.4f})"
    assert ref - means[-1] < ref - means[0] or math.isclose(means[-1], means[0], abs_tol=1e-3), (
        f"K={ks[-1]} gives {means[-1]:.4f} and K={ks[0]} gives {means[0]:.4f}; expected the largest K closer to "
        f"the exact value {ref:.4f}")
    return None


def _train_briefly(model: GenerativeModel, case: ConformanceCase, steps: int = 30) -> None:
    """A few Adam steps, each followed by the family's per-batch hook (e.g. an EMA of the weights)."""
    opt = torch.optim.Adam(model.parameters(), lr=case.lr)
    model.train()
    for step in range(steps):
        opt.zero_grad()
        _seeded(lambda: model.loss(case.data, case.context), seed=step).backward()
        opt.step()
        model.on_train_batch_end(None, case.data if case.context is None else (case.data, case.context), step)


def check_conditional(case: ConformanceCase) -> Skipped | None:
    """Conditional families: ``log_prob(x, y)`` is (B,) and finite for every class, and samples of
    class k differ from those of class j under the same seed. Unconditional families refuse a context."""
    from zoo_core.errors import ContextError

    model = case.model().eval()
    if case.context is None:
        try:
            model.sample((4,), context=torch.zeros(4, dtype=torch.long, device=case.device))
        except ContextError as exc:
            assert model.family in str(exc), f"the context error should name the family; got: {exc}"
            return Skipped("an unconditional case: only checked that a context is refused")
        raise AssertionError(f"family '{model.family}' accepted a context without being conditional; expected a "
                             f"ContextError")
    classes = int(model.num_classes)
    x = case.data
    _train_briefly(model, case)  # a fresh model may ignore its label (zero-initialised output layers)
    model.eval()
    with torch.no_grad():
        if model.likelihood != "none":
            for k in range(classes):
                lp = model.log_prob(x, torch.full((len(x),), k, dtype=torch.long, device=case.device))
                assert lp.shape == (len(x),), f"log_prob(x, class {k}) returned {tuple(lp.shape)}; expected ({len(x)},)"
                assert torch.isfinite(lp).all(), f"log_prob(x, class {k}) has non-finite values; expected finite"
        first = _seeded(lambda: model.sample((32,), context=0), 5)
        second = _seeded(lambda: model.sample((32,), context=1), 5)
    assert first.shape == second.shape == (32, *model.event_shape), (
        f"sample((32,), context=k) returned {tuple(first.shape)}; expected {(32, *model.event_shape)}")
    assert not torch.equal(first, second), ("samples of class 0 and class 1 are identical under the same seed; "
                                            "expected the class to change them")
    return None


CHECKS: dict[str, Callable[[ConformanceCase], None]] = {
    "declaration": check_declaration,
    "log_prob": check_log_prob,
    "wrong_shape": check_wrong_shape,
    "loss_differentiable": check_loss_differentiable,
    "loss_drops": check_loss_drops,
    "sample_shapes": check_sample_shapes,
    "reproducible": check_reproducible,
    "checkpoint_round_trip": check_checkpoint_round_trip,
    "density_integrates": check_density_integrates,
    "bound": check_bound,
    "conditional": check_conditional,
}


def run_all(case: ConformanceCase) -> dict[str, str]:
    """Run every check; returns {check: "passed" or "skipped: REASON"}. A failing check raises
    AssertionError naming the check, what was expected and what came back."""
    report: dict[str, str] = {}
    for name, check in CHECKS.items():
        try:
            result = check(case)
        except AssertionError as exc:
            raise AssertionError(f"{case.name}: check '{name}' failed: {exc}") from None
        report[name] = str(result) if isinstance(result, Skipped) else "passed"
    return report


def run_check(check, case: ConformanceCase) -> None:
    """Run one check under pytest: a check that does not apply becomes ``pytest.skip(reason)``."""
    result = check(case)
    if isinstance(result, Skipped):
        import pytest

        pytest.skip(result.reason)


class FamilyConformance:
    """Base test class: subclass it, implement ``make_case``, and pytest runs every check."""

    def make_case(self) -> ConformanceCase:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def _case(self) -> ConformanceCase:
        return copy.copy(self.make_case())

    def test_declaration(self):
        run_check(check_declaration, self._case())

    def test_log_prob(self):
        run_check(check_log_prob, self._case())

    def test_wrong_shape(self):
        run_check(check_wrong_shape, self._case())

    def test_loss_differentiable(self):
        run_check(check_loss_differentiable, self._case())

    def test_loss_drops(self):
        run_check(check_loss_drops, self._case())

    def test_sample_shapes(self):
        run_check(check_sample_shapes, self._case())

    def test_reproducible(self):
        run_check(check_reproducible, self._case())

    def test_checkpoint_round_trip(self):
        run_check(check_checkpoint_round_trip, self._case())

    def test_density_integrates(self):
        run_check(check_density_integrates, self._case())

    def test_bound(self):
        run_check(check_bound, self._case())

    def test_conditional(self):
        run_check(check_conditional, self._case())
