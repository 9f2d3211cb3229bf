"""Autoencoder: latent mixture fitted by EM, no likelihood, DDP."""
import json

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

from conftest import run_zoo
from zoo_autoencoder import Autoencoder
from zoo_core.errors import NoLikelihoodError
from zoo_gmm import GMM


def test_gmm_set_mixture_reproduces_sklearn():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-2, 0.5, (300, 3)), rng.normal(1, 1.0, (300, 3))])
    fit = GaussianMixture(2, covariance_type="full", random_state=0).fit(x)
    gmm = GMM({"name": "t", "event_shape": [3], "representation": "continuous"}, n_components=2, reg_covar=1e-6)
    gmm.set_mixture(torch.tensor(fit.weights_), torch.tensor(fit.means_), torch.tensor(fit.covariances_))
    ours = gmm.log_prob(torch.tensor(x, dtype=torch.float32)).detach().double().numpy()
    np.testing.assert_allclose(ours, fit.score_samples(x), rtol=1e-4, atol=1e-4)


def test_latent_density_is_fitted_to_the_codes():
    torch.manual_seed(0)
    model = Autoencoder({"name": "t", "event_shape": [2], "representation": "continuous"}, latent_dim=2,
                        hidden=[16], latent_components=3)
    x = torch.randn(2000, 2) * torch.tensor([2.0, 0.5])
    model.fit_latent_density(x)
    codes = model.encode(x).detach()
    fit = GaussianMixture(3, covariance_type="full", reg_covar=1e-6, random_state=0).fit(codes.double().numpy())
    mean_ll = float(model.latent_density.log_prob(codes).mean())
    assert mean_ll == pytest.approx(fit.score(codes.double().numpy()), abs=1e-3)


def test_log_prob_names_the_alternatives():
    model = Autoencoder({"name": "t", "event_shape": [2], "representation": "continuous"}, hidden=[8])
    with pytest.raises(NoLikelihoodError, match="autoencoder.*reconstruction error"):
        model.log_prob(torch.zeros(3, 2))


def test_ddp_two_processes_identical_weights(tmp_path):
    result = run_zoo("train", "autoencoder-moons", "--accelerator", "cpu", "--devices", "2", "--max-epochs", "1",
                     "--set", "data.n_train=2000", "--runs-dir", tmp_path, "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "autoencoder-moons" / "version_0" / "metrics.json").read_text())
    assert metrics["ddp"]["world_size"] == 2 and metrics["ddp"]["identical"]
    assert (tmp_path / "autoencoder-moons" / "version_0" / "samples.png").is_file()
