"""The flow-matching family: the ODE likelihood against closed forms (the exact marginal velocity
of Gaussian data), the Hutchinson estimate against the exact trace, settings and descriptions.
The conformance kit runs over its registry entries in test_conformance.py."""
import math

import pytest
import torch

from zoo_core.data.spec import DataSpec
from zoo_core.errors import ConfigError
from zoo_core.api import default_zoo
from zoo_core.testing import case_from_config
from zoo_flow_matching import FlowMatching


def _spec(event_shape=(2,), representation="continuous", num_levels=None):
    return DataSpec(name="test", representation=representation, event_shape=tuple(event_shape),
                    num_levels=num_levels).to_dict()


def _gaussian_velocity(m, s):
    """The exact marginal velocity E[x_1 - x_0 | x_t] of the linear path from N(0, I) to N(m, s^2 I):
    x_t ~ N(t m, sig_t^2 I), sig_t^2 = (1 - t)^2 + t^2 s^2, Cov(x_1 - x_0, x_t) = t s^2 - (1 - t)."""
    def v(t, x):  # t (N,), x (N, *event)
        t = t.reshape(-1, *([1] * (x.dim() - 1)))
        var = (1 - t) ** 2 + t ** 2 * s ** 2
        return m + (t * s ** 2 - (1 - t)) / var * (x - t * m)
    return v


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_ode_likelihood_of_the_exact_gaussian_velocity_is_the_gaussian_density(trace):
    """With the optimal velocity the flow maps N(0, I) onto N(m, s^2 I) exactly, so log_prob must be
    log N(x; m, s^2 I): checks the direction of time, the sign of the trace and the base density."""
    torch.manual_seed(0)
    # Gaussian probes: the Jacobian is a multiple of I here, on which Rademacher probes are exact
    model = FlowMatching(_spec(), trace=trace, probes=64, probe_noise="gaussian", ode_rtol=1e-7, ode_atol=1e-7).double()
    m, s = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.4
    model.velocity = _gaussian_velocity(m, s)
    x = m + s * torch.randn(64, 2, dtype=torch.float64) * 2
    est = model.ode_log_prob(x)
    expected = torch.distributions.Normal(m, s).log_prob(x).sum(-1)
    if trace == "exact":
        torch.testing.assert_close(est.value, expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(est.variance, torch.zeros(64, dtype=torch.float64))
    else:  # unbiased: within 4 standard errors per example, and the estimate has noise
        sd = est.variance.sqrt()
        assert bool((sd > 0).all()) and bool(((est.value - expected).abs() < 4 * sd + 1e-5).all())
        assert abs(float((est.value - expected).mean())) < 4 * float(sd.pow(2).mean().sqrt()) / math.sqrt(64)


def test_samples_of_the_exact_gaussian_velocity_have_the_gaussian_moments():
    torch.manual_seed(1)
    m, s = torch.tensor([1.0, -0.5]), 0.4
    for sampler, steps in (("dopri5", 1), ("rk4", 20)):
        model = FlowMatching(_spec(), sampler=sampler, sample_steps=steps)
        model.velocity = _gaussian_velocity(m, s)
        x = model.sample((20000,))
        torch.testing.assert_close(x.mean(0), m, atol=4 * s / math.sqrt(20000), rtol=0)
        torch.testing.assert_close(x.std(0), torch.full((2,), s), atol=0.01, rtol=0)


def test_dequantized_images_are_modelled_in_2x_minus_1_space():
    """An untrained conv net predicts v = 0 (zero-initialised output): the flow is the identity and
    log p(x) = log N(2x - 1; 0, I) + D log 2, whatever the trace estimator (its Jacobian is 0)."""
    torch.manual_seed(2)
    model = FlowMatching(_spec((1, 4, 4), "dequantized", 17), network="conv", channels=8, dilations=[1, 2])
    x = torch.rand(2, 3, 1, 4, 4)
    lp = model.log_prob(x)
    assert lp.shape == (2, 3)
    y = (2 * x - 1).reshape(2, 3, -1)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(y).sum(-1) + 16 * math.log(2.0)
    torch.testing.assert_close(lp, expected, rtol=1e-5, atol=1e-4)
    assert "Hutchinson estimate, 2 rademacher probes" in model.likelihood_description()


def test_hutchinson_agrees_with_the_exact_trace_on_a_trained_model():
    """A briefly trained 2-D model: the mean of many probes' estimates matches the exact log-density."""
    torch.manual_seed(3)
    data = torch.randn(512, 2) * torch.tensor([1.0, 0.3]) + torch.tensor([0.5, 0.0])
    model = FlowMatching(_spec(), hidden=[32, 32], ode_rtol=1e-5, ode_atol=1e-5)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(100):
        opt.zero_grad()
        model.loss(data).backward()
        opt.step()
    x = data[:16]
    with torch.no_grad():
        exact = model.ode_log_prob(x)
        model.configure_evaluation({"ode_trace": "hutchinson", "ode_probes": 32, "ode_probe_noise": "gaussian"})
        est = model.ode_log_prob(x)
    sd = est.variance.sqrt()
    assert bool((sd > 0).all())
    z = (est.value - exact.value) / sd
    assert bool((z.abs() < 4.5).all()), z  # per example
    assert abs(float(z.mean())) * math.sqrt(len(z)) < 4.0  # and on average (z ~ N(0, 1) each)
    assert "Hutchinson estimate, 32 gaussian probes" in model.likelihood_description()


def test_evaluation_settings_override_the_model_options():
    model = FlowMatching(_spec())
    assert model.likelihood_description().startswith("exact log-likelihood")
    assert "rtol=1e-05" in model.likelihood_description()
    model.configure_evaluation({"ode_rtol": 1e-3, "ode_atol": 1e-4, "ode_probes": None})
    assert "rtol=0.001, atol=0.0001" in model.likelihood_description()
    with pytest.raises(ConfigError, match="iw_samples"):
        model.configure_evaluation({"iw_samples": 10})
    with pytest.raises(ConfigError, match="probes"):
        model.configure_evaluation({"ode_trace": "hutchinson", "ode_probes": 0})


@pytest.mark.parametrize("kwargs,match", [({"network": "conv"}, "needs images"), ({"trace": "approx"}, "trace"),
                                          ({"sampler": "rk45"}, "method"), ({"activation": "swish"}, "activation")])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FlowMatching(_spec(), **kwargs)


def test_binarized_data_are_refused():
    with pytest.raises(ValueError, match="dequantized"):
        FlowMatching(_spec((1, 4, 4), "binarized", 2))


def test_checkpointed_settings_rebuild_the_same_likelihood():
    """The registry entry's settings reach the model (exact trace in 2-D, dopri5)."""
    case = case_from_config(default_zoo(), default_zoo().resolve("flow_matching-moons"), batch=8)
    model = case.model()
    assert model.ode.trace_for(2) == "exact" and model.sample_solver.method == "dopri5"
    assert model.hparams["trace"] == "exact"
