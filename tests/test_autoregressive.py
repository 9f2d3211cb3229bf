"""Numerical checks of the autoregressive family (MADE and PixelCNN): the autoregressive property
by autograd and by perturbation, probabilities summing to exactly 1 over every binary image, the
2-D mixture density integrating to 1, samples following log_prob, a known closed form, learning
a known distribution, and 2-process DDP training. Seeded and small (a few seconds on a CPU)."""
from __future__ import annotations

import itertools
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
try:
    from zoo_autoregressive import Autoregressive
except ImportError:  # an uninstalled checkout (or one installed before the package existed)
    sys.path.insert(0, str(PLUGINS))
    sys.modules.pop("zoo_autoregressive", None)
    from zoo_autoregressive import Autoregressive
import zoo_autoregressive

from conftest import run_zoo, zoo_env
from zoo_core.data.spec import DataSpec
from zoo_core.errors import ConfigError



def spec(shape, representation="binarized") -> dict:
    return DataSpec("test", tuple(shape), representation, 256 if representation == "dequantized" else None).to_dict()


def randomised(model: Autoregressive, seed: int = 0, std: float = 0.5) -> Autoregressive:
    """Float64 and every parameter redrawn, so no connection is zero by accident (the direct
    connections start at zero)."""
    model = model.double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
    return model.eval()


def all_binary(shape) -> torch.Tensor:
    """Every binary tensor of ``shape``: (2^D, *shape), float64."""
    D = math.prod(shape)
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=D)), dtype=torch.float64).reshape(-1, *shape)


MADE_CASES = [  # (event shape, representation, model kwargs)
    ((6,), "binarized", dict(hidden=[16, 16])),
    ((6,), "binarized", dict(hidden=[12], num_masks=3, direct=False)),
    ((1, 2, 3), "binarized", dict(hidden=[8, 8, 8], num_masks=2)),
    ((2,), "continuous", dict(hidden=[16, 16], n_components=3)),
    ((5,), "continuous", dict(hidden=[24], n_components=2, num_masks=3)),
    ((6,), "binarized", dict(hidden=[12, 12], num_masks=3, orderings="natural")),
]


@pytest.mark.parametrize("shape, representation, kwargs", MADE_CASES)
def test_made_autoregressive_property(shape, representation, kwargs):
    """d params_i / d x_j == 0 exactly when j comes at or after i in the mask's ordering, and the
    conditionals do depend on earlier inputs; changing x_j for such j leaves conditional i unchanged."""
    torch.manual_seed(0)
    model = randomised(Autoregressive(spec(shape, representation), architecture="made", **kwargs))
    D, P = model.D, model.P
    x = torch.rand(1, *shape, dtype=torch.float64)
    for k in range(model.num_masks):
        order = model.order(k)  # (D,) positions 1..D
        assert sorted(order.tolist()) == list(range(1, D + 1))
        if k == 0 or kwargs.get("orderings") == "natural":
            assert order.tolist() == list(range(1, D + 1)), "mask 0 (every mask with orderings=natural) uses the natural order"
        jac = torch.autograd.functional.jacobian(lambda v: model.conditionals(v, k), x)  # (1, D, P, 1, *shape)
        jac = jac.reshape(D, P, D).abs().sum(1)  # (D outputs, D inputs)
        later = order[None, :] >= order[:, None]  # later[i, j]: j at or after i
        assert torch.all(jac[later] == 0), f"mask {k}: a conditional depends on a later input"
        first = int(torch.argmin(order))
        assert torch.all(jac[first] == 0), "the first conditional must be unconditional"
        assert (jac[~later] != 0).float().mean() > 0.5, "the conditionals hardly depend on earlier inputs"
        # the same by perturbation: change every input from position i on, conditionals up to i stay put
        flat = x.reshape(1, D)
        with torch.no_grad():
            base = model.conditionals(x, k)[0]  # (D, P)
            for i in range(D):
                moved = torch.where(order[None, :] >= order[i], flat + 1.7, flat).reshape(x.shape)
                same = order <= order[i]  # conditionals at positions <= i
                assert torch.equal(model.conditionals(moved, k)[0][same], base[same])


def test_pixelcnn_autoregressive_property():
    """Pixel i's Bernoulli logit has exactly zero gradient w.r.t. pixels j >= i in raster order, and
    a non-zero one w.r.t. its left and upper neighbours."""
    torch.manual_seed(1)
    H, W = 5, 6
    model = randomised(Autoregressive(spec((1, H, W)), architecture="pixelcnn", channels=8, n_layers=2,
                                      kernel_size=5), std=0.3)
    x = torch.bernoulli(torch.full((1, 1, H, W), 0.5, dtype=torch.float64))
    jac = torch.autograd.functional.jacobian(lambda v: model.conditionals(v), x).reshape(H * W, H * W)
    later = torch.arange(H * W)[None, :] >= torch.arange(H * W)[:, None]
    assert torch.all(jac[later] == 0), "a pixel's conditional depends on itself or a later pixel"
    for i in range(H):
        for j in range(W):
            d = i * W + j
            if j > 0:
                assert jac[d, d - 1] != 0, f"pixel {(i, j)} ignores its left neighbour"
            if i > 0:
                assert jac[d, d - W] != 0, f"pixel {(i, j)} ignores the pixel above"
    # mixture conditionals (dequantized images): all 3C parameters obey the same masks
    model = randomised(Autoregressive(spec((1, 3, 3), "dequantized"), architecture="pixelcnn", channels=8,
                                      n_layers=1, n_components=2), seed=2)
    x = torch.rand(1, 1, 3, 3, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: model.conditionals(v), x).reshape(9, 6, 9).abs().sum(1)
    later = torch.arange(9)[None, :] >= torch.arange(9)[:, None]
    assert torch.all(jac[later] == 0) and torch.all(jac[~later][:3] != 0)


@pytest.mark.parametrize("shape, kwargs", [
    ((6,), dict(architecture="made", hidden=[16, 16])),
    ((6,), dict(architecture="made", hidden=[16], num_masks=4)),
    ((1, 2, 3), dict(architecture="made", hidden=[8, 8])),
    ((1, 3, 3), dict(architecture="pixelcnn", channels=8, n_layers=2)),
    ((1, 2, 2), dict(architecture="pixelcnn", channels=8, n_layers=1, kernel_size=3)),
    ((1, 3, 3), dict(architecture="gated_pixelcnn", channels=8, n_layers=2, kernel_size=3)),
    ((1, 2, 3), dict(architecture="gated_pixelcnn", channels=6, n_layers=1, kernel_size=5)),
])
def test_probabilities_sum_to_one_over_all_binary_data(shape, kwargs):
    model = randomised(Autoregressive(spec(shape), **kwargs))
    x = all_binary(shape)  # (2^D, *shape)
    with torch.no_grad():
        total = model.log_prob(x).exp().sum()
    assert abs(float(total) - 1) < 1e-10, f"sum over all {len(x)} configurations is {float(total)}"


@pytest.mark.parametrize("shape, kwargs", [
    ((6,), dict(architecture="made", hidden=[16], num_masks=2)),
    ((1, 2, 2), dict(architecture="pixelcnn", channels=8, n_layers=1)),
    ((1, 2, 3), dict(architecture="gated_pixelcnn", channels=8, n_layers=1, kernel_size=3)),
])
def test_samples_follow_log_prob(shape, kwargs):
    """Pearson's chi-square of 20000 samples against exp(log_prob) over every configuration."""
    model = randomised(Autoregressive(spec(shape), **kwargs), seed=3)
    x = all_binary(shape)
    D = x[0].numel()
    with torch.no_grad():
        probs = model.log_prob(x).exp()  # (2^D,)
        torch.manual_seed(4)
        s = model.sample(20000).reshape(20000, D)
    assert set(s.unique().tolist()) <= {0.0, 1.0}
    index = (s * 2 ** torch.arange(D - 1, -1, -1, dtype=s.dtype)).sum(-1).long()  # row of x
    counts = torch.bincount(index, minlength=len(x)).double()
    expected = 20000 * probs
    keep = expected >= 5  # chi-square's usual validity condition; the rest pooled
    chi2 = float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    rest_o, rest_e = float(counts[~keep].sum()), float(expected[~keep].sum())
    if rest_e > 0:
        chi2 += (rest_o - rest_e) ** 2 / rest_e
    dof = int(keep.sum()) - (0 if rest_e > 0 else 1)
    assert chi2 < dof + 6 * math.sqrt(2 * dof), f"chi2 {chi2:.1f} with {dof} degrees of freedom"


def test_made_closed_forms():
    """With its output weights at zero MADE is a product of its bias conditionals: log 1/2 per
    binary dimension, and independent Gaussian mixtures per real dimension (torch.distributions)."""
    model = Autoregressive(spec((7,)), hidden=[10]).double()
    with torch.no_grad():
        model.net.out.weight.zero_()
        model.net.out.bias.zero_()
    x = torch.bernoulli(torch.full((5, 7), 0.5, dtype=torch.float64))
    torch.testing.assert_close(model.log_prob(x), torch.full((5,), -7 * math.log(2), dtype=torch.float64))

    C = 3
    model = randomised(Autoregressive(spec((2,), "continuous"), hidden=[10], n_components=C))
    with torch.no_grad():
        model.net.out.weight.zero_()
        model.net.direct.weight.zero_()
        x = torch.randn(50, 2, dtype=torch.float64) * 2
        bias = model.net.output_bias()  # (2, 3C)
        log_w, means, log_scale = model._mixture(bias)  # (2, C) each
        expected = sum(
            torch.distributions.MixtureSameFamily(
                torch.distributions.Categorical(logits=log_w[d]),
                torch.distributions.Normal(means[d], log_scale[d].exp())).log_prob(x[:, d])
            for d in range(2))
        torch.testing.assert_close(model.log_prob(x), expected)


def test_made_2d_density_is_a_chain_of_mixtures_and_integrates_to_one():
    """log p(x) = log p(x1) + log p(x2 | x1) with x1's mixture free of x, checked against
    torch.distributions; and exp(log_prob) integrates to 1 on a fine grid (float64)."""
    torch.manual_seed(5)
    C = 4
    model = randomised(Autoregressive(spec((2,), "continuous"), hidden=[32, 32], n_components=C), seed=5, std=0.3)
    x = torch.randn(200, 2, dtype=torch.float64)

    def mixture(params):
        log_w, means, log_scale = model._mixture(params)
        return torch.distributions.MixtureSameFamily(torch.distributions.Categorical(logits=log_w),
                                                     torch.distributions.Normal(means, log_scale.exp()))

    with torch.no_grad():
        params = model.conditionals(x)  # (N, 2, 3C)
        assert torch.equal(params[:, 0], params[:1, 0].expand(len(x), -1)), "p(x1) must not depend on x"
        expected = mixture(params[:, 0]).log_prob(x[:, 0]) + mixture(params[:, 1]).log_prob(x[:, 1])
        torch.testing.assert_close(model.log_prob(x), expected)
        # quadrature, midpoints over [-10, 10]^2, on the same model with output weights shrunk so
        # that every component is wide compared with the grid step (checked) and stays inside
        model.net.out.weight.mul_(0.1)
        model.net.direct.weight.mul_(0.1)
        n, lo, hi = 500, -10.0, 10.0
        h = (hi - lo) / n
        axis = lo + h * (torch.arange(n, dtype=torch.float64) + 0.5)
        grid = torch.cartesian_prod(axis, axis)  # (n^2, 2)
        params = model.conditionals(grid)
        _, means, log_scale = model._mixture(params)
        assert log_scale.min() > math.log(4 * h) and means.abs().max() < 3
        assert (params[:, 1] - params[:, 1].mean(0)).abs().max() > 0.1, "x2's conditional must vary with x1"
        mass = float(model.log_prob(grid).exp().sum()) * h * h
    assert abs(mass - 1) < 1e-5, f"integral {mass}"


def test_pixelcnn_mixture_density_integrates_to_one():
    """A two-pixel image (1, 1, 2) with Gaussian-mixture conditionals: a 2-D density, integrated
    (output weights shrunk so that every component is wide compared with the grid step)."""
    model = randomised(Autoregressive(spec((1, 1, 2), "dequantized"), architecture="pixelcnn", channels=8,
                                      n_layers=1, kernel_size=3, n_components=3), seed=6, std=0.3)
    n, lo, hi = 400, -10.0, 10.0
    h = (hi - lo) / n
    axis = lo + h * (torch.arange(n, dtype=torch.float64) + 0.5)
    grid = torch.cartesian_prod(axis, axis).reshape(-1, 1, 1, 2)
    with torch.no_grad():
        model.net.head[-1].weight.mul_(0.2)
        params = model.conditionals(grid)  # (n^2, 2, 9)
        _, means, log_scale = model._mixture(params)
        assert log_scale.min() > math.log(4 * h) and means.abs().max() < 2 and log_scale.max() < math.log(8 / 4.5)  # tails beyond 4.5 sd
        assert (params[:, 1] - params[:, 1].mean(0)).abs().max() > 0.1, "pixel 2 must depend on pixel 1"
        mass = float(model.log_prob(grid).exp().sum()) * h * h
    assert abs(mass - 1) < 5e-5, f"integral {mass}"


def test_order_agnostic_mixture_and_loss():
    """K masks: distinct orderings, log_prob = log mean_k p_k(x), and the loss uses one mask."""
    model = randomised(Autoregressive(spec((5,)), hidden=[20], num_masks=4))
    orders = {tuple(model.order(k).tolist()) for k in range(4)}
    assert len(orders) == 4
    x = torch.bernoulli(torch.full((30, 5), 0.4, dtype=torch.float64))
    with torch.no_grad():
        per_mask = torch.stack([model.log_prob_mask(x, k) for k in range(4)])  # (4, N)
        torch.testing.assert_close(model.log_prob(x), per_mask.exp().mean(0).log())
        torch.manual_seed(0)
        k = int(torch.randint(4, ()))
        torch.manual_seed(0)
        torch.testing.assert_close(model.loss(x), -per_mask[k].mean())
    assert "4 orderings" in model.likelihood_description()


def test_learns_a_known_distribution():
    """MADE fitted by full-batch Adam to samples of a 3-bit distribution reaches their frequencies
    (the maximum-likelihood solution of an unconstrained model)."""
    torch.manual_seed(7)
    p_true = torch.tensor([0.30, 0.02, 0.05, 0.13, 0.10, 0.20, 0.15, 0.05])
    x_all = all_binary((3,)).float()
    index = torch.multinomial(p_true, 5000, replacement=True)
    data, freq = x_all[index], torch.bincount(index, minlength=8) / 5000.0
    model = Autoregressive(spec((3,)), hidden=[32])
    model.init_from_data(data)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(300):
        opt.zero_grad()
        model.loss(data).backward()
        opt.step()
    with torch.no_grad():
        p_model = model.log_prob(x_all).exp()
        nll = float(model.loss(data))
    entropy = float(-(freq * freq.log()).sum())
    assert (p_model - freq).abs().max() < 0.005, (p_model, freq)
    assert nll - entropy < 2e-3, (nll, entropy)


def test_init_from_data_sets_the_marginals():
    x = torch.bernoulli(torch.linspace(0.05, 0.95, 10).expand(400, 10))
    model = Autoregressive(spec((10,)), hidden=[8])
    with torch.no_grad():
        model.net.out.weight.zero_()
    model.init_from_data(x)
    with torch.no_grad():
        p1 = torch.sigmoid(model.conditionals(torch.zeros(1, 10))[0, :, 0])
    torch.testing.assert_close(p1, x.mean(0).clamp(1e-3, 1 - 1e-3))
    # mixture biases: means at the data's quantiles, finite scales
    y = torch.randn(300, 2) * torch.tensor([1.0, 3.0])
    model = Autoregressive(spec((2,), "continuous"), hidden=[8], n_components=4)
    model.init_from_data(y)
    _, means, log_scale = model._mixture(model.net.output_bias().detach())
    assert torch.all(means[:, 1:] > means[:, :-1]) and torch.isfinite(log_scale).all()
    assert -model.log_prob(y).mean() < 5.0


def test_shapes_samples_and_errors():
    torch.manual_seed(8)
    model = Autoregressive(spec((1, 4, 4)), architecture="pixelcnn", channels=8, n_layers=1)
    x = torch.bernoulli(torch.full((2, 3, 1, 4, 4), 0.5))
    assert model.log_prob(x).shape == (2, 3)
    assert model.sample().shape == (1, 4, 4) and model.sample((2, 3)).shape == (2, 3, 1, 4, 4)
    assert model.sample(0).shape == (0, 1, 4, 4)
    shown = model.sample_for_display(5)  # Bernoulli probabilities met along each sample
    assert shown.shape == (5, 1, 4, 4) and shown.min() >= 0 and shown.max() <= 1
    deq = Autoregressive(spec((1, 3, 3), "dequantized"), hidden=[8], n_components=2)
    assert deq.sample_for_display(4).min() >= 0 and deq.sample_for_display(4).max() <= 1
    assert deq.log_prob(torch.rand(7, 1, 3, 3)).shape == (7,)
    with pytest.raises(ValueError, match="1, 4, 4"):
        model.log_prob(torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match="architecture"):
        Autoregressive(spec((2,), "continuous"), architecture="wavenet")
    with pytest.raises(ValueError, match="pixelcnn"):
        Autoregressive(spec((2,), "continuous"), architecture="pixelcnn")
    with pytest.raises(ValueError, match="odd"):
        Autoregressive(spec((1, 4, 4)), architecture="pixelcnn", kernel_size=4)


def test_plugin_and_hyperparameters():
    registered = []
    zoo_autoregressive.register_families(registered.append)
    assert [r.load() for r in registered] == [Autoregressive]  # a lazy registration of the class and isinstance(zoo_autoregressive.__version__, str)
    model = Autoregressive(spec((6,)), hidden=(7, 5), num_masks=2)
    assert dict(model.hparams) == {
        "data": spec((6,)), "optim": None, "architecture": "made", "hidden": [7, 5], "num_masks": 2,
        "orderings": "random", "direct": True, "mask_seed": 0, "channels": 64, "n_layers": 4, "kernel_size": 7, "n_components": 10,
    }
    assert model.family == "autoregressive" and model.likelihood == "exact"


def test_two_process_ddp_training(tmp_path):
    env = zoo_env(OMP_NUM_THREADS=1,
                  PYTHONPATH=os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")])))
    result = run_zoo("train", "autoregressive-moons", "--accelerator", "cpu", "--devices", "2", "--max-steps", "20",
                     "--set", "data.n_train=4000", "--set", "data.n_val=1000", "--set", "data.n_test=1000", "--runs-dir", tmp_path, "--no-progress", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "autoregressive-moons" / "version_0" / "metrics.json").read_text())
    assert metrics["ddp"]["world_size"] == 2 and metrics["ddp"]["identical"]
    assert metrics["likelihood"] == "exact" and math.isfinite(metrics["test"]["nll_nats"])


def test_connectivity_agnostic_masks_keep_the_order_and_vary_the_hidden_degrees():
    model = Autoregressive(spec((6,)), hidden=[12, 12], num_masks=4, orderings="natural")
    degrees = model.net._degrees
    assert all(d[0].tolist() == list(range(1, 7)) for d in degrees)
    assert len({tuple(d[1].tolist()) for d in degrees}) == 4, "each mask draws its own hidden connectivity"
    assert len({tuple(d[0].tolist()) for d in Autoregressive(spec((6,)), hidden=[12], num_masks=4).net._degrees}) > 1
    with pytest.raises(ConfigError, match="model.orderings"):
        Autoregressive(spec((6,)), orderings="raster")
