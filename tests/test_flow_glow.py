"""Numerical checks of the flow family's multiscale architecture (RealNVP section 3.6, Dinh et al.
2017; Glow, Kingma & Dhariwal 2018): squeeze, ActNorm, the LU-decomposed invertible 1x1
convolution and convolutional couplings are exact bijections with the log-determinants of their
Jacobians (checked with autograd), and so is the whole flow with its factored-out latents and the
logit pre-processing; the density integrates to 1."""
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
from zoo_flow.model import Flow
from zoo_flow.elementwise import AffineElementwise, SplineElementwise
from zoo_flow.glow import ActNorm2d, ConvCoupling, FlowStep, InvConv1x1, MultiscaleFlow, squeeze, unsqueeze

IMAGES = DataSpec("tiny-images", (1, 4, 4), "dequantized", num_levels=17).to_dict()
CONTINUOUS_IMAGES = DataSpec("tiny-real-images", (1, 2, 2), "continuous").to_dict()


def perturb(module: torch.nn.Module, scale: float, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


def jacobian_log_det(fn, x: torch.Tensor) -> float:
    """log|det d fn(x) / dx| of one example x (*shape) by autograd."""
    d = x.numel()
    jac = torch.autograd.functional.jacobian(lambda v: fn(v[None])[0].reshape(-1), x).reshape(d, d)
    sign, logabsdet = torch.linalg.slogdet(jac)
    assert sign != 0
    return float(logabsdet)


def test_squeeze_moves_each_2x2_patch_into_channels_and_back():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float64).reshape(2, 3, 4, 6)
    y = squeeze(x)
    assert y.shape == (2, 12, 2, 3)
    # channel 4c + 2i + j at (h, w) holds x[c, 2h + i, 2w + j]
    for c, i, j, h, w in [(0, 0, 0, 0, 0), (1, 1, 0, 1, 2), (2, 1, 1, 0, 1)]:
        assert y[1, 4 * c + 2 * i + j, h, w] == x[1, c, 2 * h + i, 2 * w + j]
    assert torch.equal(unsqueeze(y), x)


LAYERS = {
    "actnorm": lambda: ActNorm2d(4),
    "invconv": lambda: InvConv1x1(4),
    "affine-coupling": lambda: ConvCoupling(4, [8], AffineElementwise(3.0)),
    "spline-coupling": lambda: ConvCoupling(4, [8], SplineElementwise(5, 3.0)),
    "step": lambda: FlowStep(4, [8, 8], AffineElementwise(3.0)),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_each_layer_is_invertible_with_the_autograd_log_det(name):
    torch.manual_seed(0)
    layer = perturb(LAYERS[name]().double(), 0.3, seed=1)
    x = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    y, log_det = layer(x)
    assert y.shape == x.shape and log_det.shape == (6,)
    torch.testing.assert_close(layer.inverse(y), x, rtol=0, atol=1e-10)
    for xi, ldi in zip(x[:3], log_det[:3]):
        assert float(ldi) == pytest.approx(jacobian_log_det(lambda v: layer(v)[0], xi), abs=1e-9)


def test_lu_convolution_is_a_rotation_at_initialisation_and_its_log_det_is_slogdet():
    torch.manual_seed(2)
    conv = InvConv1x1(6).double()
    w = conv.weight()
    torch.testing.assert_close(w @ w.T, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-6)
    perturb(conv, 0.2, seed=3)
    x = torch.randn(2, 6, 5, 3, dtype=torch.float64)
    _, log_det = conv(x)
    expected = 15 * torch.linalg.slogdet(conv.weight())[1]
    torch.testing.assert_close(log_det, expected.expand(2), rtol=0, atol=1e-10)


def test_actnorm_initialises_to_zero_mean_unit_variance_per_channel():
    x = 3 + 2 * torch.randn(64, 3, 4, 4, dtype=torch.float64)
    layer = ActNorm2d(3).double()
    layer.initialise(x)
    y, _ = layer(x)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-10)
    torch.testing.assert_close(y.std((0, 2, 3)), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-5)


def test_multiscale_flow_factors_out_latents_and_inverts():
    torch.manual_seed(4)
    body = perturb(MultiscaleFlow((1, 8, 8), 3, 2, [8], AffineElementwise(3.0)).double(), 0.1, seed=5)
    assert body.shapes == [(4, 4, 4), (8, 2, 2), (16, 1, 1)]
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    z, log_det = body(x)
    assert z.shape == (5, 64) and log_det.shape == (5,)
    torch.testing.assert_close(body.inverse(z), x, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="divisible by 8"):
        MultiscaleFlow((1, 4, 4), 3, 1, [8], AffineElementwise(3.0))


def scrambled_glow(spec, seed, transform="affine", **kwargs):
    torch.manual_seed(seed)
    model = Flow(spec, architecture="multiscale", transform=transform,
                 **{"n_couplings": 2, "hidden": [8, 8], "n_levels": 2 if spec is IMAGES else 1, **kwargs})
    gen = torch.Generator().manual_seed(seed)
    if spec["representation"] == "continuous":
        data = torch.randn(128, *spec["event_shape"], generator=gen)
    else:
        data = (torch.randint(0, 17, (128, *spec["event_shape"]), generator=gen) + 0.5) / 17
    model.init_from_data(data)
    return perturb(model, 0.1, seed + 1).eval(), data


@pytest.mark.parametrize("transform", ["affine", "spline"])
def test_whole_image_flow_inverts_and_its_log_det_matches_autograd(transform):
    """On 1x4x4 images, logit pre-processing included."""
    model, data = scrambled_glow(IMAGES, seed=6, transform=transform)
    model = model.double()
    x = data[:20].double()
    with torch.no_grad():
        z, log_det = model(x)
        assert z.shape == x.shape
        torch.testing.assert_close(model.inverse(z), x, rtol=0, atol=1e-8)
    for xi, ldi in zip(x[:3], log_det[:3]):
        assert float(ldi) == pytest.approx(jacobian_log_det(lambda v: model(v)[0], xi), abs=1e-7)


def test_image_density_integrates_to_one():
    """A 1x2x2 real-valued image (D = 4): midpoint rule on a 4-D grid."""
    model, _ = scrambled_glow(CONTINUOUS_IMAGES, seed=8)
    model = model.double()
    lo, hi, points = -7.0, 7.0, 36
    h = (hi - lo) / points
    axis = lo + h * (torch.arange(points, dtype=torch.float64) + 0.5)
    grid = torch.cartesian_prod(axis, axis, axis, axis).reshape(-1, 1, 2, 2)
    with torch.no_grad():
        mass = float(torch.cat([model.log_prob(c).exp() for c in grid.split(200000)]).sum()) * h ** 4
    assert mass == pytest.approx(1.0, abs=0.01)


def test_samples_are_the_inverse_flow_of_base_draws():
    model, _ = scrambled_glow(IMAGES, seed=9)
    torch.manual_seed(10)
    x = model.sample((3, 4))
    torch.manual_seed(10)
    z = torch.randn(12, 1, 4, 4)
    assert x.shape == (3, 4, 1, 4, 4)
    torch.testing.assert_close(x.reshape(12, 1, 4, 4), model.inverse(z), rtol=0, atol=0)
    with torch.no_grad():
        assert torch.isfinite(model.log_prob(x)).all()
