"""ODE solvers and the instantaneous change of variables, for continuous-time models.

References
----------
- R. T. Q. Chen, Y. Rubanova, J. Bettencourt and D. Duvenaud, "Neural Ordinary Differential
  Equations", NeurIPS 2018 (arXiv:1806.07366), theorem 1 (instantaneous change of variables).
- W. Grathwohl, R. T. Q. Chen, J. Bettencourt, I. Sutskever and D. Duvenaud, "FFJORD: Free-form
  Continuous Dynamics for Scalable Reversible Generative Models", ICLR 2019 (arXiv:1810.01367):
  Hutchinson's trace estimator inside the ODE.
- M. F. Hutchinson, "A stochastic estimator of the trace of the influence matrix for Laplacian
  smoothing splines", Communications in Statistics 1990.
- J. R. Dormand and P. J. Prince, "A family of embedded Runge-Kutta formulae", J. Comput. Appl.
  Math. 1980; step-size control as in E. Hairer, S. P. Norsett and G. Wanner, "Solving Ordinary
  Differential Equations I", section II.4.

Solving. ``odeint(func, y0, t0, t1, solver)`` integrates dy/dt = func(t, y) for a batch y (N, ...),
with ``func(t, y)`` taking times t of shape (N,). Fixed-step methods (``euler``, ``midpoint``,
``rk4``) take ``steps`` equal steps. ``dopri5`` is the adaptive Dormand-Prince 5(4) pair with
the error per example measured as

    err_n = RMS_d( e_nd / (atol + rtol max(|y_nd|, |y'_nd|)) ),    accepted when err_n <= 1,

and the next step h <- h clamp(0.9 err_n^(-1/5), 0.2, 10). Every example has its own time and
step size (a finished example takes steps of length 0), so an example's trajectory does not
depend on the rest of its batch. ``func`` must treat examples independently (no batch statistics).

Likelihoods. For dx/dt = f(t, x) the density of x(t) obeys d log p_t(x(t))/dt = -tr(df/dx)
(Chen et al. 2018, theorem 1). Integrating the data point x from t_data to t_base,

    log p_{t_data}(x) = log p_{t_base}(x(t_base)) + int_{t_data}^{t_base} tr(df/dx(t, x(t))) dt,

whatever the direction of time. ``log_density_change`` returns x(t_base) and that integral. The
trace is either exact (one backward pass per dimension: D vector-Jacobian products with the
unit vectors) or Hutchinson's estimate tr(J) = E[eps^T J eps] with K probes eps (Rademacher or
standard normal, drawn once per example and held fixed along the trajectory, as in FFJORD). Each
probe gives its own integral I_k; the estimate is their mean, unbiased for the exact integral
(up to the solver's error), and its variance is estimated by var_k(I_k) / K (K >= 2; NaN for K = 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from zoo_core.errors import ConfigError, ZooError

METHODS = ("euler", "midpoint", "rk4", "dopri5")
TRACES = ("exact", "hutchinson")
PROBE_NOISES = ("rademacher", "gaussian")

Func = Callable[[Tensor, Tensor], Tensor]

# ---- Butcher tableaus ---------------------------------------------------------------------------
_FIXED = {  # (c, a, b) of explicit Runge-Kutta methods
    "euler": ([0.0], [[]], [1.0]),
    "midpoint": ([0.0, 0.5], [[], [0.5]], [0.0, 1.0]),
    "rk4": ([0.0, 0.5, 0.5, 1.0], [[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]], [1 / 6, 1 / 3, 1 / 3, 1 / 6]),
}
_DP_C = [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0]
_DP_A = [
    [],
    [1 / 5],
    [3 / 40, 9 / 40],
    [44 / 45, -56 / 15, 32 / 9],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
    [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
]
# the 5th-order weights are the last row of A (first same as last); E = b5 - b4 (the 4th-order pair)
_DP_E = [71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40]


class ODESettingsError(ConfigError, ValueError):
    """A solver or likelihood setting is invalid (a ValueError too, like other model-setting errors)."""


class SolverError(ZooError):
    """The adaptive solver could not reach the end time within its step budget."""


@dataclass(frozen=True)
class Solver:
    """How to integrate: ``method`` (euler, midpoint, rk4: ``steps`` equal steps; dopri5: adaptive
    with tolerances ``rtol``/``atol`` and at most ``max_steps`` attempted steps per example)."""

    method: str = "dopri5"
    steps: int = 100
    rtol: float = 1e-5
    atol: float = 1e-5
    max_steps: int = 10000

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ODESettingsError(f"ODE solver: method must be one of {list(METHODS)}, got {self.method!r}")
        if int(self.steps) < 1 or int(self.max_steps) < 1:
            raise ODESettingsError(f"ODE solver: steps and max_steps must be positive, got {self.steps}, {self.max_steps}")
        if not (self.rtol > 0 and self.atol > 0):
            raise ODESettingsError(f"ODE solver: rtol and atol must be positive, got {self.rtol}, {self.atol}")

    def describe(self) -> str:
        if self.method == "dopri5":
            return f"adaptive Dormand-Prince 5(4), rtol={self.rtol:g}, atol={self.atol:g}"
        return f"{self.method}, {self.steps} fixed steps"


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    """(N,) -> (N, 1, ...) to broadcast against ``like`` (N, ...)."""
    return v.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def odeint(func: Func, y0: Tensor, t0: float, t1: float, solver: Solver | None = None) -> tuple[Tensor, int]:
    """Integrate dy/dt = func(t, y) from t0 to t1: y0 (N, ...) -> (y(t1) (N, ...), function evaluations)."""
    solver = solver or Solver()
    if t0 == t1:
        return y0, 0
    if solver.method == "dopri5":
        return _dopri5(func, y0, float(t0), float(t1), solver)
    return _fixed(func, y0, float(t0), float(t1), solver)


def _fixed(func: Func, y: Tensor, t0: float, t1: float, solver: Solver) -> tuple[Tensor, int]:
    c, a, b = _FIXED[solver.method]
    n = int(solver.steps)
    h = (t1 - t0) / n
    nfe = 0
    for i in range(n):
        t = t0 + i * h
        ks: list[Tensor] = []
        for ci, ai in zip(c, a):
            yi = y
            for aij, kj in zip(ai, ks):
                if aij:
                    yi = yi + (h * aij) * kj
            ks.append(func(torch.full((len(y),), t + ci * h, device=y.device, dtype=y.dtype), yi))
            nfe += 1
        y = y + h * sum(bi * ki for bi, ki in zip(b, ks) if bi)
    return y, nfe


def _rms(v: Tensor) -> Tensor:
    """(N, ...) -> (N,) root mean square over the non-batch dimensions."""
    return v.reshape(len(v), -1).pow(2).mean(-1).sqrt()


def _dopri5(func: Func, y: Tensor, t0: float, t1: float, solver: Solver) -> tuple[Tensor, int]:
    n = len(y)
    span = abs(t1 - t0)
    sign = 1.0 if t1 > t0 else -1.0
    dev = y.device
    t = torch.full((n,), t0, dtype=torch.float64, device=dev)  # (N,) each example's own time
    k1 = func(t.to(y.dtype), y)
    nfe = 1
    # initial step (Hairer et al. II.4, first stage): h0 = 0.01 ||y0|| / ||f(t0, y0)||
    scale = solver.atol + solver.rtol * y.abs()
    d0, d1 = _rms(y / scale).double(), _rms(k1 / scale).double()  # (N,)
    h = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6 * span), 0.01 * d0 / d1)
    h = h.clamp(min=1e-9 * span, max=span)  # (N,) step magnitudes
    done = torch.zeros(n, dtype=torch.bool, device=dev)
    for _ in range(int(solver.max_steps)):
        if bool(done.all()):
            return y, nfe
        remaining = (t1 - t) * sign  # (N,) >= 0
        last = h >= remaining
        h = torch.where(done, torch.zeros_like(h), torch.minimum(h, remaining))
        hs = h * sign  # (N,) signed
        hb = _bcast(hs, y)
        ks = [k1]
        for ci, ai in zip(_DP_C[1:], _DP_A[1:]):
            yi = y + hb * sum(aij * kj for aij, kj in zip(ai, ks) if aij)
            ks.append(func((t + ci * hs).to(y.dtype), yi))
        nfe += 6
        y5 = y + hb * sum(aij * kj for aij, kj in zip(_DP_A[6], ks) if aij)
        err = hb * sum(ei * ki for ei, ki in zip(_DP_E, ks) if ei)
        ratio = _rms(err / (solver.atol + solver.rtol * torch.maximum(y.abs(), y5.abs()))).double()  # (N,)
        ratio = torch.nan_to_num(ratio, nan=math.inf)
        accept = (ratio <= 1) & ~done
        t = torch.where(accept, torch.where(last, torch.full_like(t, t1), t + hs), t)
        acc = _bcast(accept, y).bool()
        y = torch.where(acc, y5, y)
        k1 = torch.where(acc, ks[6], k1)  # first same as last
        done = done | (accept & last)
        factor = (0.9 * ratio.clamp_min(1e-10) ** -0.2).clamp(0.2, 10.0)
        h = torch.where(done, h, h * factor)
        if bool(((h < 1e-12 * span) & ~done).any()):
            raise SolverError(f"ODE solver: the step size underflowed (rtol={solver.rtol:g}, "
                              f"atol={solver.atol:g}); the dynamics are too stiff or not finite")
    if bool(done.all()):
        return y, nfe
    raise SolverError(f"ODE solver: {int((~done).sum())} of {n} examples did not reach t={t1:g} within "
                      f"max_steps={solver.max_steps} steps (rtol={solver.rtol:g}, atol={solver.atol:g})")


# ---- traces ---------------------------------------------------------------------------------------
def probes(shape: tuple[int, ...], k: int, noise: str, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """K probe vectors per example for Hutchinson's estimator: -> (K, N, *event) with E[eps eps^T] = I."""
    if noise == "rademacher":
        bits = torch.randint(0, 2, (k, *shape), generator=generator, device=like.device)
        return (2 * bits - 1).to(like.dtype)
    if noise == "gaussian":
        return torch.randn((k, *shape), generator=generator, device=like.device, dtype=like.dtype)
    raise ODESettingsError(f"Hutchinson probes: noise must be one of {list(PROBE_NOISES)}, got {noise!r}")


def exact_trace(v: Tensor, x: Tensor) -> Tensor:
    """tr(dv/dx) per example by one backward pass per dimension: v, x (N, *event) -> (N,).
    ``v`` must have been computed from ``x`` (requires_grad) with examples independent."""
    n = len(x)
    vf = v.reshape(n, -1)  # (N, D)
    d = vf.shape[1]
    total = torch.zeros(n, dtype=v.dtype, device=v.device)
    for i in range(d):
        (g,) = torch.autograd.grad(vf[:, i].sum(), x, retain_graph=i < d - 1)
        total = total + g.reshape(n, -1)[:, i]
    return total


def hutchinson_trace(v: Tensor, x: Tensor, eps: Tensor) -> Tensor:
    """eps_k^T (dv/dx) eps_k per example and probe: v, x (N, *event), eps (K, N, *event) -> (N, K)."""
    n, k = len(x), len(eps)
    out = []
    for j in range(k):
        (g,) = torch.autograd.grad(v, x, grad_outputs=eps[j], retain_graph=j < k - 1)  # eps^T J
        out.append((g * eps[j]).reshape(n, -1).sum(-1))
    return torch.stack(out, -1)


@dataclass
class LogDensityChange:
    """What ``log_density_change`` returns: the state at the base time, the estimated integral of
    the trace along the path and its variance (0 for the exact trace; NaN for one probe)."""

    z: Tensor  # (N, *event) x(t_base)
    integral: Tensor  # (N,) int_{t_data}^{t_base} tr(df/dx) dt, or its Hutchinson estimate
    variance: Tensor  # (N,) variance of ``integral`` over the probes
    nfe: int
    trace: str
    num_probes: int


def log_density_change(func: Func, x: Tensor, t_data: float, t_base: float, solver: Solver | None = None,
                       trace: str = "exact", num_probes: int = 1, noise: str = "rademacher",
                       generator: torch.Generator | None = None) -> LogDensityChange:
    """Integrate x (N, *event) from t_data to t_base together with the trace of df/dx (see the module
    docstring); log p_{t_data}(x) = log p_{t_base}(z) + integral. Runs with gradients enabled (also
    under ``torch.no_grad``/inference mode); the results are detached."""
    if trace not in TRACES:
        raise ODESettingsError(f"ODE likelihood: trace must be one of {list(TRACES)}, got {trace!r}")
    k = 1 if trace == "exact" else int(num_probes)
    if k < 1:
        raise ODESettingsError(f"ODE likelihood: the number of Hutchinson probes must be >= 1, got {num_probes}")
    n, event = len(x), tuple(x.shape[1:])
    d = math.prod(event)
    with torch.inference_mode(False), torch.enable_grad():
        x0 = x.detach().clone().reshape(n, d)
        eps = probes((n, *event), k, noise, x0, generator) if trace == "hutchinson" else None  # (K, N, *event)
        state0 = torch.cat([x0, torch.zeros(n, k, dtype=x0.dtype, device=x0.device)], 1)  # (N, D + K)
        nfe = 0

        def augmented(t: Tensor, state: Tensor) -> Tensor:
            nonlocal nfe
            nfe += 1
            xt = state[:, :d].detach().reshape(n, *event).requires_grad_(True)
            v = func(t, xt)  # (N, *event)
            tr = exact_trace(v, xt)[:, None] if eps is None else hutchinson_trace(v, xt, eps)  # (N, K)
            return torch.cat([v.detach().reshape(n, d), tr.detach()], 1)

        state, _ = odeint(augmented, state0, t_data, t_base, solver)
    z = state[:, :d].reshape(n, *event)
    integrals = state[:, d:]  # (N, K)
    integral = integrals.mean(-1)
    if eps is None:
        variance = torch.zeros_like(integral)
    elif k >= 2:
        variance = integrals.var(-1, unbiased=True) / k
    else:
        variance = torch.full_like(integral, math.nan)
    return LogDensityChange(z, integral, variance, nfe, trace, k)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the event: (N, *event) -> (N,)."""
    return -0.5 * (math.log(2 * math.pi) + z ** 2).reshape(len(z), -1).sum(-1)


@dataclass
class LogDensityEstimate:
    """A log-density and the variance of its estimate (0 where it is exact): both (*batch,)."""

    value: Tensor
    variance: Tensor


# ---- likelihood settings shared by the ODE families ----------------------------------------------
#: ``trace: auto`` uses the exact trace up to this many dimensions, Hutchinson's estimator above
AUTO_EXACT_MAX_DIMS = 2
#: registry ``eval`` keys that override the model's likelihood settings (see ``LikelihoodSettings.updated``)
EVAL_KEYS = {"ode_trace": "trace", "ode_probes": "probes", "ode_probe_noise": "noise", "ode_method": "method",
             "ode_rtol": "rtol", "ode_atol": "atol", "ode_steps": "steps"}


@dataclass(frozen=True)
class LikelihoodSettings:
    """How an ODE model computes log p: ``trace`` (auto, exact or hutchinson), the number of probes
    and their noise, and the solver."""

    trace: str = "auto"
    probes: int = 2
    noise: str = "rademacher"
    solver: Solver = Solver()

    def __post_init__(self) -> None:
        if self.trace not in ("auto", *TRACES):
            raise ODESettingsError(f"ODE likelihood: trace must be one of {['auto', *TRACES]}, got {self.trace!r}")
        if int(self.probes) < 1:
            raise ODESettingsError(f"ODE likelihood: the number of Hutchinson probes must be >= 1, got {self.probes}")
        if self.noise not in PROBE_NOISES:
            raise ODESettingsError(f"ODE likelihood: probe noise must be one of {list(PROBE_NOISES)}, got {self.noise!r}")

    @classmethod
    def build(cls, trace: str = "auto", probes: int = 2, noise: str = "rademacher", method: str = "dopri5",
              rtol: float = 1e-5, atol: float = 1e-5, steps: int = 100) -> "LikelihoodSettings":
        return cls(str(trace), int(probes), str(noise), Solver(str(method), int(steps), float(rtol), float(atol)))

    def as_dict(self) -> dict:
        s = self.solver
        return {"trace": self.trace, "probes": self.probes, "noise": self.noise, "method": s.method,
                "rtol": s.rtol, "atol": s.atol, "steps": s.steps}

    def updated(self, eval_config: dict) -> "LikelihoodSettings":
        """These settings with the ``ode_*`` keys of a registry ``eval`` section applied (absent or null: kept)."""
        changes = {name: eval_config[key] for key, name in EVAL_KEYS.items() if eval_config.get(key) is not None}
        return LikelihoodSettings.build(**{**self.as_dict(), **changes}) if changes else self

    def trace_for(self, dims: int) -> str:
        if self.trace != "auto":
            return self.trace
        return "exact" if dims <= AUTO_EXACT_MAX_DIMS else "hutchinson"

    def describe(self, dims: int) -> str:
        if self.trace_for(dims) == "exact":
            how = f"exact trace ({dims} backward passes per step)"
        else:
            how = (f"Hutchinson estimate, {self.probes} {self.noise} probes (unbiased for log p up to the "
                   f"solver's error; one draw per example)")
        return f"{how}; {self.solver.describe()}"

    def log_density_change(self, func: Func, x: Tensor, t_data: float, t_base: float) -> LogDensityChange:
        dims = math.prod(x.shape[1:])
        return log_density_change(func, x, t_data, t_base, self.solver, self.trace_for(dims), self.probes, self.noise)
