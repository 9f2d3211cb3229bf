"""Label-conditional gmm, autoencoder and gan on a toy labelled set of three well-separated classes."""
import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from zoo_autoencoder import Autoencoder
from zoo_core.errors import ContextError
from zoo_gan import GAN
from zoo_gmm import GMM

CENTRES = torch.tensor([[-4.0, 0.0], [0.0, 4.0], [4.0, 0.0]])  # (C, 2) one class each
UNCOND = {"name": "toy", "event_shape": [2], "representation": "continuous"}
COND = {**UNCOND, "num_classes": 3, "conditional": True}


def labelled(n=1500, seed=0):
    """x (n, 2), y (n,): class c is a ring-ish blob around CENTRES[c]; classes 0, 1, 2 in ratio 1:2:3."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.multinomial(torch.tensor([1.0, 2.0, 3.0]), n, replacement=True, generator=gen)
    x = CENTRES[y] + 0.6 * torch.randn(n, 2, generator=gen)
    return x, y


def fit(model, x, y, epochs, batch_size):
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    torch.manual_seed(0)
    trainer.fit(model, train_dataloaders=loader)
    return model.eval()


def assert_class_samples_separate(model, n=2000, tolerance=None):
    """Samples for class k lie nearest class k's centre (the centres are 5.7 to 8 units apart, the
    class spread 0.6); with ``tolerance``, their mean is also within it of the centre."""
    torch.manual_seed(1)
    with torch.no_grad():
        samples = [model.sample((n,), context=k) for k in range(3)]  # C x (n, 2)
    for k, s in enumerate(samples):
        assert (torch.cdist(s, CENTRES).argmin(1) == k).float().mean() > 0.95, (k, s.mean(0))
    if tolerance is not None:
        means = torch.stack([s.mean(0) for s in samples])  # (C, 2)
        assert (means - CENTRES).norm(dim=1).max() < tolerance, means


# ---- gmm ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_gmm_log_prob_per_class_is_the_class_mixture(covariance):
    x, y = labelled()
    model = GMM(COND, n_components=2, covariance=covariance, fit="em").double()
    model.fit_em(x.double(), context=y)
    x = x.double()
    prior = torch.bincount(y, minlength=3).double() / len(y)
    torch.testing.assert_close(model.class_prior.log_probs().double(), prior.log())
    per_class = []
    for c in range(3):
        lp = model.log_prob(x, torch.full((len(x),), c))
        assert lp.shape == (len(x),)
        block = slice(2 * c, 2 * c + 2)
        mix = torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(logits=model.logits[block]),
            torch.distributions.MultivariateNormal(model.means[block], scale_tril=model.scale_tril()[block]))
        torch.testing.assert_close(lp, mix.log_prob(x))
        per_class.append(lp)
    per_class = torch.stack(per_class, 1)  # (N, C)
    torch.testing.assert_close(model.log_prob(x), torch.logsumexp(per_class + prior.log(), 1))  # the marginal
    torch.testing.assert_close(model.log_prob(x, y), per_class.gather(1, y[:, None]).squeeze(1))
    assert (per_class.argmax(1) == y).float().mean() > 0.99  # the generative classifier


def test_gmm_samples_per_class_and_marginal():
    x, y = labelled()
    model = GMM(COND, n_components=2, fit="em")
    model.fit_em(x, context=y)
    assert_class_samples_separate(model, tolerance=0.1)
    torch.manual_seed(2)
    marginal = model.sample((30000,))
    expected = (torch.bincount(y, minlength=3).float() / len(y)) @ CENTRES  # sum_y p(y) mu_y
    torch.testing.assert_close(marginal.mean(0), expected, atol=0.06, rtol=0)


@pytest.mark.parametrize("fit_kind", ["em", "gradient"])
def test_gmm_trains_conditionally_in_lightning(fit_kind):
    x, y = labelled()
    torch.manual_seed(0)
    model = GMM(COND, {"lr": 5e-2}, n_components=2, fit=fit_kind)
    fit(model, x, y, epochs=30 if fit_kind == "em" else 40, batch_size=300)
    assert bool(model._labelled_init_done)
    torch.testing.assert_close(model.class_prior.counts, torch.bincount(y, minlength=3).float())
    assert_class_samples_separate(model, tolerance=0.1)


def test_unconditional_gmm_refuses_a_context():
    model = GMM(UNCOND, n_components=2)
    with pytest.raises(ContextError, match="gmm.*without labels"):
        model.log_prob(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ContextError):
        model.sample((3,), context=1)
    assert model.log_prob(torch.zeros(4, 2)).shape == (4,)  # unconditional use still works
    cond = GMM(COND, n_components=2)
    with pytest.raises(ContextError, match=r"class labels must be in \[0, 3\)"):
        cond.log_prob(torch.zeros(2, 2), torch.tensor([0, 3]))


# ---- autoencoder ----------------------------------------------------------------------------------
def test_autoencoder_latent_mixture_per_class():
    x, y = labelled()
    torch.manual_seed(0)
    model = Autoencoder(COND, {"lr": 1e-2}, latent_dim=2, hidden=[32], latent_components=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        model.loss(x, y).backward()
        opt.step()
    model.eval()
    model.fit_latent_density(x, y)
    codes = model.encode(x).detach()
    assert model.latent_density.log_prob(codes, y).shape == (len(x),)
    assert_class_samples_separate(model, tolerance=0.6)
    assert model.sample((5,)).shape == (5, 2)  # the marginal
    with pytest.raises(Exception, match="labels"):
        model.fit_latent_density(x)


def test_unconditional_autoencoder_refuses_a_context():
    model = Autoencoder(UNCOND, latent_dim=2, hidden=[8], latent_components=2)
    model.fit_latent_density(torch.randn(200, 2))
    assert model.sample((3,)).shape == (3, 2)
    with pytest.raises(ContextError, match="autoencoder"):
        model.sample((3,), context=0)


# ---- gan ------------------------------------------------------------------------------------------
def test_projection_discriminator_is_psi_plus_embedding_inner_product():
    model = GAN(COND, latent_dim=2, g_hidden=[16], d_hidden=[16, 8])
    x, y = labelled(50)
    d = model.discriminator
    phi = d.net[:-1](x)  # (N, 8)
    expected = d.net[-1](phi).squeeze(-1) + (d.projection.embed.weight[y] * phi).sum(-1)
    torch.testing.assert_close(model.discriminate(x, y), expected)
    assert not torch.allclose(model.discriminate(x, y), model.discriminate(x, (y + 1) % 3))
    z = torch.randn(50, 2)
    assert not torch.allclose(model.generate(z, y), model.generate(z, (y + 1) % 3))
    with pytest.raises(ContextError, match="labels"):
        model.discriminate(x)


def test_conditional_gan_samples_follow_the_class():
    x, y = labelled(3000)
    torch.manual_seed(0)
    model = GAN(COND, {"lr": 2e-3, "betas": [0.5, 0.999]}, latent_dim=2, g_hidden=[64, 64], d_hidden=[64, 64])
    fit(model, x, y, epochs=25, batch_size=200)
    assert_class_samples_separate(model)
    torch.testing.assert_close(model.class_prior.counts, torch.bincount(y, minlength=3).float())
    assert model.sample((7,)).shape == (7, 2)  # y ~ p(y)
    assert math.isfinite(float(model.loss(x[:100], y[:100])))
    with pytest.raises(ContextError, match="labels"):
        model.loss(x[:100])


def test_unconditional_gan_refuses_a_context():
    model = GAN(UNCOND, latent_dim=2, g_hidden=[8], d_hidden=[8])
    assert model.sample((3,)).shape == (3, 2)
    with pytest.raises(ContextError, match="gan"):
        model.sample((3,), context=torch.zeros(3, dtype=torch.long))
