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
    assert registered == [VAE]
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
        "activation": "tanh", "iw_samples": 1, "eval_chunk": 100,
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
