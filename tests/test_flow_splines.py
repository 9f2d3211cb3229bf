"""Numerical checks of the flow family's spline and autoregressive variants (Durkan et al. 2019,
"Neural Spline Flows"; Papamakarios et al. 2017, MAF): the rational-quadratic spline against its
closed-form pieces, exact inverses, log-determinants against autograd's Jacobian for coupling and
autoregressive layers, the identity at initialisation, and densities that integrate to 1."""
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
from zoo_flow.made import MADE
from zoo_flow.splines import rational_quadratic_spline

CONTINUOUS = DataSpec("toy-2d", (2,), "continuous").to_dict()
VECTORS = DataSpec("toy-5d", (5,), "continuous").to_dict()
IMAGES = DataSpec("tiny-images", (1, 4, 4), "dequantized", num_levels=17).to_dict()
VARIANTS = [("spline", "coupling"), ("spline", "autoregressive"), ("affine", "autoregressive")]


def spline_params(shape, k, seed, scale=1.5):
    gen = torch.Generator().manual_seed(seed)
    draw = lambda *s: scale * torch.randn(*shape, *s, generator=gen, dtype=torch.float64)  # noqa: E731
    return draw(k), draw(k), draw(k - 1)


def test_spline_round_trip_and_derivative_match_finite_differences():
    """Inside and outside [-B, B]: the inverse recovers x, and log dy/dx matches a central difference."""
    w, h, d = spline_params((4000,), 6, seed=0)
    x = torch.linspace(-4.0, 4.0, 4000, dtype=torch.float64)
    y, log_det = rational_quadratic_spline(x, w, h, d, tail_bound=3.0)
    x_back, log_det_inv = rational_quadratic_spline(y, w, h, d, tail_bound=3.0, inverse=True)
    torch.testing.assert_close(x_back, x, rtol=0, atol=1e-10)
    torch.testing.assert_close(log_det_inv, -log_det, rtol=0, atol=1e-9)
    eps = 1e-6
    y_plus = rational_quadratic_spline(x + eps, w, h, d, 3.0)[0]
    y_minus = rational_quadratic_spline(x - eps, w, h, d, 3.0)[0]
    fd = torch.log((y_plus - y_minus) / (2 * eps))
    interior = (x.abs() - 3.0).abs() > 2 * eps  # the kink-free points (the spline is C1 at +-B anyway)
    torch.testing.assert_close(log_det[interior], fd[interior], rtol=0, atol=1e-4)  # FD error O(eps) at knots
    outside = x.abs() > 3.0
    assert torch.equal(y[outside], x[outside]) and (log_det[outside] == 0).all()


def test_spline_is_monotone_maps_the_interval_onto_itself_and_starts_as_identity():
    w, h, d = spline_params((1,), 8, seed=1)
    x = torch.linspace(-3.0, 3.0, 2001, dtype=torch.float64)
    y, _ = rational_quadratic_spline(x, w.expand(2001, 8), h.expand(2001, 8), d.expand(2001, 7), 3.0)
    assert (y[1:] > y[:-1]).all()
    assert y[0] == pytest.approx(-3.0, abs=1e-12) and y[-1] == pytest.approx(3.0, abs=1e-12)
    zeros = torch.zeros(2001, 8, dtype=torch.float64)
    y0, log_det0 = rational_quadratic_spline(x, zeros, zeros, zeros[:, :7], 3.0)
    torch.testing.assert_close(y0, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(log_det0, torch.zeros_like(x), rtol=0, atol=1e-12)


def test_spline_single_bin_is_the_known_rational_quadratic():
    """K = 2 with equal bins and knot derivatives (1, d, 1): on [0, B] the closed form
    y = h [s xi^2 + d xi (1 - xi)] / [s + (1 + d - 2 s) xi (1 - xi)] with s = 1 (square bins)."""
    bound, k = 2.0, 2
    d_mid = 3.0
    raw_d = torch.tensor([[math.log(math.expm1(d_mid - 1e-3)) - math.log(math.expm1(1 - 1e-3))]], dtype=torch.float64)
    zeros = torch.zeros(1, k, dtype=torch.float64)
    xi = torch.tensor([0.1, 0.37, 0.8], dtype=torch.float64)
    x = xi * bound  # the right bin [0, B]: knot derivatives d_k = d_mid, d_{k+1} = 1
    y, _ = rational_quadratic_spline(x, zeros.expand(3, k), zeros.expand(3, k), raw_d.expand(3, 1), bound)
    expected = bound * (xi ** 2 + d_mid * xi * (1 - xi)) / (1 + (1 + d_mid - 2) * xi * (1 - xi))
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)


def test_made_is_autoregressive():
    """Output row i of MADE depends only on inputs before i in its order (the Jacobian is strictly
    triangular in that order), checked with autograd on a perturbed network."""
    torch.manual_seed(2)
    degrees = torch.tensor([3, 1, 4, 2, 5])
    made = MADE(degrees, [32, 32], n_params=3, activation="relu").double()
    with torch.no_grad():
        for p in made.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(5, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: made(v[None])[0], x)  # (D, P, D)
    depends = jac.abs().sum(1) > 0                                              # (D, D): out i on in j
    allowed = degrees[None, :] < degrees[:, None]
    assert not (depends & ~allowed).any()
    assert depends[allowed].float().mean() > 0.9  # and it does use the inputs it may see


def scrambled(spec, transform, architecture, seed, scale=0.3, **kwargs):
    torch.manual_seed(seed)
    model = Flow(spec, transform=transform, architecture=architecture,
                 **{"n_couplings": 4, "hidden": [16, 16], "n_bins": 5, "tail_bound": 2.5, **kwargs})
    gen = torch.Generator().manual_seed(seed)
    if spec["representation"] == "continuous":
        data = torch.randn(256, *spec["event_shape"], generator=gen)
    else:
        data = (torch.randint(0, 17, (256, *spec["event_shape"]), generator=gen) + 0.5) / 17
    model.init_from_data(data)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("transform,architecture", VARIANTS)
@pytest.mark.parametrize("spec", [CONTINUOUS, VECTORS, IMAGES], ids=["2d", "5d", "4x4-images"])
def test_round_trip_and_log_det_match_autograd(spec, transform, architecture):
    model = scrambled(spec, transform, architecture, seed=3, scale=0.3 if spec is not IMAGES else 0.1).double()
    d = math.prod(spec["event_shape"])
    gen = torch.Generator().manual_seed(4)
    if spec is IMAGES:
        x = (torch.randint(0, 17, (40, *spec["event_shape"]), generator=gen) + 0.5) / 17
    else:
        x = 2.0 * torch.randn(40, *spec["event_shape"], generator=gen)  # reaches the linear tails too
    x = x.double()
    with torch.no_grad():
        z, log_det = model(x)
        torch.testing.assert_close(model.inverse(z), x, rtol=0, atol=1e-5)
        z2 = torch.randn(40, *spec["event_shape"], dtype=torch.float64, generator=gen)
        torch.testing.assert_close(model(model.inverse(z2))[0], z2, rtol=0, atol=1e-5)
    for xi, ldi in zip(x[:4], log_det[:4]):
        jac = torch.autograd.functional.jacobian(lambda v: model(v)[0].reshape(-1), xi).reshape(d, d)
        sign, logabsdet = torch.linalg.slogdet(jac)
        assert sign != 0
        assert float(ldi) == pytest.approx(float(logabsdet), abs=1e-7)


@pytest.mark.parametrize("transform,architecture", VARIANTS)
def test_initial_flow_is_the_gaussian_fit_of_the_init_batch(transform, architecture):
    """Every layer starts as the identity, so after ActNorm's initialisation the model is
    N(mean, diag(std^2)) of the initialisation batch."""
    torch.manual_seed(5)
    model = Flow(CONTINUOUS, transform=transform, architecture=architecture, n_couplings=2, hidden=[8])
    data = torch.randn(500, 2) * torch.tensor([1.5, 0.5]) + torch.tensor([0.3, -1.0])
    model.init_from_data(data)
    x = 3 * torch.randn(100, 2)
    expected = torch.distributions.Normal(data.mean(0), data.std(0) + 1e-6).log_prob(x).sum(-1)
    with torch.no_grad():
        torch.testing.assert_close(model.log_prob(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("transform,architecture", VARIANTS)
def test_density_integrates_to_one(transform, architecture):
    model = scrambled(CONTINUOUS, transform, architecture, seed=6, scale=0.3).double()
    lo, hi, points = -9.0, 9.0, 500
    h = (hi - lo) / points
    axis = lo + h * (torch.arange(points, dtype=torch.float64) + 0.5)
    grid = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        mass = float(torch.cat([model.log_prob(c).exp() for c in grid.split(50000)]).sum()) * h * h
    assert mass == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("transform,architecture", VARIANTS)
def test_training_fits_a_curved_density(transform, architecture):
    """A few hundred Adam steps on a banana-shaped density bring the flow near its true
    differential entropy (1.451 nats), well below the Gaussian it starts as (about 2.55)."""
    torch.manual_seed(14)
    gen = torch.Generator().manual_seed(14)
    def banana(n):  # x1 ~ N(0, 1), x2 | x1 ~ N(x1^2 / 2 - 1, 0.25^2)
        a, b = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
        return torch.stack([a, a ** 2 / 2 - 1 + 0.25 * b], -1)
    train, test = banana(4000), banana(4000)
    model = Flow(CONTINUOUS, transform=transform, architecture=architecture, n_couplings=4, hidden=[32, 32])
    model.init_from_data(train[:2048])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        idx = torch.randint(0, len(train), (256,), generator=gen)
        opt.zero_grad()
        model.loss(train[idx]).backward()
        opt.step()
    with torch.no_grad():
        end = -model.log_prob(test).mean().item()
    true_entropy = 0.5 * math.log(2 * math.pi * math.e) * 2 + math.log(0.25)
    assert end < true_entropy + 0.15, end


def test_spline_settings_are_checked():
    with pytest.raises(ValueError, match="transform"):
        Flow(CONTINUOUS, transform="quadratic")
    with pytest.raises(ValueError, match="architecture"):
        Flow(CONTINUOUS, architecture="residual")
    with pytest.raises(ValueError, match="n_bins"):
        Flow(CONTINUOUS, transform="spline", n_bins=1)
    with pytest.raises(ValueError, match="multiscale"):
        Flow(CONTINUOUS, architecture="multiscale")
    model = Flow(CONTINUOUS, transform="spline", architecture="autoregressive", n_couplings=3, n_bins=4.0)
    assert dict(model.hparams)["n_bins"] == 4 and dict(model.hparams)["transform"] == "spline"


@pytest.mark.parametrize("architecture", ["coupling", "autoregressive"])
def test_single_precision_round_trip(architecture):
    """The training dtype: the inverse holds to 1e-4 in float32 as well, tails included, for a
    moderately perturbed flow. (The inverse is only as well conditioned as the spline's slopes:
    dx = dy / y'(x), so near-flat bins of extreme random parameters lose float32 digits.)"""
    model = scrambled(VECTORS, "spline", architecture, seed=7, scale=0.1)
    gen = torch.Generator().manual_seed(8)
    x = 2.0 * torch.randn(500, 5, generator=gen)
    with torch.no_grad():
        z, _ = model(x)
        torch.testing.assert_close(model.inverse(z), x, rtol=0, atol=1e-4)
