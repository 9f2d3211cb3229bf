"""Learned reverse variances in the diffusion family (Nichol & Dhariwal 2021, "Improved Denoising
Diffusion Probabilistic Models", section 3.1): the log-domain interpolation (eq. 15), the KL terms
and decoder against torch.distributions, the stop-gradient of the hybrid loss (eq. 16), the ancestral
sampler's variances, DDIM and the probability-flow ODE on eps alone, guidance, a tighter bound than
fixed variances on two moons, and the conformance kit. Seeded and small."""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from zoo_core.api import default_zoo
from zoo_core.data.spec import DataSpec
from zoo_core.runner import build_datamodule, build_model
from zoo_core.testing import ConformanceCase, FamilyConformance, case_from_config
from zoo_diffusion import DDPM

TOY = DataSpec("toy-2d", (2,), "continuous").to_dict()
DIGITS = DataSpec("tiny-digits", (1, 8, 8), "dequantized", num_levels=17).to_dict()
LABELLED = {"name": "toy", "event_shape": [2], "representation": "continuous", "num_classes": 3, "conditional": True}
SMALL = dict(hidden=[32, 32], timesteps=20, ema_decay=None, variance="learned")


def _randomise_output(model: DDPM, std: float = 0.3) -> None:
    """The output layer starts at zero (eps = v = 0); random weights make eps and v non-trivial."""
    torch.nn.init.normal_(model.net.out.weight, std=std)
    torch.nn.init.normal_(model.net.out.bias, std=std)


def test_the_network_outputs_eps_and_v_for_mlp_and_unet():
    torch.manual_seed(0)
    for spec, kw in ((TOY, dict(hidden=[16])), (DIGITS, dict(network="unet", channels=[8], time_embed_dim=16))):
        fixed = DDPM(spec, timesteps=10, ema_decay=None, **kw)
        learned = DDPM(spec, timesteps=10, ema_decay=None, variance="learned", **kw)
        assert learned.net.out.weight.shape[0] == 2 * fixed.net.out.weight.shape[0]
        x = torch.randn(3, *learned.event_shape)
        t = torch.tensor([1, 5, 10])
        eps, v = learned.predict(learned.net, x, t)
        assert eps.shape == v.shape == x.shape
        assert fixed.predict(fixed.net, x, t)[1] is None


def test_the_interpolated_variance_ends_at_beta_and_the_posterior_variance():
    """Sigma = exp(v log beta_t + (1 - v) log beta~_t) (eq. 15): beta_t at v = 1, beta~_t at v = 0
    (beta~_2 at t = 1, where beta~_1 = 0), their geometric mean at v = 1/2, per dimension."""
    model = DDPM(TOY, **SMALL).double()
    t = torch.arange(1, 21)  # (T,)
    like = torch.zeros(20, 2, dtype=torch.float64)
    betas = model.betas[t]
    post = model.posterior_var[t].clone()
    post[0] = model.posterior_var[2]
    torch.testing.assert_close(model.log_variance(t, like + 1, like).exp(), betas[:, None].expand(20, 2))
    torch.testing.assert_close(model.log_variance(t, like, like).exp(), post[:, None].expand(20, 2))
    torch.testing.assert_close(model.log_variance(t, like + 0.5, like).exp(), torch.sqrt(betas * post)[:, None].expand(20, 2))
    v = torch.stack([torch.zeros(20), torch.ones(20)], -1).double()  # dimension 0 at beta~, 1 at beta
    torch.testing.assert_close(model.log_variance(t, v, like).exp(), torch.stack([post, betas], -1))
    assert (post[1:] < betas[1:]).all()  # a real interval between the two ends


@pytest.mark.parametrize("clip", [False, True])
def test_the_kl_terms_and_decoder_match_torch_distributions(clip):
    """L_{t-1} = KL(N(mu~_t, beta~_t) || N(mu_theta, Sigma_theta)) summed over dimensions, for random
    x_0, noise, eps and v (v also outside [0, 1]); L_0 = -log N(x_0; x0_theta(x_1), Sigma_theta(x_1, 1))."""
    torch.manual_seed(0)
    model = DDPM(TOY, **SMALL, clip_denoised=clip).double()
    n = 64
    x0 = torch.rand(n, 2, dtype=torch.float64) * 1.6 - 0.8
    t = torch.randint(2, 21, (n,))
    noise, eps = torch.randn(n, 2, dtype=torch.float64), torch.randn(n, 2, dtype=torch.float64)
    v = torch.randn(n, 2, dtype=torch.float64) * 1.5
    x_t = model.q_sample(x0, t, noise)
    mean_q, var_q = model.q_posterior(x0, x_t, t)
    mean_p, _ = model.q_posterior(model.predict_x0(x_t, t, eps), x_t, t)  # mu_theta = mu~_t(x0_theta, x_t)
    var_p = torch.exp(v * torch.log(model.betas[t])[:, None] + (1 - v) * torch.log(model.posterior_var[t])[:, None])
    expected = kl_divergence(Normal(mean_q, var_q.sqrt().expand(n, 2)), Normal(mean_p, var_p.sqrt())).sum(-1)
    torch.testing.assert_close(model.kl_given(x0, x_t, noise, t, eps, v), expected, rtol=1e-9, atol=1e-9)

    one = torch.ones(n, dtype=torch.long)
    x1 = model.q_sample(x0, one, noise)
    var_1 = torch.exp(v * torch.log(model.betas[1]) + (1 - v) * torch.log(model.posterior_var[2]))
    expected = -Normal(model.predict_x0(x1, one, eps), var_1.sqrt()).log_prob(x0).sum(-1)
    torch.testing.assert_close(model.decoder_nll_given(x0, x1, eps, v), expected, rtol=1e-9, atol=1e-9)


def test_the_discretised_decoder_uses_the_learned_variance_per_pixel():
    """Images: P(k) = Phi((v_k + 1/(L-1) - mu)/sigma) - Phi((v_k - 1/(L-1) - mu)/sigma) with a per-pixel
    sigma^2 = exp(v log beta_1 + (1 - v) log beta~_2), edges at +-inf."""
    torch.manual_seed(1)
    model = DDPM(DIGITS, network="unet", channels=[8], time_embed_dim=16, timesteps=10, ema_decay=None,
                 variance="learned").double()
    L = 17
    k = torch.randint(0, L, (4, 1, 8, 8)).double()
    x0 = 2 * k / (L - 1) - 1
    one = torch.ones(4, dtype=torch.long)
    x1 = model.q_sample(x0, one, torch.randn_like(x0))
    eps, v = torch.randn_like(x0), torch.randn_like(x0)
    mean = model.predict_x0(x1, one, eps)
    sd = torch.exp(0.5 * (v * torch.log(model.betas[1]) + (1 - v) * torch.log(model.posterior_var[2])))
    unit = Normal(torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64))
    upper = torch.where(k == L - 1, torch.ones_like(k), unit.cdf((x0 + 1 / (L - 1) - mean) / sd))
    lower = torch.where(k == 0, torch.zeros_like(k), unit.cdf((x0 - 1 / (L - 1) - mean) / sd))
    expected = -torch.log(upper - lower).reshape(4, -1).sum(-1)
    torch.testing.assert_close(model.decoder_nll_given(x0, x1, eps, v), expected, rtol=1e-7, atol=1e-7)


def test_the_vlb_part_of_the_hybrid_loss_does_not_train_the_mean():
    """L_hybrid = L_simple + 0.001 L_vlb (eq. 16) with a stop-gradient on the mean: the gradient of
    L_vlb with respect to the eps half of the network's output is zero, and nonzero for the v half;
    without the stop-gradient it would not be zero."""
    torch.manual_seed(0)
    model = DDPM(TOY, **SMALL)
    _randomise_output(model)
    x = torch.randn(128, 2)
    outputs = []

    def keep(module, inputs, out):  # the output layer's (N, 2D) result, with its gradient
        out.retain_grad()
        outputs.append(out)

    model.net.out.register_forward_hook(keep)

    torch.manual_seed(5)
    simple, vlb = model.hybrid_terms(x)
    (model.vlb_weight * vlb).backward()
    grad = outputs[-1].grad  # (N, 2D): [eps, v]
    assert torch.equal(grad[:, :2], torch.zeros_like(grad[:, :2]))
    assert grad[:, 2:].abs().sum() > 0
    torch.manual_seed(5)
    assert torch.allclose(model.loss(x), simple + 0.001 * vlb)

    # the same estimate with the mean attached: the eps half would receive a gradient
    torch.manual_seed(5)
    x0 = model.to_model_space(x)
    t = torch.randint(1, 21, (128,))
    noise = torch.randn_like(x0)
    x_t = model.q_sample(x0, t, noise)
    eps, v = model.predict(model.net, x_t, t)
    model.vlb_estimate(x0, x_t, noise, t, eps, v).backward()
    assert outputs[-1].grad[:, :2].abs().sum() > 0


def test_the_vlb_estimate_is_unbiased_for_the_bound_without_l_T():
    """E_t[T/D L_{t-1}] with t ~ U{1..T} equals (L_0 + sum_{t>=2} L_{t-1}) / D = (-ELBO - L_T) / D."""
    torch.manual_seed(0)
    model = DDPM(TOY, **SMALL)
    _randomise_output(model, std=0.1)
    x = torch.randn(200, 2) * 0.7
    with torch.no_grad():  # both sides are means over x_t draws: 20 of the exact sum, 400 of one t each
        exact = torch.stack([((-model.elbo(x).double() - model.prior_kl(x)) / 2).mean() for _ in range(20)])
        estimates = torch.stack([model.hybrid_terms(x)[1] for _ in range(400)]).double()
    se = math.hypot(float(exact.std()) / math.sqrt(20), float(estimates.std()) / math.sqrt(400))
    gap = float(estimates.mean() - exact.mean())
    assert abs(gap) < 4 * se, (float(estimates.mean()), float(exact.mean()), se)
    assert se < 0.05 * float(exact.mean())  # a check with teeth: the noise is small next to the value


def test_the_ancestral_sampler_draws_with_the_learned_variances():
    """With eps = 0 and v = c: x_1 = mu(x_2) + sqrt(exp(c log beta_2 + (1 - c) log beta~_2)) z and the
    decoder adds sqrt(exp(c log beta_1 + (1 - c) log beta~_2)) z'; respaced steps interpolate between
    their own respaced beta and beta~."""
    model = DDPM(TOY, hidden=[8], timesteps=2, ema_decay=None, variance="learned").double()
    c = torch.tensor([0.3, 1.7], dtype=torch.float64)  # one v per dimension, one of them outside [0, 1]
    model.predict = lambda net, x, t, labels=None, guidance=0.0: (torch.zeros_like(x), c.expand_as(x))
    torch.manual_seed(3)
    got = model.sample((5,))
    torch.manual_seed(3)
    x2 = torch.randn(5, 2, dtype=torch.float64)
    b1, b2, p2 = model.betas[1], model.betas[2], model.posterior_var[2]
    x1 = x2 / torch.sqrt(1 - b2) + torch.exp(0.5 * (c * torch.log(b2) + (1 - c) * torch.log(p2))) * torch.randn(5, 2, dtype=torch.float64)
    x0 = x1 / torch.sqrt(1 - b1)  # x0_theta(x_1) with eps = 0
    expected = x0 + torch.exp(0.5 * (c * torch.log(b1) + (1 - c) * torch.log(p2))) * torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(got, expected)

    model = DDPM(TOY, hidden=[8], timesteps=100, ema_decay=None, variance="learned", sample_steps=2).double()
    model.predict = lambda net, x, t, labels=None, guidance=0.0: (torch.zeros_like(x), c.expand_as(x))
    assert model.sampling_timesteps(2) == [100, 1]
    torch.manual_seed(4)
    got = model.denoise(torch.zeros(3, 2, dtype=torch.float64))
    torch.manual_seed(4)
    ab = model.alphas_bar[100] / model.alphas_bar[1]  # the respaced step 100 -> 1
    beta, post = 1 - ab, (1 - model.alphas_bar[1]) / (1 - model.alphas_bar[100]) * (1 - ab)
    x1 = torch.exp(0.5 * (c * torch.log(beta) + (1 - c) * torch.log(post))) * torch.randn(3, 2, dtype=torch.float64)
    torch.testing.assert_close(got, x1 / torch.sqrt(1 - model.betas[1]))


def test_ddim_and_the_probability_flow_ode_use_eps_only():
    """A fixed-variance model given the learned model's eps weights: DDIM paths and the ODE drift agree
    (the ODE likelihood up to the adaptive solver's reaction to float rounding)."""
    torch.manual_seed(0)
    learned = DDPM(TOY, hidden=[16], timesteps=20, ema_decay=None, variance="learned", sampler="ddim", sample_steps=5)
    _randomise_output(learned)
    fixed = DDPM(TOY, hidden=[16], timesteps=20, ema_decay=None, variance="beta", sampler="ddim", sample_steps=5)
    state = {k: v for k, v in learned.net.state_dict().items() if not k.startswith("out.")}
    state["out.weight"], state["out.bias"] = learned.net.out.weight[:2], learned.net.out.bias[:2]
    fixed.net.load_state_dict(state)
    x_T = torch.randn(16, 2)
    with torch.no_grad():
        torch.testing.assert_close(learned.denoise(x_T), fixed.denoise(x_T))  # eta = 0
        torch.manual_seed(1)
        a = learned.denoise(x_T, eta=0.7)
        torch.manual_seed(1)
        torch.testing.assert_close(a, fixed.denoise(x_T, eta=0.7))
        s = torch.rand(16) * 0.9 + 0.05
        torch.testing.assert_close(learned.probability_flow(s, x_T), fixed.probability_flow(s, x_T))
        est = learned.ode_log_prob(x_T[:4])
        torch.testing.assert_close(est.value, fixed.ode_log_prob(x_T[:4]).value, rtol=1e-3, atol=1e-3)


def test_guidance_keeps_the_conditional_branch_variance():
    """eps~ = (1 + w) eps(x_t, y) - w eps(x_t), and v = v(x_t, y) (as in GLIDE)."""
    torch.manual_seed(0)
    model = DDPM(LABELLED, **SMALL)
    torch.nn.init.normal_(model.net.class_embed.weight)
    _randomise_output(model)
    x, t, y = torch.randn(7, 2), torch.full((7,), 5), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    eps_c, v_c = model.predict(model.net, x, t, y)
    eps_u, v_u = model.predict(model.net, x, t, None)
    assert not torch.allclose(v_c, v_u)
    eps_g, v_g = model.predict(model.net, x, t, y, guidance=2.0)
    torch.testing.assert_close(eps_g, 3 * eps_c - 2 * eps_u)
    torch.testing.assert_close(v_g, v_c)
    model.guidance_scale = 2.0
    assert model.sample((4,), context=1).shape == (4, 2)
    assert torch.isfinite(model.log_prob(x, y)).all() and torch.isfinite(model.loss(x, y))


def test_variance_and_vlb_weight_are_validated():
    with pytest.raises(ValueError, match="learned"):
        DDPM(TOY, variance="learnt")
    with pytest.raises(ValueError, match="vlb_weight"):
        DDPM(TOY, variance="learned", vlb_weight=-1.0)


# ---- the bound on two moons ---------------------------------------------------------------------
#: diffusion-moons scaled down to train in seconds: a smaller MLP, T = 100, 1500 Adam steps
MOONS = ["model.hidden=[64,64]", "model.timesteps=100", "model.ema_decay=null", "data.n_train=5000",
         "data.n_val=500", "data.n_test=2000"]
MOONS_STEPS = 1500


def _moons_bound_nll(variance: str, seed: int = 0) -> torch.Tensor:
    """Per-example test bound NLL (nats, all T terms) after MOONS_STEPS steps from the same seed."""
    zoo = default_zoo()
    config = zoo.resolve("diffusion-moons", MOONS + [f"model.variance={variance}"])
    datamodule = build_datamodule(zoo, config)
    train, test = datamodule.eval_data("train"), datamodule.eval_data("test")
    torch.manual_seed(seed)
    model = build_model(zoo, config, datamodule)
    opt = torch.optim.Adam(model.parameters(), lr=float(config["optim"]["lr"]))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, MOONS_STEPS)
    for _ in range(MOONS_STEPS):
        opt.zero_grad()
        model.loss(train[torch.randint(0, len(train), (256,))]).backward()
        opt.step()
        sched.step()
    model.eval()
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        return -model.log_prob(test).double()  # (n_test,)


def test_learned_variances_tighten_the_bound_on_moons():
    """Same seed, steps and data: the bound NLL with learned variances is lower than with beta_t, by
    more than 3 standard errors of the paired per-example difference and by more than the standard
    error of the difference of the two means taken as independent."""
    fixed, learned = _moons_bound_nll("beta"), _moons_bound_nll("learned")
    diff = fixed - learned  # (n_test,) paired: the same test points
    n = len(diff)
    gain, paired_se = float(diff.mean()), float(diff.std() / math.sqrt(n))
    unpaired_se = math.hypot(float(fixed.std()), float(learned.std())) / math.sqrt(n)
    what = (float(fixed.mean()), float(learned.mean()), paired_se, unpaired_se)
    assert gain > 3 * paired_se and gain > unpaired_se, what


# ---- the conformance kit ------------------------------------------------------------------------
class TestLearnedVarianceMoonsConformance(FamilyConformance):
    """The kit on diffusion-moons-learned, scaled down (smaller MLP, T = 50)."""

    def make_case(self) -> ConformanceCase:
        zoo = default_zoo()
        config = zoo.resolve("diffusion-moons-learned", ["model.hidden=[64,64]", "model.timesteps=50",
                                                          "data.n_train=1000", "data.n_val=200", "data.n_test=200"])
        assert config["model"]["variance"] == "learned"
        return case_from_config(zoo, config, batch=128)


class TestLearnedVarianceConditionalConformance(FamilyConformance):
    """The kit on a class-conditional learned-variance model (two labelled clusters)."""

    def make_case(self) -> ConformanceCase:
        g = torch.Generator().manual_seed(0)
        y = torch.randint(3, (128,), generator=g)
        x = torch.randn(128, 2, generator=g) * 0.3 + torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])[y]
        return ConformanceCase(name="ddpm-learned-conditional", family_cls=DDPM, data=x, context=y, lr=3e-3,
                               build=lambda: DDPM(LABELLED, hidden=[32, 32], timesteps=30, variance="learned",
                                                  ema_decay=0.9, guidance=1.0))


class TestLearnedVarianceImageConformance(FamilyConformance):
    """The kit on a tiny U-Net with learned variances over random dequantised 8x8 images (discretised decoder)."""

    def make_case(self) -> ConformanceCase:
        data = (torch.randint(0, 17, (32, 1, 8, 8), generator=torch.Generator().manual_seed(0)) + 0.5) / 17
        return ConformanceCase(
            name="tiny-ddpm-learned", family_cls=DDPM, data=data, lr=1e-3,
            build=lambda: DDPM(DIGITS, network="unet", channels=[8, 16], time_embed_dim=16, timesteps=10,
                               variance="learned"))
