"""Class-conditional flows: labels (N,) enter every conditioner through a learned embedding
(coupling, autoregressive and multiscale architectures, affine and spline transforms). Checks:
each class's density integrates to 1, the inverse and log-det hold given the labels, the labels
are required and checked, and training learns a label-dependent density."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

try:
    import zoo_flow
except ImportError:  # an uninstalled checkout: the package lives under plugins/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
    import zoo_flow  # noqa: F401

from zoo_core.data.spec import DataSpec
from zoo_core.errors import ContextError
from zoo_flow.model import Flow

LABELLED = DataSpec("toy-2d-labelled", (2,), "continuous", num_classes=3, conditional=True).to_dict()
UNLABELLED = DataSpec("toy-2d", (2,), "continuous", num_classes=3).to_dict()
IMAGES = DataSpec("tiny-images", (1, 4, 4), "dequantized", num_levels=17, num_classes=3,
                  conditional=True).to_dict()
VARIANTS = [("affine", "coupling"), ("spline", "coupling"), ("spline", "autoregressive")]


def scrambled(spec, transform, architecture, seed, **kwargs):
    torch.manual_seed(seed)
    model = Flow(spec, transform=transform, architecture=architecture,
                 **{"n_couplings": 2, "hidden": [16], "n_bins": 4, **kwargs})
    gen = torch.Generator().manual_seed(seed)
    if spec["representation"] == "continuous":
        data = torch.randn(256, *spec["event_shape"], generator=gen)
    else:
        data = (torch.randint(0, 17, (256, *spec["event_shape"]), generator=gen) + 0.5) / 17
    model.init_from_data(data)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval(), data


@pytest.mark.parametrize("transform,architecture", VARIANTS)
def test_each_class_density_integrates_to_one_and_they_differ(transform, architecture):
    model, _ = scrambled(LABELLED, transform, architecture, seed=0)
    model = model.double()
    lo, hi, points = -20.0, 20.0, 600  # the perturbed flows have wide tails
    h = (hi - lo) / points
    axis = lo + h * (torch.arange(points, dtype=torch.float64) + 0.5)
    grid = torch.cartesian_prod(axis, axis)                                   # (G, 2)
    with torch.no_grad():
        dens = [model.log_prob(grid, torch.full((len(grid),), k)).exp() for k in range(3)]
    for d in dens:
        assert float(d.sum()) * h * h == pytest.approx(1.0, abs=0.01)
    assert float((dens[0] - dens[1]).abs().sum()) * h * h > 0.05  # the label changes the density


@pytest.mark.parametrize("spec", [LABELLED, IMAGES], ids=["2d", "images"])
def test_inverse_and_log_det_hold_given_the_labels(spec):
    architecture = "multiscale" if spec is IMAGES else "coupling"
    model, data = scrambled(spec, "affine", architecture, seed=1, n_levels=2)
    model = model.double()
    x = data[:12].double()
    labels = torch.arange(12) % 3
    d = math.prod(spec["event_shape"])
    with torch.no_grad():
        z, log_det = model(x, labels)
        torch.testing.assert_close(model.inverse(z, labels), x, rtol=0, atol=1e-8)
    for xi, yi, ldi in zip(x[:3], labels[:3], log_det[:3]):
        jac = torch.autograd.functional.jacobian(lambda v: model(v, yi)[0].reshape(-1), xi).reshape(d, d)
        assert float(ldi) == pytest.approx(float(torch.linalg.slogdet(jac)[1]), abs=1e-7)


def test_labels_are_required_checked_and_used_for_sampling():
    model, _ = scrambled(LABELLED, "spline", "coupling", seed=2)
    x = torch.randn(5, 2)
    with pytest.raises(ContextError, match="context"):
        model.sample((4,))
    with pytest.raises(ContextError, match=r"\[0, 3\)"):
        model.log_prob(x, torch.tensor([0, 1, 2, 3, 0]))
    torch.manual_seed(3)
    samples = model.sample((4,), context=torch.tensor(2))
    torch.manual_seed(3)
    z = torch.randn(4, 2)
    torch.testing.assert_close(samples, model.inverse(z, torch.full((4,), 2)), rtol=0, atol=0)
    assert model.sample_for_display(6).shape == (6, 2)
    unconditional = Flow(UNLABELLED)  # labelled data, but not asked to condition: no embedding
    assert unconditional.embedding is None and not unconditional.is_conditional
    with pytest.raises(ContextError):
        unconditional.log_prob(x, torch.zeros(5))


def test_training_learns_the_label_dependence():
    """Three classes, each a Gaussian blob at its own centre: the conditional NLL falls well below
    the marginal's entropy (log 3 nats of label information is available)."""
    torch.manual_seed(4)
    gen = torch.Generator().manual_seed(4)
    centres = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]])
    labels = torch.randint(0, 3, (3000,), generator=gen)
    x = centres[labels] + 0.3 * torch.randn(3000, 2, generator=gen)
    model = Flow(LABELLED, transform="spline", n_couplings=2, hidden=[32])
    model.init_from_data(x[:1000])
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for step in range(200):
        idx = torch.randint(0, 2000, (200,), generator=gen)
        opt.zero_grad()
        model.loss(x[idx], labels[idx]).backward()
        opt.step()
    with torch.no_grad():
        nll = float(-model.log_prob(x[2000:], labels[2000:]).mean())
    true_conditional_entropy = 2 * 0.5 * math.log(2 * math.pi * math.e * 0.3 ** 2)  # = 0.43
    assert nll < true_conditional_entropy + 0.3, nll
