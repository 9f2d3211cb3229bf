"""GMM fitted by closed-form EM: against scikit-learn, monotone likelihood, and the same iteration
whether the statistics come from one batch or many (the Lightning runner's epochs)."""
import copy

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from sklearn.mixture import GaussianMixture

from zoo_core.data.toy import TOY_DATASETS
from zoo_gmm import GMM


def _spec(d=2):
    return {"name": "toy", "event_shape": [d], "representation": "continuous"}


def _blobs(n=3000, d=3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (4, d))
    x = centres[rng.integers(0, 4, n)] + rng.normal(0, 1, (n, d)) * rng.uniform(0.3, 1.5, (1, d))
    return torch.tensor(x, dtype=torch.float64)


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_em_matches_sklearn(covariance):
    """Same k-means start, tol, max_iter and reg_covar: the same fitted mixture and test NLL."""
    x, test = _blobs(3000), _blobs(1000, seed=1)
    model = GMM(_spec(3), n_components=5, covariance=covariance, reg_covar=1e-4, fit="em").double()
    history = model.fit_em(x, max_iter=100, tol=1e-3)
    sk = GaussianMixture(5, covariance_type=covariance, reg_covar=1e-4, tol=1e-3, max_iter=100,
                         random_state=0).fit(x.numpy())
    assert len(history) == sk.n_iter_
    ours = -model.log_prob(test).detach().numpy()
    theirs = -sk.score_samples(test.numpy())
    assert ours.mean() == pytest.approx(theirs.mean(), abs=1e-6)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_em_matches_sklearn_on_moons_float32():
    dm = TOY_DATASETS["moons"](seed=0)
    train, test = dm.eval_data("train"), dm.eval_data("test")
    model = GMM(dm.spec.to_dict(), n_components=16, covariance="full", fit="em")
    model.fit_em(train, max_iter=100, tol=1e-3)
    sk = GaussianMixture(16, covariance_type="full", tol=1e-3, max_iter=100, random_state=0).fit(train.numpy())
    ours = float(-model.log_prob(test).mean())
    theirs = float(-sk.score(test.numpy()))
    stderr = float(np.std(sk.score_samples(test.numpy())) / np.sqrt(len(test)))
    assert abs(ours - theirs) < 0.05 * stderr, (ours, theirs, stderr)


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_em_log_likelihood_never_decreases(covariance):
    """Dempster et al. 1977, Theorem 1: each EM iteration does not decrease log p(data) (exact EM:
    reg_covar = 0, float64; only rounding may move it, by far less than 1e-10 nats)."""
    x = _blobs(2000, d=2, seed=3)
    model = GMM(_spec(2), n_components=6, covariance=covariance, reg_covar=0.0, fit="em").double()
    history = model.fit_em(x, max_iter=60, tol=0.0)
    assert len(history) == 60
    steps = np.diff(history)
    assert steps.min() > -1e-10, steps.min()
    assert history[-1] > history[0] + 1e-3  # and it did move


def test_runner_epochs_are_the_full_batch_iterations():
    """Statistics summed over an epoch's batches give the full-batch EM iteration; one training
    batch advances global_step by one; convergence stops training."""
    dm = TOY_DATASETS["moons"](seed=0, n_train=3000, n_val=500, n_test=500, batch_size=700)
    model = GMM(dm.spec.to_dict(), n_components=4, covariance="full", fit="em", tol=0.0)
    dm.setup("fit")
    model.init_from_data(dm.init_batch())
    model._zoo_data_initialised.fill_(True)
    reference = copy.deepcopy(model)
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                         num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 3 * 5  # ceil(3000 / 700) batches per epoch
    reference.fit_em(dm.eval_data("train"), init=False, max_iter=3, tol=0.0)
    for (name, ours), theirs in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5, msg=name)

    converging = GMM(dm.spec.to_dict(), n_components=4, covariance="full", fit="em", tol=1e-3)
    trainer = pl.Trainer(max_epochs=100, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(converging, datamodule=dm)
    assert 2 <= trainer.current_epoch < 100


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="fit must be one of"):
        GMM(_spec(), fit="newton")
    with pytest.raises(ValueError, match="reg_covar and tol"):
        GMM(_spec(), reg_covar=-1.0)
