"""Numerical checks of the VAE family: shapes, gradients, the IWAE bound against exact quadrature,
training progress and checkpoint round trips. Seeded and small (a few seconds on a CPU)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import pytorch_lightning
import torch

try:
    import zoo_vae
except ImportError:  # an uninstalled checkout: the package lives under plugins/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
    import zoo_vae

from zoo_core.data.spec import DataSpec
from zoo_vae import VAE

BINARY = DataSpec("tiny-binary", (1, 8, 8), "binarized").to_dict()
CONTINUOUS = DataSpec("toy-2d", (2,), "continuous").to_dict()
DEQUANTIZED = DataSpec("tiny-images", (1, 8, 8), "dequantized", num_levels=256).to_dict()
SPECS = {"binarized": BINARY, "continuous": CONTINUOUS, "dequantized": DEQUANTIZED}


def make_data(spec: dict, n: int, generator: torch.Generator) -> torch.Tensor:
    shape = (n, *spec["event_shape"])
    if spec["representation"] == "binarized":
        return (torch.rand(shape, generator=generator) < 0.3).float()
    if spec["representation"] == "continuous":
        return torch.randn(shape, generator=generator)
    return torch.rand(shape, generator=generator)


def mean_and_se(v: torch.Tensor) -> tuple[float, float]:
    v = v.double()
    return v.mean().item(), (v.std() / math.sqrt(v.numel())).item()


@pytest.mark.parametrize("representation", sorted(SPECS))
def test_shapes_and_gradients(representation):
    torch.manual_seed(0)
    spec = SPECS[representation]
    event = tuple(spec["event_shape"])
    model = VAE(spec, latent_dim=3, hidden=[16, 16])
    x = make_data(spec, 12, torch.Generator().manual_seed(0)).reshape(3, 4, *event)

    assert model.log_prob(x).shape == (3, 4)
    model.configure_evaluation({"iw_samples": 30})
    assert model.num_importance_samples == 30
    assert model.log_prob(x[0, 0]).shape == ()
    assert model.sample().shape == event
    assert model.sample(5).shape == (5, *event)
    assert model.sample((2, 3)).shape == (2, 3, *event)
    shown = model.sample_for_display(6)
    assert shown.shape == (6, *event)
    if len(event) == 3:  # images show decoder means in [0, 1]
        assert shown.min() >= 0 and shown.max() <= 1
    if representation == "binarized":
        assert set(model.sample(50).unique().tolist()) <= {0.0, 1.0}

    loss = model.loss(x.reshape(12, *event))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.decoder.parameters())
    assert any(p.grad.abs().sum() > 0 for p in model.encoder.parameters())

    with pytest.raises(ValueError):
        model.log_prob(torch.zeros(4, 3, 7))
    with pytest.raises(ValueError):
        model.loss(torch.zeros(4, 3, 7))
    assert model.reference_log_prob(x) is None  # latent_dim > 2


def test_description_and_configuration():
    model = VAE(CONTINUOUS, latent_dim=2, hidden=[8])
    assert model.family == "vae" and model.likelihood == "bound"
    assert model.likelihood_description() == "ELBO (K=1)"
    model.configure_evaluation({})
    assert model.num_importance_samples == 1
    model.configure_evaluation({"iw_samples": 5000})
    assert model.likelihood_description() == "importance-weighted bound (IWAE), K=5000"
    with pytest.raises(ValueError):
        VAE(CONTINUOUS, activation="sigmoidal")


def test_plugin_registers_the_family():
    registered = []
    zoo_vae.register_families(registered.append)
    assert [r.load() for r in registered] == [VAE]  # a lazy registration of the class
    assert isinstance(zoo_vae.__version__, str)


@pytest.mark.parametrize("representation", ["binarized", "continuous"])
def test_iw_bound_tightens_and_stays_below_exact(representation):
    """L_1 <= L_10 <= L_100 <= L_1000 <= log p(x) (exact by quadrature), averaged over 200 points."""
    torch.manual_seed(1)
    spec = SPECS[representation]
    model = VAE(spec, latent_dim=2, hidden=[16], activation="tanh")
    x = make_data(spec, 200, torch.Generator().manual_seed(1))
    exact = model.reference_log_prob(x)
    assert exact.shape == (200,) and torch.isfinite(exact).all()
    # The quadrature has converged: a coarser grid changes nothing that matters.
    assert (exact - model.reference_log_prob(x, points_per_dim=201)).abs().max() < 1e-3

    bounds = {}
    with torch.no_grad():
        for K in (1, 10, 100, 1000):
            model.configure_evaluation({"iw_samples": K})
            bounds[K] = model.log_prob(x)
            gap, se = mean_and_se(exact - bounds[K])
            assert gap > -3 * se - 1e-3, f"K={K}: the bound exceeds the exact log-likelihood by {-gap:.4f} (se {se:.4f})"
    for k1, k2 in ((1, 10), (10, 100), (100, 1000)):
        gain, se = mean_and_se(bounds[k2] - bounds[k1])
        assert gain > -3 * se, f"the bound got looser from K={k1} to K={k2}: {gain:.4f} (se {se:.4f})"
    gain, se = mean_and_se(bounds[1000] - bounds[1])
    assert gain > 3 * se and gain > 0.1
    # K = 1 is the ELBO: its mean matches the training objective (which uses the analytic KL).
    with torch.no_grad():
        elbo_analytic = torch.stack([-model.loss(x) for _ in range(50)]).mean().item()
    elbo, se = mean_and_se(bounds[1])
    assert abs(elbo - elbo_analytic) < 4 * se + 1e-2


def test_chunked_importance_sampling_is_consistent():
    torch.manual_seed(2)
    model = VAE(CONTINUOUS, latent_dim=2, hidden=[16], iw_samples=40, eval_chunk=7)
    x = make_data(CONTINUOUS, 300, torch.Generator().manual_seed(2))
    with torch.no_grad():
        chunked = model.log_prob(x)
        model.eval_chunk = 1000
        whole = model.log_prob(x)
    diff, se = mean_and_se(chunked - whole)
    assert abs(diff) < 4 * se + 1e-4


def test_adam_steps_reduce_the_loss():
    torch.manual_seed(3)
    model = VAE(BINARY, latent_dim=8, hidden=[64, 64])
    x = make_data(BINARY, 64, torch.Generator().manual_seed(3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with torch.no_grad():
        before = torch.stack([model.loss(x) for _ in range(20)]).mean()
    for _ in range(50):
        opt.zero_grad()
        model.loss(x).backward()
        opt.step()
    with torch.no_grad():
        after = torch.stack([model.loss(x) for _ in range(20)]).mean()
    assert after < before - 5, (before.item(), after.item())


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    torch.manual_seed(4)
    model = VAE(DEQUANTIZED, optim={"lr": 3e-4}, latent_dim=4, hidden=(32, 16), activation="tanh")
    # The base class's save_hyperparameters captures the subclass's arguments, as plain types.
    assert dict(model.hparams) == {
        "data": DEQUANTIZED, "optim": {"lr": 3e-4}, "latent_dim": 4, "hidden": [32, 16],
        "activation": "tanh", "iw_samples": 1, "eval_chunk": 5000, "eval_memory_mb": 16.0,
        "train_iw_samples": 1, "beta": 1.0,
    }
    path = tmp_path / "vae.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": pytorch_lightning.__version__,
        },
        path,
    )
    loaded = VAE.load_from_checkpoint(path, weights_only=True)
    assert dict(loaded.hparams) == dict(model.hparams)
    assert loaded.optim_config["lr"] == 3e-4
    x = make_data(DEQUANTIZED, 6, torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.manual_seed(5)
        expected = model.log_prob(x)
        torch.manual_seed(5)
        actual = loaded.log_prob(x)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


# ---- training objectives: importance-weighted (Burda et al. 2015) and beta-VAE (Higgins et al. 2017) ----
def old_elbo_loss(model: VAE, x: torch.Tensor) -> torch.Tensor:
    """The loss as it was before beta and k existed: one sample, analytic KL."""
    x_flat = x.reshape(len(x), -1)
    mean, log_var = model.encode(x_flat)
    z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
    rec = model.decoder_log_prob(x_flat, z)
    kl = 0.5 * (mean**2 + log_var.exp() - log_var - 1).sum(-1)
    return (kl - rec).mean()


def test_beta_one_reproduces_the_elbo_loss_and_beta_scales_the_analytic_kl():
    torch.manual_seed(10)
    model = VAE(BINARY, latent_dim=4, hidden=[32])
    x = make_data(BINARY, 32, torch.Generator().manual_seed(10))
    torch.manual_seed(11)
    new = model.loss(x)
    torch.manual_seed(11)
    old = old_elbo_loss(model, x)
    assert torch.equal(new, old)
    # beta = 3: the same reconstruction term (same noise), plus 2 more KLs
    with torch.no_grad():
        mean, log_var = model.encode(x.reshape(32, -1))
        kl = torch.distributions.kl_divergence(torch.distributions.Normal(mean, torch.exp(0.5 * log_var)),
                                               torch.distributions.Normal(0.0, 1.0)).sum(-1).mean()
    model.beta = 3.0
    torch.manual_seed(11)
    beta3 = model.loss(x)
    torch.testing.assert_close(beta3 - new, 2 * kl, rtol=1e-5, atol=1e-4)


def test_beta_does_not_change_the_reported_bound():
    torch.manual_seed(12)
    a = VAE(BINARY, latent_dim=4, hidden=[32], iw_samples=20)
    torch.manual_seed(12)
    b = VAE(BINARY, latent_dim=4, hidden=[32], iw_samples=20, beta=4.0)
    x = make_data(BINARY, 16, torch.Generator().manual_seed(12))
    with torch.no_grad():
        torch.manual_seed(13)
        la = a.log_prob(x)
        torch.manual_seed(13)
        lb = b.log_prob(x)
    assert torch.equal(la, lb)
    assert b.likelihood_description() == "importance-weighted bound (IWAE), K=20"


def test_iw_objective_with_one_sample_is_the_elbo():
    """k = 1: log w with the same noise as an independent torch.distributions computation, and its
    mean matches the analytic-KL ELBO of the default loss within Monte Carlo error."""
    torch.manual_seed(14)
    model = VAE(BINARY, latent_dim=3, hidden=[32])
    x = make_data(BINARY, 400, torch.Generator().manual_seed(14))
    x_flat = x.reshape(400, -1)
    torch.manual_seed(15)
    l1 = model.iw_objective(x_flat, 1)
    torch.manual_seed(15)
    mean, log_var = model.encode(x_flat)
    eps = torch.randn(1, *mean.shape)
    q = torch.distributions.Normal(mean, torch.exp(0.5 * log_var))
    z = (mean + torch.exp(0.5 * log_var) * eps)[0]
    logits = model.decoder(z)
    expected = (torch.distributions.Bernoulli(logits=logits).log_prob(x_flat).sum(-1)
                + torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1) - q.log_prob(z).sum(-1))
    torch.testing.assert_close(l1, expected, rtol=1e-5, atol=1e-4)
    # in expectation: the analytic-KL ELBO (the default training loss)
    with torch.no_grad():
        mc = torch.stack([model.iw_objective(x_flat, 1) for _ in range(20)]).mean(0)  # (400,)
        analytic = torch.stack([-model.loss(x) for _ in range(20)]).mean()
    m, se = mean_and_se(mc)
    assert abs(m - analytic.item()) < 4 * se + 0.05
    model.train_iw_samples = 1
    torch.manual_seed(16)
    assert torch.equal(model.loss(x), (torch.manual_seed(16), old_elbo_loss(model, x))[1])


def test_iw_training_objective_is_a_bound_that_tightens_with_k():
    """E[L_k] <= log p(x) (exact by quadrature) for k = 1, 5, 50, increasing in k; the loss with
    train_iw_samples = k is -mean L_k and has gradients."""
    torch.manual_seed(17)
    model = VAE(CONTINUOUS, latent_dim=2, hidden=[16], train_iw_samples=5)
    x = make_data(CONTINUOUS, 300, torch.Generator().manual_seed(17))
    exact = model.reference_log_prob(x)
    objectives = {}
    with torch.no_grad():
        for k in (1, 5, 50):
            objectives[k] = torch.stack([model.iw_objective(x, k) for _ in range(4)]).mean(0)  # (300,)
            gap, se = mean_and_se(exact - objectives[k])
            assert gap > -3 * se - 1e-3, f"k={k}: L_k exceeds log p(x) by {-gap:.4f}"
    for k1, k2 in ((1, 5), (5, 50)):
        gain, se = mean_and_se(objectives[k2] - objectives[k1])
        assert gain > 3 * se, f"L_k did not tighten from k={k1} to k={k2}: {gain:.4f} (se {se:.4f})"
    loss = model.loss(x)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    torch.manual_seed(18)
    again = model.loss(x)
    torch.manual_seed(18)
    torch.testing.assert_close(again, -model.iw_objective(x, 5).mean())


def test_objective_options_are_checked():
    from zoo_core.errors import ConfigError

    with pytest.raises(ConfigError, match="train_iw_samples"):
        VAE(BINARY, train_iw_samples=0)
    with pytest.raises(ConfigError, match="beta"):
        VAE(BINARY, beta=-1)
    with pytest.raises(ConfigError, match="beta"):
        VAE(BINARY, beta=2.0, train_iw_samples=5)
    with pytest.raises(ConfigError, match="eval_memory_mb"):
        VAE(BINARY, eval_memory_mb=0)


# ---- fast importance-weighted evaluation ----------------------------------------------------------
@pytest.mark.parametrize("representation", ["binarized", "dequantized"])
def test_fast_log_weights_equal_the_plain_ones(representation):
    torch.manual_seed(19)
    spec = SPECS[representation]
    model = VAE(spec, latent_dim=4, hidden=[32, 16])
    x_flat = make_data(spec, 20, torch.Generator().manual_seed(19)).reshape(20, -1)
    with torch.no_grad():
        mean, log_var = model.encode(x_flat)
        eps = torch.randn(7, 20, 4)
        plain = model.log_importance_weights(x_flat, mean, log_var, eps)
        fast = model.log_importance_weights(x_flat, mean, log_var, eps, fast=True)
    assert plain.shape == fast.shape == (7, 20)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-3)


def test_streamed_chunks_equal_one_logsumexp(monkeypatch):
    """The chunked, log-add-exp accumulated bound equals logsumexp over all K weights at once for
    the same noise: chunks of 1, 3 (uneven) and all 10 samples, and rows split by a tiny budget."""
    torch.manual_seed(20)
    model = VAE(BINARY, latent_dim=4, hidden=[32], iw_samples=10)
    x = make_data(BINARY, 6, torch.Generator().manual_seed(20))
    x_flat = x.reshape(6, -1)
    eps = torch.randn(10, 6, 4)
    with torch.no_grad():
        mean, log_var = model.encode(x_flat)
        whole = torch.logsumexp(model.log_importance_weights(x_flat, mean, log_var, eps), 0) - math.log(10)

    def fixed_noise(rows):
        drawn = []

        def noise(k, m):  # the next k samples of the fixed noise, for the rows of this block
            start = sum(drawn)
            drawn.append(k)
            return eps[start:start + k, rows]
        return noise

    for chunk in (1, 3, 10):
        model.eval_chunk = chunk
        assert model.eval_chunk_size(6) == chunk
        monkeypatch.setattr(model, "importance_noise", fixed_noise(slice(None)))
        with torch.no_grad():
            streamed = model.log_prob(x)
        torch.testing.assert_close(streamed, whole, rtol=1e-5, atol=1e-3)
    model.eval_chunk = 5000
    model.eval_memory_mb = 1e-6  # one sample of one example at a time
    assert model.eval_chunk_size(6) == 1 and model.eval_rows(6) == 1
    monkeypatch.undo()
    with torch.no_grad():
        lp = model.log_prob(x)
    assert lp.shape == (6,) and torch.isfinite(lp).all()


def test_log_prob_keeps_gradients_when_asked_and_returns_plain_tensors_otherwise():
    torch.manual_seed(22)
    model = VAE(BINARY, latent_dim=4, hidden=[32], iw_samples=8)
    x = make_data(BINARY, 5, torch.Generator().manual_seed(22))
    lp = model.log_prob(x)
    assert lp.requires_grad
    lp.sum().backward()
    assert model.decoder[0].weight.grad is not None
    with torch.no_grad():
        out = model.log_prob(x)
    assert not out.is_inference() and not out.requires_grad
    (out * torch.ones(5, requires_grad=True)).sum().backward()  # usable in later autograd graphs


# ---- conditional VAE (Sohn et al. 2015) ------------------------------------------------------------
LABELLED = DataSpec("tiny-labelled", (1, 8, 8), "binarized", num_classes=3, conditional=True).to_dict()


def test_cvae_log_prob_per_class_and_samples_differ_by_class():
    from zoo_core.errors import ContextError

    torch.manual_seed(23)
    model = VAE(LABELLED, latent_dim=2, hidden=[32], iw_samples=20)
    assert model.is_conditional and model.label_dim == 3
    assert model.encoder[0].in_features == 64 + 3 and model.decoder[0].in_features == 2 + 3
    x = make_data(LABELLED, 12, torch.Generator().manual_seed(23))
    with torch.no_grad():
        for c in range(3):
            assert model.log_prob(x, torch.full((12,), c)).shape == (12,)
            assert model.log_prob(x.reshape(3, 4, 1, 8, 8), torch.full((3, 4), c)).shape == (3, 4)
        y = torch.arange(12) % 3
        loss = model.loss(x, y)
        assert loss.dim() == 0 and torch.isfinite(loss)
        with pytest.raises(ContextError):
            model.log_prob(x)
        with pytest.raises(ContextError):
            model.log_prob(x, torch.full((12,), 3))
        # the same z decoded under two labels: different pixel probabilities and different samples
        means = []
        for c in (0, 1):
            torch.manual_seed(24)
            means.append(model.decode(torch.randn(200, 2), model.one_hot(torch.full((200,), c)))[0])
        assert (means[0] - means[1]).abs().mean() > 1e-3
        torch.manual_seed(25)
        s0 = model.sample((200,), context=torch.tensor(0))
        torch.manual_seed(25)
        s1 = model.sample((200,), context=torch.tensor(1))
        assert s0.shape == (200, 1, 8, 8) and not torch.equal(s0, s1)
        # the bound on log p(x|y) stays below the exact value by quadrature (per label)
        exact = model.reference_log_prob(x, context=y)
        model.configure_evaluation({"iw_samples": 200})
        bound = torch.stack([model.log_prob(x, y) for _ in range(10)]).mean(0)
    gap, se = mean_and_se(exact - bound)
    assert gap > -3 * se - 1e-3
    assert model.likelihood_description().endswith("on log p(x|y)")


def test_cvae_training_separates_the_classes():
    """Two classes of fixed, very different images: after training, the model's bound on log p(x|y)
    prefers the right label, and class-conditional decoder means look like their class."""
    torch.manual_seed(26)
    spec = DataSpec("two-classes", (1, 4, 4), "binarized", num_classes=2, conditional=True).to_dict()
    model = VAE(spec, latent_dim=2, hidden=[32])
    top = torch.zeros(1, 4, 4)
    top[:, :2] = 1
    x = torch.stack([top, 1 - top]).repeat(32, 1, 1, 1)  # (64, 1, 4, 4)
    y = torch.arange(64) % 2
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        model.loss(x, y).backward()
        opt.step()
    model.configure_evaluation({"iw_samples": 50})
    with torch.no_grad():
        right = model.log_prob(x, y)
        wrong = model.log_prob(x, 1 - y)
        torch.manual_seed(27)
        shown = model.sample_for_display(4)  # labels 0, 1, 0, 1
    assert (right > wrong + 5).all()
    assert (shown[0::2] - top).abs().mean() < 0.2 and (shown[1::2] - (1 - top)).abs().mean() < 0.2
