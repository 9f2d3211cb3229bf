"""zoo_core.ode: solvers against matrix exponentials, the instantaneous change of variables against
the closed form of a linear ODE, Hutchinson's estimator against the exact trace."""
import math

import pytest
import torch

from zoo_core.errors import ConfigError
from zoo_core.ode import (Solver, SolverError, exact_trace, hutchinson_trace, log_density_change, odeint, probes,
                          standard_normal_log_prob)


def _linear(A):
    def f(t, x):  # dx/dt = A x, x (N, D)
        return x @ A.T
    return f


def _matrix(d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (0.6 * torch.randn(d, d, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("method,steps,tol", [("euler", 2000, 5e-3), ("midpoint", 200, 1e-4),
                                               ("rk4", 50, 1e-7), ("dopri5", 1, 1e-6)])
def test_solvers_match_the_matrix_exponential(method, steps, tol):
    A = _matrix()
    x0 = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y, nfe = odeint(_linear(A), x0, 0.0, 1.3, Solver(method, steps=steps, rtol=1e-8, atol=1e-8))
    expected = x0 @ torch.matrix_exp(1.3 * A).T
    assert (y - expected).abs().max() < tol
    assert nfe > 0


def test_dopri5_backwards_in_time_and_time_dependent_fields():
    """dx/dt = cos(t) x has x(t) = x(t0) exp(sin t - sin t0); integrate from 2 down to -1."""
    x0 = torch.linspace(-2, 2, 7, dtype=torch.float64)[:, None]  # (7, 1)
    y, _ = odeint(lambda t, x: torch.cos(t)[:, None] * x, x0, 2.0, -1.0, Solver(rtol=1e-9, atol=1e-9))
    torch.testing.assert_close(y, x0 * math.exp(math.sin(-1.0) - math.sin(2.0)), rtol=1e-7, atol=1e-7)


def test_dopri5_tolerance_controls_the_error_and_examples_are_independent():
    A = _matrix(seed=2)
    x0 = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected = x0 @ torch.matrix_exp(A).T
    errors, nfes = [], []
    for tol in (1e-3, 1e-6, 1e-9):
        y, nfe = odeint(_linear(A), x0, 0.0, 1.0, Solver(rtol=tol, atol=tol))
        errors.append(float((y - expected).abs().max()))
        nfes.append(nfe)
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-7
    assert nfes[0] < nfes[1] < nfes[2]
    # per-example step sizes: an example's result does not depend on the rest of its batch
    alone, _ = odeint(_linear(A), x0[:1], 0.0, 1.0, Solver(rtol=1e-4, atol=1e-4))
    scaled = torch.cat([x0[:1], 1e3 * x0[1:]])  # the others need different steps
    together, _ = odeint(_linear(A), scaled, 0.0, 1.0, Solver(rtol=1e-4, atol=1e-4))
    torch.testing.assert_close(together[:1], alone, rtol=1e-12, atol=1e-12)


def test_solver_settings_are_checked_and_the_step_budget_is_enforced():
    with pytest.raises(ConfigError, match="method"):
        Solver("rk45")
    with pytest.raises(ConfigError, match="rtol"):
        Solver(rtol=0.0)
    with pytest.raises(SolverError, match="max_steps=3"):
        odeint(_linear(_matrix()), torch.ones(2, 3, dtype=torch.float64), 0.0, 10.0,
               Solver(rtol=1e-10, atol=1e-10, max_steps=3))


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_linear_ode_log_density_matches_the_gaussian_closed_form(method):
    """dx/dt = A x maps x(0) to exp(A) x(0); with x(1) ~ N(0, I), x(0) ~ N(0, S), S = exp(-A) exp(-A)^T,
    so log p_0(x) = log N(x; 0, S) (and tr A integrates to tr A exactly)."""
    A = _matrix(d=3, seed=4)
    x = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    out = log_density_change(_linear(A), x, 0.0, 1.0, Solver(method, steps=100, rtol=1e-9, atol=1e-9))
    log_p = standard_normal_log_prob(out.z) + out.integral
    M = torch.matrix_exp(-A)
    closed = torch.distributions.MultivariateNormal(torch.zeros(3, dtype=torch.float64), M @ M.T).log_prob(x)
    torch.testing.assert_close(log_p, closed, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(out.integral, torch.full((16,), float(torch.trace(A)), dtype=torch.float64))
    assert torch.equal(out.variance, torch.zeros(16, dtype=torch.float64)) and out.trace == "exact"


def test_image_shaped_states_and_inference_mode():
    """Events of shape (C, H, W), called from inference mode (Lightning's test loop)."""
    w = torch.tensor([0.5, -1.0, 0.25, 2.0], dtype=torch.float64).reshape(1, 2, 2)  # elementwise rates

    def f(t, x):  # dx/dt = w * x, x (N, 1, 2, 2): tr = sum(w)
        return w * x

    x = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    with torch.inference_mode():
        out = log_density_change(f, x, 0.0, 1.0, Solver(rtol=1e-9, atol=1e-9))
    torch.testing.assert_close(out.z, x * torch.exp(w))
    torch.testing.assert_close(out.integral, torch.full((3,), float(w.sum()), dtype=torch.float64))


def _mlp_field(seed=0, d=4):
    g = torch.Generator().manual_seed(seed)
    W1, W2 = torch.randn(16, d + 1, generator=g), torch.randn(d, 16, generator=g) / 4

    def f(t, x):  # a nonlinear, time-dependent field (N, D) -> (N, D)
        h = torch.tanh(torch.cat([x, t[:, None]], 1) @ W1.T)
        return h @ W2.T
    return f


def test_exact_trace_matches_the_autograd_jacobian():
    f = _mlp_field()
    x = torch.randn(5, 4, requires_grad=True)
    t = torch.full((5,), 0.3)
    tr = exact_trace(f(t, x), x)
    jac = torch.stack([torch.autograd.functional.jacobian(lambda xi: f(t[:1], xi[None])[0], xi) for xi in x])
    torch.testing.assert_close(tr, jac.diagonal(dim1=1, dim2=2).sum(-1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_for_the_trace(noise):
    """Mean over many probes within 4 standard errors of the exact trace, at each of several points."""
    torch.manual_seed(0)
    f = _mlp_field(seed=1)
    x = torch.randn(6, 4, requires_grad=True)
    t = torch.full((6,), 0.5)
    v = f(t, x)
    exact = exact_trace(v, x)
    est = hutchinson_trace(f(t, x), x, probes((6, 4), 4000, noise, x))  # (N, K)
    mean, stderr = est.mean(-1), est.std(-1) / math.sqrt(est.shape[1])
    assert bool(((mean - exact).abs() < 4 * stderr + 1e-6).all()), (mean, exact, stderr)
    assert bool((stderr > 0).all())  # a real estimate, not the exact value


def test_hutchinson_log_density_agrees_with_the_exact_one_in_expectation():
    torch.manual_seed(0)
    f = _mlp_field(seed=2)
    x = torch.randn(4, 4)
    solver = Solver(rtol=1e-6, atol=1e-6)
    exact = log_density_change(f, x, 1.0, 0.0, solver)
    est = log_density_change(f, x, 1.0, 0.0, solver, trace="hutchinson", num_probes=256, noise="rademacher")
    assert est.trace == "hutchinson" and est.num_probes == 256
    torch.testing.assert_close(est.z, exact.z, rtol=1e-4, atol=1e-4)
    stderr = est.variance.sqrt()  # per example, from the probes' spread
    assert bool((stderr > 0).all())
    assert bool(((est.integral - exact.integral).abs() < 4 * stderr).all()), (est.integral, exact.integral, stderr)
    one = log_density_change(f, x, 1.0, 0.0, solver, trace="hutchinson", num_probes=1)
    assert bool(one.variance.isnan().all())  # one probe: no spread to estimate the variance from


def test_likelihood_settings_are_checked():
    f = _mlp_field()
    with pytest.raises(ConfigError, match="trace"):
        log_density_change(f, torch.zeros(2, 4), 0.0, 1.0, trace="skilling")
    with pytest.raises(ConfigError, match="probes"):
        log_density_change(f, torch.zeros(2, 4), 0.0, 1.0, trace="hutchinson", num_probes=0)
    with pytest.raises(ConfigError, match="noise"):
        log_density_change(f, torch.zeros(2, 4), 0.0, 1.0, trace="hutchinson", noise="uniform")
