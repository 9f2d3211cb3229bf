"""Numerical checks of the flow family (RealNVP): invertibility, the log-determinant against
autograd's Jacobian, a closed form at initialisation, the density integrating to 1 in pixel
space, train/eval equality, and a 2-process DDP run. Seeded and small (seconds on a CPU)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

try:
    import zoo_flow
except ImportError:  # an uninstalled checkout: the package lives under plugins/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
    import zoo_flow

from conftest import run_zoo, zoo_env
from zoo_core.data.spec import DataSpec
from zoo_flow import RealNVP

CONTINUOUS = DataSpec("toy-2d", (2,), "continuous").to_dict()
PIXELS2 = DataSpec("two-pixels", (1, 1, 2), "dequantized", num_levels=4).to_dict()
IMAGES = DataSpec("tiny-images", (1, 4, 4), "dequantized", num_levels=17).to_dict()
BINARY = DataSpec("tiny-binary", (1, 4, 4), "binarized").to_dict()


def make_data(spec: dict, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = (n, *spec["event_shape"])
    if spec["representation"] == "continuous":
        return torch.randn(shape, generator=gen) * torch.tensor([1.5, 0.5]) + torch.tensor([0.3, -1.0])
    levels = spec["num_levels"]
    return (torch.randint(0, levels, shape, generator=gen) + torch.rand(shape, generator=gen)) / levels


def scrambled_flow(spec: dict, seed: int, scale: float = 0.3, **kwargs) -> RealNVP:
    """A flow initialised from data, with every parameter perturbed so that no layer is the identity."""
    torch.manual_seed(seed)
    model = RealNVP(spec, **{"n_couplings": 4, "hidden": [16, 16], **kwargs})
    model.init_from_data(make_data(spec, 256, seed))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("spec", [CONTINUOUS, IMAGES], ids=["2d", "images"])
@pytest.mark.parametrize("mask", ["checkerboard", "half", "random"])
def test_forward_inverse_round_trip(spec, mask):
    model = scrambled_flow(spec, seed=1, mask=mask, n_couplings=6, scale=0.3 if spec is CONTINUOUS else 0.1)
    x = make_data(spec, 60, seed=2).reshape(3, 20, *spec["event_shape"])
    with torch.no_grad():
        z, log_det = model(x)
        assert z.shape == x.shape and log_det.shape == (3, 20)
        torch.testing.assert_close(model.inverse(z), x, rtol=0, atol=1e-4)
        z2 = torch.randn(50, *spec["event_shape"])
        torch.testing.assert_close(model(model.inverse(z2))[0], z2, rtol=0, atol=1e-4)


@pytest.mark.parametrize("spec", [CONTINUOUS, PIXELS2, IMAGES], ids=["2d", "2-pixels", "4x4-images"])
def test_log_det_matches_autograd_jacobian(spec):
    """log|det dz/dx| from the layers equals slogdet of the full Jacobian (logit transform included)."""
    model = scrambled_flow(spec, seed=3).double()
    d = math.prod(spec["event_shape"])
    for x in make_data(spec, 5, seed=4).double():
        jac = torch.autograd.functional.jacobian(lambda v: model(v)[0].reshape(-1), x).reshape(d, d)
        sign, logabsdet = torch.linalg.slogdet(jac)
        assert sign != 0
        _, log_det = model(x)
        assert log_det.shape == ()
        assert abs(float(log_det) - float(logabsdet)) < 1e-8 * max(1.0, abs(float(logabsdet)))


def test_initial_flow_is_the_gaussian_fit_of_the_init_batch():
    """Couplings start as the identity, so after ActNorm's data-dependent initialisation the model is
    N(mean, diag(std^2)) of the initialisation batch: a closed form."""
    torch.manual_seed(5)
    model = RealNVP(CONTINUOUS, n_couplings=4, hidden=[8])
    data = make_data(CONTINUOUS, 500, seed=5)
    model.init_from_data(data)
    x = make_data(CONTINUOUS, 100, seed=6)
    expected = torch.distributions.Normal(data.mean(0), data.std(0) + 1e-6).log_prob(x).sum(-1)
    with torch.no_grad():
        torch.testing.assert_close(model.log_prob(x), expected, rtol=1e-5, atol=1e-5)


def test_initial_image_flow_is_logit_normal():
    """For dequantized pixels the same closed form holds in logit space, plus the transform's log-det."""
    torch.manual_seed(6)
    alpha = 0.05
    model = RealNVP(IMAGES, n_couplings=2, hidden=[8], logit_alpha=alpha)
    data = make_data(IMAGES, 400, seed=7)
    model.init_from_data(data)
    to_u = lambda x: torch.logit(alpha + (1 - 2 * alpha) * x.reshape(len(x), -1))  # noqa: E731
    u_data = to_u(data)
    x = make_data(IMAGES, 50, seed=8)
    p = alpha + (1 - 2 * alpha) * x.reshape(50, -1)
    expected = (torch.distributions.Normal(u_data.mean(0), u_data.std(0) + 1e-6).log_prob(to_u(x))
                + math.log(1 - 2 * alpha) - torch.log(p) - torch.log1p(-p)).sum(-1)
    with torch.no_grad():
        torch.testing.assert_close(model.log_prob(x), expected, rtol=1e-5, atol=1e-4)


def _grid_mass(model: RealNVP, lo: float, hi: float, points: int = 600) -> float:
    h = (hi - lo) / points
    axis = lo + h * (torch.arange(points, dtype=torch.float64) + 0.5)
    grid = torch.cartesian_prod(axis, axis).reshape(-1, 1, 1, 2)
    with torch.no_grad():
        dens = torch.cat([model.log_prob(chunk).exp() for chunk in grid.split(40000)])
    return float(dens.sum()) * h * h


def test_pixel_density_integrates_to_one_on_its_support():
    """log_prob is a density in pixel space: it integrates to 1 over its support (the box where
    0 < alpha + (1 - 2 alpha) x < 1), to a little less over [0, 1]^D, and is -inf outside."""
    alpha = 0.05
    model = scrambled_flow(PIXELS2, seed=9, scale=0.2, logit_alpha=alpha).double()
    lo, hi = -alpha / (1 - 2 * alpha), (1 - alpha) / (1 - 2 * alpha)
    assert _grid_mass(model, lo, hi) == pytest.approx(1.0, abs=0.01)
    assert 0.5 < _grid_mass(model, 0.0, 1.0) < 1.0  # the rest lies just outside [0, 1]^2
    outside = torch.tensor([[[[hi + 0.01, 0.5]]], [[[0.5, lo - 0.01]]]], dtype=torch.float64)
    assert torch.isneginf(model.log_prob(outside)).all()


def test_train_and_eval_mode_agree_and_examples_are_independent():
    model = scrambled_flow(IMAGES, seed=10, scale=0.1)
    x = make_data(IMAGES, 32, seed=11)
    with torch.no_grad():
        evaluated = model.eval().log_prob(x)
        trained = model.train().log_prob(x)
        one_by_one = torch.stack([model.log_prob(xi) for xi in x])
    torch.testing.assert_close(trained, evaluated, rtol=0, atol=0)
    torch.testing.assert_close(one_by_one, evaluated, rtol=1e-5, atol=1e-4)


def test_samples_come_from_the_inverse_flow():
    model = scrambled_flow(IMAGES, seed=12, scale=0.1)
    torch.manual_seed(13)
    x = model.sample((4, 5))
    torch.manual_seed(13)
    z = torch.randn(20, *IMAGES["event_shape"])
    assert x.shape == (4, 5, *IMAGES["event_shape"])
    torch.testing.assert_close(x.reshape(20, *IMAGES["event_shape"]), model.inverse(z), rtol=0, atol=0)
    assert torch.isfinite(model.log_prob(x)).all()  # samples lie inside the support
    far = model.inverse(1000 * torch.randn(2000, *IMAGES["event_shape"]))  # sigmoid saturates in float32
    assert torch.isfinite(model.log_prob(far)).all()
    shown = model.sample_for_display(7)
    assert shown.shape == (7, *IMAGES["event_shape"]) and shown.min() >= 0 and shown.max() <= 1


def test_training_beats_the_gaussian_fit_on_a_curved_density():
    """A few hundred Adam steps on a banana-shaped density move the flow clearly below the NLL of the
    Gaussian it starts as (from about 2.55 nats to near the true differential entropy, 1.45 nats)."""
    torch.manual_seed(14)
    gen = torch.Generator().manual_seed(14)
    def banana(n):  # x1 ~ N(0, 1), x2 | x1 ~ N(x1^2 / 2 - 1, 0.25^2)
        a, b = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
        return torch.stack([a, a ** 2 / 2 - 1 + 0.25 * b], -1)
    train, test = banana(4000), banana(4000)
    model = RealNVP(CONTINUOUS, n_couplings=4, hidden=[32, 32])
    model.init_from_data(train[:2048])
    with torch.no_grad():
        start = -model.log_prob(test).mean().item()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(300):
        idx = torch.randint(0, len(train), (256,), generator=gen)
        opt.zero_grad()
        model.loss(train[idx]).backward()
        opt.step()
    with torch.no_grad():
        end = -model.log_prob(test).mean().item()
    true_entropy = 0.5 * math.log(2 * math.pi * math.e) * 2 + math.log(0.25)  # = 1.451
    assert start > true_entropy + 0.5, start
    assert end < true_entropy + 0.15, (start, end)


def test_settings_are_checked_and_plain():
    with pytest.raises(ValueError, match="dequantized"):
        RealNVP(BINARY)
    with pytest.raises(ValueError, match="mask"):
        RealNVP(CONTINUOUS, mask="stripes")
    with pytest.raises(ValueError, match="even"):
        RealNVP(CONTINUOUS, n_couplings=3)
    with pytest.raises(ValueError, match="logit_alpha"):
        RealNVP(IMAGES, logit_alpha=0.5)
    model = RealNVP(IMAGES, hidden=(8, 4), n_couplings=2.0)
    assert dict(model.hparams)["hidden"] == [8, 4] and type(dict(model.hparams)["n_couplings"]) is int
    assert model.family == "flow" and model.likelihood == "exact"
    with pytest.raises(ValueError, match="1, 4, 4"):
        model.log_prob(torch.zeros(3, 1, 4, 5))
    registered = []
    zoo_flow.register_families(registered.append)
    assert [r.load() for r in registered] == [RealNVP]  # a lazy registration of the class and isinstance(zoo_flow.__version__, str)


def test_binarized_entry_is_refused_with_a_hint(tmp_path):
    registry = tmp_path / "entries.yaml"
    registry.write_text("flow-binary:\n  family: flow\n  data: {name: digits, representation: binarized}\n")
    result = run_zoo("train", "flow-binary", "--max-steps", "1", "--runs-dir", tmp_path, "--no-progress",
                     env=zoo_env(ZOO_REGISTRY=registry))
    assert result.returncode != 0 and "dequantized" in result.stderr, result.stderr[-2000:]


def test_two_process_ddp_keeps_replicas_identical(tmp_path):
    result = run_zoo("train", "flow-moons", "--accelerator", "cpu", "--devices", "2", "--max-steps", "10",
                     "--set", "data.n_train=2000", "--runs-dir", tmp_path, "--no-progress",
                     env=zoo_env())
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "flow-moons" / "version_0" / "metrics.json").read_text())
    ddp = metrics["ddp"]
    assert ddp["world_size"] == 2 and ddp["identical"]
    assert metrics["likelihood"] == "exact" and math.isfinite(metrics["test"]["nll_nats"])
