"""Numerical checks of the diffusion family (DDPM): the forward process against its per-step
kernels and Bayes' rule, the ELBO against the exact log-density of Gaussian data (where the optimal
noise predictor is known in closed form), the exact sum over t against its Monte-Carlo estimate,
the discretised decoder, the DDIM and ancestral samplers, and 2-process DDP training.
Seeded and small."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import pytorch_lightning
import torch
from torch import nn

try:
    import zoo_diffusion
    zoo_diffusion.DDPM
except (ImportError, AttributeError):  # an uninstalled checkout: the package lives under plugins/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
    sys.modules.pop("zoo_diffusion", None)
    import zoo_diffusion

from conftest import run_zoo, zoo_env
from zoo_core.data.spec import DataSpec
from zoo_core.errors import ConfigError
from zoo_core.testing import ConformanceCase, FamilyConformance
from zoo_diffusion import DDPM
from zoo_diffusion.model import log_normal_cdf_diff, make_betas

TOY = DataSpec("toy-2d", (2,), "continuous").to_dict()
DIGITS = DataSpec("tiny-digits", (1, 8, 8), "dequantized", num_levels=17).to_dict()


def mean_and_se(v: torch.Tensor) -> tuple[float, float]:
    v = v.double()
    return v.mean().item(), (v.std() / math.sqrt(v.numel())).item()


class OptimalEps(nn.Module):
    """The exact minimiser of L_simple for data x_0 ~ N(0, s^2 I): E[eps | x_t] =
    sqrt(1 - ab_t) x_t / (ab_t s^2 + 1 - ab_t), since x_t ~ N(0, (ab_t s^2 + 1 - ab_t) I)."""

    def __init__(self, model: DDPM, s: float):
        super().__init__()
        self.alphas_bar, self.T, self.s = model.alphas_bar, model.timesteps, s

    def forward(self, x: torch.Tensor, t_in: torch.Tensor) -> torch.Tensor:
        t = torch.round(t_in.double() * self.T / 1000).long()  # the model passes t * 1000 / T
        ab = self.alphas_bar[t].reshape(-1, *([1] * (x.dim() - 1)))
        return (torch.sqrt(1 - ab) * x.double() / (ab * self.s**2 + 1 - ab)).to(x.dtype)


def gaussian_model(s: float, T: int, variance: str = "beta", **kw) -> DDPM:
    model = DDPM(TOY, hidden=[8], timesteps=T, variance=variance, ema_decay=None, **kw)
    model.net = OptimalEps(model, s)
    return model.double()


def gaussian_log_density(x: torch.Tensor, s: float) -> torch.Tensor:
    return (-0.5 * (x / s) ** 2 - 0.5 * math.log(2 * math.pi * s * s)).sum(-1)


# ---- the forward process ------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("T", [1, 20, 1000])
def test_closed_form_forward_process_matches_iterated_kernels(schedule, T):
    """q(x_t | x_0) in closed form equals composing q(x_s | x_{s-1}) = N(sqrt(1 - b_s) x, b_s) t times."""
    model = DDPM(TOY, hidden=[8], timesteps=T, schedule=schedule, ema_decay=None)
    x0 = torch.tensor([[1.5, -0.7]], dtype=torch.float64)
    mean, var = x0.clone(), torch.zeros(1, 1, dtype=torch.float64)
    for t in range(1, T + 1):
        beta = model.betas[t]
        mean, var = torch.sqrt(1 - beta) * mean, (1 - beta) * var + beta
        m, v = model.q_mean_var(x0, torch.tensor([t]))
        torch.testing.assert_close(m, mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(v, var, rtol=1e-10, atol=1e-12)
    assert float(model.alphas_bar[T]) < (0.01 if T >= 20 else 1.0)  # the chain ends near N(0, I)


def test_forward_samples_match_the_per_step_chain():
    """Simulating the Markov chain step by step gives the moments of q(x_t | x_0) (Monte Carlo)."""
    torch.manual_seed(0)
    model = DDPM(TOY, hidden=[8], timesteps=50, ema_decay=None)
    x0 = torch.tensor([2.0, -1.0])
    x = x0.expand(20000, 2).clone()
    for t in range(1, 51):
        beta = float(model.betas[t])
        x = math.sqrt(1 - beta) * x + math.sqrt(beta) * torch.randn_like(x)
        if t in (1, 10, 50):
            m, v = model.q_mean_var(x0[None].double(), torch.tensor([t]))
            assert torch.allclose(x.mean(0).double(), m[0], atol=4 * math.sqrt(float(v) / 20000))
            assert torch.allclose(x.var(0).double(), v[0].expand(2), rtol=0.05)
    direct = model.q_sample(x0.expand(20000, 2), torch.full((20000,), 50), torch.randn(20000, 2))
    assert torch.allclose(direct.mean(0), x.mean(0), atol=0.05) and torch.allclose(direct.var(0), x.var(0), rtol=0.05)


def test_posterior_is_bayes_rule():
    """q(x_{t-1} | x_t, x_0) equals Gaussian conditioning of q(x_{t-1} | x_0) on q(x_t | x_{t-1})."""
    model = DDPM(TOY, hidden=[8], timesteps=100, schedule="cosine", ema_decay=None)
    x0 = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    xt = torch.tensor([[-0.5, 0.8]], dtype=torch.float64)
    for t in (2, 10, 50, 100):
        ab_prev, beta = model.alphas_bar[t - 1], model.betas[t]
        precision = 1 / (1 - ab_prev) + (1 - beta) / beta
        mean = (torch.sqrt(ab_prev) * x0 / (1 - ab_prev) + torch.sqrt(1 - beta) * xt / beta) / precision
        m, v = model.q_posterior(x0, xt, torch.tensor([t]))
        torch.testing.assert_close(m, mean, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(v.reshape(()), 1 / precision, rtol=1e-9, atol=1e-15)


def test_schedules():
    linear = make_betas("linear", 1000)
    assert float(linear[0]) == pytest.approx(1e-4) and float(linear[-1]) == pytest.approx(0.02)
    short = make_betas("linear", 100)  # scaled by 1000/T (Nichol & Dhariwal)
    assert float(short[0]) == pytest.approx(1e-3) and float(short[-1]) == pytest.approx(0.2)
    cosine = make_betas("cosine", 1000)
    ab = torch.cumprod(1 - cosine, 0)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert float(ab[499]) == pytest.approx(f(500) / f(0), rel=1e-9)
    assert float(cosine.max()) <= 0.999 and float(cosine.min()) > 0


# ---- the bound ----------------------------------------------------------------------------------------
def test_elbo_is_exact_when_the_reverse_process_is_exact():
    """Data N(0, I) and sigma_t^2 = beta_t: the reverse kernels with the optimal predictor are the
    true ones, p(x_{0:T}) = q(x_{0:T}), so E[ELBO] = log p(x_0) exactly, for any T."""
    torch.manual_seed(1)
    for T in (5, 50):
        model = gaussian_model(1.0, T)
        x = torch.randn(4000, 2, dtype=torch.float64)
        with torch.no_grad():
            gap, se = mean_and_se(gaussian_log_density(x, 1.0) - model.log_prob(x))
        assert abs(gap) < 4 * se + 1e-3, (T, gap, se)


@pytest.mark.parametrize("s", [0.5, 2.0])
def test_elbo_is_below_the_exact_log_density_and_tightens_with_T(s):
    """Data N(0, s^2 I) with the exact optimal noise predictor: ELBO <= log p(x), and close to it for large T."""
    torch.manual_seed(2)
    gaps = {}
    for T in (10, 200):
        model = gaussian_model(s, T)
        x = s * torch.randn(3000, 2, dtype=torch.float64)
        with torch.no_grad():
            gaps[T] = mean_and_se(gaussian_log_density(x, s) - model.log_prob(x))
        gap, se = gaps[T]
        assert gap > -3 * se, f"T={T}: the ELBO exceeds log p(x) by {-gap:.4f} (se {se:.4f})"
    (g10, se10), (g200, se200) = gaps[10], gaps[200]
    assert g10 > 0.1 and g10 - g200 > 3 * math.hypot(se10, se200)
    assert g200 < 0.1, f"T=200: the ELBO stays {g200:.3f} nats below log p(x)"


def test_exact_sum_over_t_equals_the_monte_carlo_estimate():
    """The stratified estimate over K sampled t is unbiased for the sum over all T-1 terms."""
    torch.manual_seed(3)
    model = DDPM(TOY, hidden=[32, 32], timesteps=60, ema_decay=None)
    nn.init.normal_(model.net.out.weight, std=0.3)  # a generic (untrained, non-zero) predictor
    x = torch.randn(3000, 2) * 0.7
    with torch.no_grad():
        exact = model.elbo(x, None)
        for K in (1, 7):
            estimate = model.elbo(x, K)
            diff, se = mean_and_se(exact - estimate)
            assert abs(diff) < 4 * se, (K, diff, se)
        assert model.elbo(x[:5], 59).shape == (5,)  # K >= T-1: the exact sum
    model.bound_timesteps = 7
    assert "7 of the 59" in model.likelihood_description()
    model.bound_timesteps = None
    assert "all T=60" in model.likelihood_description()


def test_log_normal_cdf_diff_is_stable():
    a = torch.tensor([-math.inf, -1.0, 30.0, -40.1, 5.0], dtype=torch.float64)
    b = torch.tensor([0.0, 1.0, 30.1, -40.0, math.inf], dtype=torch.float64)
    got = log_normal_cdf_diff(a, b)
    assert torch.isfinite(got).all()
    n = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
    torch.testing.assert_close(got[:2], torch.log(n.cdf(b[:2]) - n.cdf(a[:2])))
    torch.testing.assert_close(got[4], torch.log(n.cdf(-a[4])))  # upper tail: log Phi(-5)
    assert -460 < float(got[2]) < -450  # Phi(30.1) - Phi(30) ~ e^-455, not 0


def test_discretised_decoder_is_a_distribution_over_levels():
    """Over the L levels the decoder's probabilities sum to 1, and the image ELBO bounds a log-probability."""
    torch.manual_seed(4)
    model = DDPM(DIGITS, hidden=[32], timesteps=20, network="mlp", ema_decay=None)
    nn.init.normal_(model.net.out.weight, std=0.3)
    L = 17
    levels = torch.arange(L, dtype=torch.float64)
    x = ((levels + 0.5) / L).reshape(L, 1, 1, 1).expand(L, 1, 8, 8)  # every pixel at level k
    with torch.no_grad():
        torch.manual_seed(5)
        decoder = model.decoder_nll(model.to_model_space(x.float()))  # (L,) = -64 log P(level k everywhere)
    # one pixel's probabilities: feed a single fixed mean by evaluating the formula directly
    mean = torch.tensor(0.13, dtype=torch.float64)
    sd = 0.2
    v = 2 * levels / (L - 1) - 1
    lo = torch.where(levels == 0, -math.inf, (v - 1 / (L - 1) - mean) / sd)
    hi = torch.where(levels == L - 1, math.inf, (v + 1 / (L - 1) - mean) / sd)
    assert float(log_normal_cdf_diff(lo, hi).exp().sum()) == pytest.approx(1.0, abs=1e-12)
    assert torch.isfinite(decoder).all() and (decoder >= 0).all()
    data = (torch.randint(0, L, (64, 1, 8, 8)) + torch.rand(64, 1, 8, 8)) / L
    with torch.no_grad():
        bound = model.log_prob(data) - 64 * math.log(L)  # the ELBO on log P(k) <= log P(k) <= 0
    assert (bound <= 1e-9).all()
    # the dequantisation noise is irrelevant: the model sees levels only
    shifted = (torch.floor(data * L) + 0.999 * torch.rand_like(data)) / L
    with torch.no_grad():
        torch.manual_seed(6)
        a = model.log_prob(data)
        torch.manual_seed(6)
        b = model.log_prob(shifted)
    torch.testing.assert_close(a, b)


# ---- sampling -----------------------------------------------------------------------------------------
def test_ddim_with_eta_one_and_all_steps_is_the_ancestral_sampler():
    """Song et al.: DDIM with eta = 1 over all T steps is ancestral sampling with sigma_t^2 = beta~_t,
    pathwise given the same noise; and its statistics match those of the data the model is exact for."""
    model = gaussian_model(0.5, 100, variance="posterior")
    x_T = torch.randn(4000, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    torch.manual_seed(8)
    ancestral = model.denoise(x_T, sampler="ancestral", steps=None)
    torch.manual_seed(8)
    ddim = model.denoise(x_T, sampler="ddim", steps=None, eta=1.0)
    torch.testing.assert_close(ddim, ancestral, rtol=1e-7, atol=1e-9)
    # statistics: for T = 1000 both variance choices are close to the true reverse kernels, so every
    # sampler reproduces N(0, 0.5^2 I) (at T = 100, sigma_t^2 = beta~_t gives a std about 6% low)
    model = gaussian_model(0.5, 1000, variance="beta")
    torch.manual_seed(9)
    stds = {}
    for sampler, eta in (("ancestral", 0.0), ("ddim", 1.0), ("ddim", 0.0)):
        model.sampler, model.ddim_eta = sampler, eta
        s = model.sample(10000)
        assert s.mean(0).abs().max() < 4 * 0.5 / math.sqrt(10000), (sampler, eta)
        stds[sampler, eta] = s.std(0)
        assert torch.allclose(s.std(0), torch.full((2,), 0.5, dtype=s.dtype), rtol=0.05), (sampler, eta, s.std(0))
    assert torch.allclose(stds["ddim", 1.0], stds["ancestral", 0.0], rtol=0.04)


def test_ddim_with_clipping_and_eta_one_is_ancestral_for_images():
    torch.manual_seed(10)
    model = DDPM(DIGITS, network="unet", channels=[8, 16], time_embed_dim=16, timesteps=30,
                 variance="posterior", ema_decay=None)
    nn.init.normal_(model.net.out.weight, std=0.1)
    x_T = torch.randn(6, 1, 8, 8)
    torch.manual_seed(11)
    ancestral = model.denoise(x_T, sampler="ancestral", steps=None)
    torch.manual_seed(11)
    ddim = model.denoise(x_T, sampler="ddim", steps=None, eta=1.0)
    torch.testing.assert_close(ddim, ancestral, rtol=1e-4, atol=1e-5)
    assert ancestral.abs().max() <= 1  # clipped x0 prediction


def test_ddim_with_eta_zero_is_deterministic_given_the_noise():
    torch.manual_seed(12)
    model = DDPM(TOY, hidden=[32], timesteps=100, sampler="ddim", sample_steps=20, ddim_eta=0.0, ema_decay=None)
    nn.init.normal_(model.net.out.weight, std=0.3)
    x_T = torch.randn(50, 2)
    torch.manual_seed(1)
    a = model.denoise(x_T)
    torch.manual_seed(2)
    b = model.denoise(x_T)
    assert torch.equal(a, b)
    torch.manual_seed(1)
    c = model.denoise(x_T, eta=0.5)
    torch.manual_seed(2)
    d = model.denoise(x_T, eta=0.5)
    assert not torch.equal(c, d)
    assert model.sampling_timesteps(20)[0] == 100 and model.sampling_timesteps(20)[-1] == 1
    assert len(model.sampling_timesteps(20)) == 20 and model.sampling_timesteps(None) == list(range(100, 0, -1))


def test_image_samples_and_pictures():
    torch.manual_seed(13)
    model = DDPM(DIGITS, network="unet", channels=[8, 16], time_embed_dim=16, timesteps=10, ema_decay=None)
    s = model.sample((2, 3))
    assert s.shape == (2, 3, 1, 8, 8) and s.min() >= 0 and s.max() < 1
    shown = model.sample_for_display(5)
    assert shown.shape == (5, 1, 8, 8) and shown.min() >= 0 and shown.max() <= 1
    model.sampler, model.sample_steps = "ddim", 4
    assert model.sample(3).shape == (3, 1, 8, 8)


# ---- configuration, checkpoints, training -------------------------------------------------------------
def test_configuration_errors():
    with pytest.raises(ValueError, match="dequantized"):
        DDPM(DataSpec("b", (1, 8, 8), "binarized").to_dict())
    for bad in ({"schedule": "quadratic"}, {"sampler": "euler"}, {"variance": "learnt"}, {"timesteps": 0},
                {"network": "unet"}, {"bound_timesteps": 0}, {"ddim_eta": 2.0}):
        with pytest.raises(ValueError):
            DDPM(TOY, **bad)
    model = DDPM(TOY, hidden=[8])
    model.configure_evaluation({"iw_samples": None, "num_samples": 64})
    with pytest.raises(ConfigError, match="bound_timesteps"):
        model.configure_evaluation({"iw_samples": 100})


def test_plugin_registers_the_family():
    registered = []
    zoo_diffusion.register_families(registered.append)
    assert [r.load() for r in registered] == [DDPM]  # a lazy registration of the class and DDPM.family == "diffusion" and DDPM.likelihood == "bound"


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    torch.manual_seed(14)
    model = DDPM(DIGITS, optim={"lr": 3e-4}, network="mlp", hidden=(32, 16), timesteps=20, bound_timesteps=5)
    assert dict(model.hparams)["hidden"] == [32, 16] and dict(model.hparams)["bound_timesteps"] == 5
    model.on_train_batch_end(None, None, 0)  # one EMA update
    path = tmp_path / "ddpm.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": pytorch_lightning.__version__}, path)
    loaded = DDPM.load_from_checkpoint(path, weights_only=True)
    assert dict(loaded.hparams) == dict(model.hparams) and int(loaded.ema_updates) == 1
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        torch.manual_seed(15)
        expected = model.log_prob(x)
        torch.manual_seed(15)
        actual = loaded.log_prob(x)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_training_improves_the_bound():
    """A few hundred Adam steps on moons-like data raise the ELBO well above the untrained model's."""
    torch.manual_seed(16)
    angle = torch.rand(2000) * math.pi
    x = torch.stack([torch.cos(angle), torch.sin(angle)], -1) + 0.05 * torch.randn(2000, 2)
    model = DDPM(TOY, hidden=[64, 64], timesteps=50, ema_decay=None, bound_timesteps=10)
    with torch.no_grad():
        before = model.log_prob(x).mean()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(300):
        opt.zero_grad()
        model.loss(x[torch.randint(0, 2000, (256,))]).backward()
        opt.step()
    with torch.no_grad():
        after = model.log_prob(x).mean()
    assert after > before + 1.0, (before.item(), after.item())


class TestTinyImageConformance(FamilyConformance):
    """The conformance kit on a tiny U-Net DDPM over random dequantised 8x8 images."""

    def make_case(self) -> ConformanceCase:
        data = (torch.randint(0, 17, (32, 1, 8, 8), generator=torch.Generator().manual_seed(0)) + 0.5) / 17
        return ConformanceCase(
            name="tiny-ddpm", family_cls=DDPM, data=data, lr=1e-3,
            build=lambda: DDPM(DIGITS, network="unet", channels=[8, 16], time_embed_dim=16, timesteps=10))


def test_ddp_two_processes_end_with_identical_weights(tmp_path):
    result = run_zoo("train", "diffusion-moons", "--accelerator", "cpu", "--devices", "2", "--max-steps", "10",
                     "--set", "data.n_train=2000", "--set", "data.n_val=500", "--set", "data.n_test=500",
                     "--set", "model.timesteps=20", "--set", "model.bound_timesteps=4",
                     "--runs-dir", tmp_path, "--no-progress", env=zoo_env())
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "diffusion-moons" / "version_0" / "metrics.json").read_text())
    ddp = metrics["ddp"]
    assert ddp["world_size"] == 2 and ddp["identical"]
    assert metrics["likelihood"] == "bound" and "4 of the 19" in metrics["test"]["likelihood"]
    assert math.isfinite(metrics["test"]["nll_nats"])
