"""The diffusion family's probability-flow ODE likelihood: the continuous VP schedule against the
discrete one, the ODE density against closed forms (Gaussian data with their exact noise
prediction; the untrained network's eps = 0), and the ode_nll metric."""
import math

import pytest
import torch

from zoo_core.data.spec import DataSpec
from zoo_core.api import default_zoo
from zoo_diffusion import DDPM
from zoo_diffusion.ode_nll import ODENLL


def _spec(event_shape=(2,), representation="continuous", num_levels=None):
    return DataSpec(name="test", representation=representation, event_shape=tuple(event_shape),
                    num_levels=num_levels).to_dict()


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_continuous_schedule_matches_the_discrete_one(schedule):
    """abar(t/T) = alphabar_t at every timestep, d log abar/ds = -beta(s) > 0 between them, beta continuous."""
    model = DDPM(_spec(), hidden=[8], timesteps=50, schedule=schedule, ema_decay=None)
    T = model.timesteps
    s = torch.arange(T + 1, dtype=torch.float64) / T
    _, ab = model.vp_schedule(s)
    torch.testing.assert_close(ab, model.alphas_bar, rtol=1e-12, atol=1e-15)
    mid = (torch.arange(T, dtype=torch.float64) + 0.5) / T  # inside each step
    h = 1e-4 / T
    beta, _ = model.vp_schedule(mid)
    slope = (torch.log(model.vp_schedule(mid + h)[1]) - torch.log(model.vp_schedule(mid - h)[1])) / (2 * h)
    torch.testing.assert_close(slope, -beta, rtol=1e-8, atol=1e-8)
    assert bool((beta > 0).all())
    # continuous at the timesteps
    grid = torch.arange(1, T, dtype=torch.float64) / T
    torch.testing.assert_close(model.vp_schedule(grid - 1e-9)[0], model.vp_schedule(grid + 1e-9)[0],
                               rtol=1e-5, atol=1e-5)
    # its average over a step is -T log(1 - beta_t), about T beta_t for small beta_t (Song et al.)
    u = (torch.arange(T, dtype=torch.float64)[:, None] + (torch.arange(200, dtype=torch.float64) + 0.5) / 200) / T
    mean_beta = model.vp_schedule(u.reshape(-1))[0].reshape(T, 200).mean(-1)
    torch.testing.assert_close(mean_beta, -T * torch.log1p(-model.betas[1:]), rtol=1e-4, atol=1e-6)


def test_linear_schedule_gives_nearly_songs_linear_beta():
    model = DDPM(_spec(), hidden=[8], timesteps=1000, schedule="linear", ema_decay=None)
    s = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    beta, _ = model.vp_schedule(s)
    song = 1000 * (1e-4 + s * (0.02 - 1e-4))
    torch.testing.assert_close(beta, song, rtol=0.02, atol=0.01)


def test_ode_density_of_gaussian_data_with_the_exact_noise_prediction():
    """Data N(0, c^2 I): x_s ~ N(0, sig_s^2 I), sig_s^2 = abar(s) c^2 + 1 - abar(s), and the exact
    eps(x, s) = sqrt(1 - abar(s)) x / sig_s^2. The probability-flow ODE then scales x by sig_1/sig_min,
    so log p(x) = log N(x sig_1 / sig_min; 0, I) + D log(sig_1 / sig_min), in closed form."""
    torch.manual_seed(0)
    c = 0.3
    model = DDPM(_spec(), hidden=[8], timesteps=100, ema_decay=None, ode_rtol=1e-8, ode_atol=1e-8,
                 ode_t_min=0.05).double()

    def exact_eps(net, x, t, labels=None, guidance=0.0):  # t: fractional timesteps sT
        _, ab = model.vp_schedule(t / model.timesteps)
        ab = ab.reshape(-1, 1)
        return torch.sqrt(1 - ab) * x / (ab * c ** 2 + 1 - ab)

    model.eps = exact_eps
    x = c * torch.randn(32, 2, dtype=torch.float64)
    est = model.ode_log_prob(x)
    ab_min, ab_1 = (float(v) for v in model.vp_schedule(torch.tensor([0.05, 1.0], dtype=torch.float64))[1])
    ratio = math.sqrt((ab_1 * c ** 2 + 1 - ab_1) / (ab_min * c ** 2 + 1 - ab_min))
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(x * ratio).sum(-1) + 2 * math.log(ratio)
    torch.testing.assert_close(est.value, expected, rtol=1e-6, atol=1e-6)
    # and this is (nearly) the true density of x_min ~ N(0, sig_min^2): the prior N(0, I) at s = 1 is off by abar_1
    true = torch.distributions.Normal(0.0, math.sqrt(ab_min * c ** 2 + 1 - ab_min)).log_prob(x).sum(-1)
    assert float((est.value - true).abs().max()) < 10 * ab_1


def test_image_ode_likelihood_dequantises_onto_the_levels():
    """The untrained U-Net predicts eps = 0, so dx/ds = -beta(s) x / 2: x(1) = x sqrt(abar_1/abar_min)
    and log p(y) = log N(x(1); 0, I) + D/2 log(abar_1/abar_min), with y = v_k + (2u - 1)/(L - 1) and
    log p(x) = log p(y) + D log(2L/(L-1)). Hutchinson's estimate is exact here (J = -beta/2 I)."""
    torch.manual_seed(1)
    L = 17
    model = DDPM(_spec((1, 4, 4), "dequantized", L), network="unet", channels=[8], timesteps=20, ema_decay=None,
                 ode_rtol=1e-6, ode_atol=1e-6)
    assert model.ode.trace_for(16) == "hutchinson"
    x = torch.rand(3, 1, 4, 4)
    est = model.ode_log_prob(x)
    k = torch.floor(x * L)
    y = 2 * k / (L - 1) - 1 + (2 * (x * L - k) - 1) / (L - 1)
    assert float(y.min()) >= -1 - 1 / (L - 1) and float(y.max()) <= 1 + 1 / (L - 1)
    ab_min, ab_1 = (float(v) for v in model.vp_schedule(torch.tensor([1 / 20, 1.0]))[1])
    z = y * math.sqrt(ab_1 / ab_min)
    expected = (torch.distributions.Normal(0.0, 1.0).log_prob(z).reshape(3, -1).sum(-1)
                + 8 * math.log(ab_1 / ab_min) + 16 * math.log(2 * L / (L - 1)))
    torch.testing.assert_close(est.value, expected, rtol=1e-4, atol=1e-3)
    assert float(est.variance.abs().max()) < 1e-6


def test_ode_nll_metric_reports_the_ode_likelihood_beside_the_bound():
    torch.manual_seed(2)
    assert default_zoo().metric("ode_nll") is ODENLL
    model = DDPM(_spec(), hidden=[16], timesteps=20, ema_decay=None, ode_trace="hutchinson", ode_probes=4,
                 ode_probe_noise="gaussian")
    metric = ODENLL()
    assert metric.applies_to(model) and not metric.applies_to(object())
    metric.reset()
    x = torch.randn(40, 2)
    with torch.inference_mode():  # as in Lightning's test loop
        metric.update(model, x[:25])
        metric.update(model, x[25:])
    out = metric.compute(model)
    torch.manual_seed(2)
    model2 = DDPM(_spec(), hidden=[16], timesteps=20, ema_decay=None)  # the same weights, exact trace
    exact = -model2.ode_log_prob(x).value.double()
    assert out["ode_nll_nats"] == pytest.approx(float(exact.mean()), abs=5 * out["ode_nll_probe_stderr"] + 1e-4)
    assert out["ode_nll_probe_stderr"] > 0 and out["ode_nll_stderr"] > 0
    assert out["ode_bits_per_dim"] == pytest.approx(out["ode_nll_nats"] / (2 * math.log(2)))
    assert "Hutchinson estimate, 4 gaussian probes" in out["ode_likelihood"]
    assert "probability-flow ODE" in metric.describe(model)


def test_ode_settings_are_checked_and_overridden_by_eval_settings():
    with pytest.raises(ValueError, match="ode_t_min"):
        DDPM(_spec(), hidden=[8], timesteps=10, ode_t_min=1.5)
    with pytest.raises(ValueError, match="trace"):
        DDPM(_spec(), hidden=[8], timesteps=10, ode_trace="approximate")
    model = DDPM(_spec(), hidden=[8], timesteps=10)
    assert "exact log-likelihood" in model.ode_likelihood_description()
    model.configure_evaluation({"ode_trace": "hutchinson", "ode_probes": 3, "ode_method": "rk4", "ode_steps": 20})
    text = model.ode_likelihood_description()
    assert "Hutchinson estimate, 3 rademacher probes" in text and "rk4, 20 fixed steps" in text


def test_ode_nll_is_below_the_variational_bound_with_the_exact_noise_prediction():
    """Gaussian data N(0, c^2 I) and the exact eps: the ODE model's NLL is within noise of the data's
    entropy (it transports the exact marginals), while the ELBO's NLL pays the bound's gap: paired
    over the same examples, the ODE NLL is lower by many standard errors."""
    torch.manual_seed(3)
    c, D = 0.3, 2
    model = DDPM(_spec(), hidden=[8], timesteps=100, ema_decay=None).double()

    def exact_eps(net, x, t, labels=None, guidance=0.0):
        _, ab = model.vp_schedule(t.double() / model.timesteps)
        ab = ab.reshape(-1, 1)
        return torch.sqrt(1 - ab) * x / (ab * c ** 2 + 1 - ab)

    model.eps = exact_eps
    x = c * torch.randn(4096, D, dtype=torch.float64)
    ode_nll = -model.ode_log_prob(x).value
    elbo_nll = -torch.stack([model.elbo(x) for _ in range(8)]).mean(0)  # 8 draws of the one-draw estimator
    entropy = D * 0.5 * math.log(2 * math.pi * math.e * c ** 2)
    diff = elbo_nll - ode_nll
    assert float(diff.mean()) > 4 * float(diff.std()) / math.sqrt(len(diff)), float(diff.mean())
    assert abs(float(ode_nll.mean()) - entropy) < 4 * float(ode_nll.std()) / math.sqrt(len(x)) + 0.01
