"""GMM: log_prob against torch.distributions, and maximum-likelihood fit against scikit-learn."""
import math

import pytest
import torch
from sklearn.mixture import GaussianMixture

from zoo_core.data.toy import TOY_DATASETS
from zoo_gmm import GMM


def _spec(d=2):
    return {"name": "toy", "event_shape": [d], "representation": "continuous"}


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_log_prob_equals_mixture_same_family(covariance):
    torch.manual_seed(0)
    model = GMM(_spec(3), n_components=5, covariance=covariance)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(100, 3)
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=model.logits),
        torch.distributions.MultivariateNormal(model.means, scale_tril=model.scale_tril()))
    torch.testing.assert_close(model.log_prob(x), mix.log_prob(x), rtol=1e-5, atol=1e-5)


def test_sample_moments_match_mixture():
    torch.manual_seed(1)
    model = GMM(_spec(2), n_components=3)
    s = model.sample((200000,))
    w = torch.softmax(model.logits, 0)
    mean = (w[:, None] * model.means).sum(0)
    torch.testing.assert_close(s.mean(0), mean.detach(), atol=0.02, rtol=0)


@pytest.mark.parametrize("dataset", ["moons", "8gaussians"])
def test_fit_within_two_percent_of_sklearn(dataset, zoo):
    """Gradient ML fit through the real runner vs scikit-learn's EM, same number of components."""
    import pytorch_lightning as pl

    from zoo_core.runner import build_datamodule, build_model

    config = zoo.resolve(f"gmm-{dataset}")
    dm = build_datamodule(zoo, config)
    model = build_model(zoo, config, dm)
    torch.manual_seed(0)
    trainer = pl.Trainer(max_epochs=10, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False)
    trainer.fit(model, datamodule=dm)
    test = dm.eval_data("test")
    ours = float(-model.eval().log_prob(test).mean())
    sk = GaussianMixture(config["model"]["n_components"], covariance_type="full", random_state=0)
    sk.fit(dm.eval_data("train").numpy())
    theirs = float(-sk.score(test.numpy()))
    assert abs(ours - theirs) <= 0.02 * abs(theirs), f"zoo {ours:.4f} vs sklearn {theirs:.4f} nats"


def test_nll_close_to_true_entropy_on_8gaussians():
    """The model class contains the truth, so the test NLL approaches H(p)."""
    dm = TOY_DATASETS["8gaussians"](seed=0)
    entropy = dm.extras()["true_entropy_nats"]
    test = dm.eval_data("test")
    true_nll = float(-dm.true_log_prob(test).mean())
    assert abs(true_nll - entropy) < 4 * float(dm.true_log_prob(test).std()) / math.sqrt(len(test))
