"""The Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN
Decoders") against the masked PixelCNN: receptive fields by autograd (every earlier pixel and no
other for the gated one; a blind spot above-right for the masked one, whatever its depth), its
mixture density integrating to 1, and the shapes and errors of the new architecture."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_autoregressive import Autoregressive, randomised, spec  # noqa: E402

from zoo_autoregressive.gated import GatedPixelCNNNet, shift_down  # noqa: E402

H, W = 5, 6


def receptive_field(model: Autoregressive, n_images: int = 3) -> torch.Tensor:
    """(D, D) bool: [d, e] is True when the conditional of pixel d has a non-zero gradient with
    respect to pixel e (d, e flattened in raster order) at one of ``n_images`` random images
    (the ReLUs of the head can zero a gradient at one input by chance, not at all of them)."""
    gen = torch.Generator().manual_seed(11)
    D = H * W
    seen = torch.zeros(D, D, dtype=torch.bool)
    for _ in range(n_images):
        x = torch.bernoulli(torch.full((1, 1, H, W), 0.5, dtype=torch.float64), generator=gen)
        jac = torch.autograd.functional.jacobian(lambda v: model.conditionals(v), x)  # (1, D, P, 1, 1, H, W)
        seen |= jac.reshape(D, -1, D).abs().sum(1) != 0  # (D outputs, D inputs)
    return seen


def earlier() -> torch.Tensor:
    """(D, D) bool: [d, e] is True when e comes strictly before d in raster order."""
    d = torch.arange(H * W)
    return d[None, :] < d[:, None]


@pytest.mark.parametrize("representation", ["binarized", "dequantized"])
def test_gated_receptive_field_is_every_earlier_pixel(representation):
    """d p_(i,j) / d x_(i',j') != 0 for EVERY (i', j') before (i, j) in raster order, == 0 for the
    pixel itself and every later one (first kernel 5: 2 + 3 layers reach 5 columns and rows)."""
    model = randomised(Autoregressive(spec((1, H, W), representation), architecture="gated_pixelcnn",
                                      channels=8, n_layers=3, kernel_size=5, n_components=2), seed=1, std=0.3)
    seen = receptive_field(model)
    before = earlier()
    assert not seen[~before].any(), "a conditional depends on its own pixel or a later one"
    missed = [(divmod(d, W), divmod(e, W)) for d, e in (before & ~seen).nonzero().tolist()]
    assert not missed, f"earlier pixels outside the receptive field (pixel, missed): {missed[:5]}"


@pytest.mark.parametrize("n_layers", [3, 8])
def test_masked_pixelcnn_has_a_blind_spot(n_layers):
    """The masked PixelCNN obeys the ordering but misses earlier pixels above and to the right
    of (i, j) however deep it is (8 layers reach far beyond this 5 x 6 image)."""
    model = randomised(Autoregressive(spec((1, H, W)), architecture="pixelcnn", channels=8,
                                      n_layers=n_layers, kernel_size=5), seed=1, std=0.3)
    seen = receptive_field(model)
    before = earlier()
    assert not seen[~before].any(), "a conditional depends on its own pixel or a later one"
    blind = (before & ~seen).nonzero().tolist()
    assert len(blind) > 0, "the masked PixelCNN was expected to have a blind spot"
    for d, e in blind:
        (i, j), (i2, j2) = divmod(d, W), divmod(e, W)
        assert i2 < i and j2 > j, f"pixel {(i, j)} misses {(i2, j2)}, not above-right of it"
    # the gated stack of the same depth sees all of them
    gated = randomised(Autoregressive(spec((1, H, W)), architecture="gated_pixelcnn", channels=8,
                                      n_layers=n_layers, kernel_size=5), seed=1, std=0.3)
    assert torch.equal(receptive_field(gated), before)


def test_gated_stacks_by_hand():
    """The vertical stack never looks below its row and feeds the horizontal one from the row
    above; the first horizontal convolution excludes the pixel itself (checked on one layer)."""
    torch.manual_seed(0)
    net = GatedPixelCNNNet(channels=4, n_layers=0, kernel_size=3, params_per_pixel=1).double()
    layer = net.layers[0]
    x = torch.randn(1, 1, 4, 5, dtype=torch.float64, requires_grad=True)
    v, h = layer(x, x)
    # vertical output at row 1 depends on rows 0..1 only
    (gv,) = torch.autograd.grad(v[0, :, 1, 2].sum(), x, retain_graph=True)
    assert gv[0, 0, 2:].abs().sum() == 0 and gv[0, 0, :2].abs().sum() > 0
    # horizontal output at (2, 2), kernel 3 (p = 1): its left neighbour (2, 1) and, through the
    # link, the vertical window of row 1 (rows 0..1, columns 1..3); nothing else
    (gh,) = torch.autograd.grad(h[0, :, 2, 2].sum(), x)
    expected = torch.zeros(4, 5, dtype=torch.bool)
    expected[2, 1] = True
    expected[0:2, 1:4] = True
    assert torch.equal(gh[0, 0] != 0, expected)
    a = torch.arange(6.0).reshape(1, 1, 2, 3)
    assert torch.equal(shift_down(a), torch.tensor([[[[0.0, 0, 0], [0, 1, 2]]]]))


def test_gated_mixture_density_integrates_to_one():
    """A two-pixel image (1, 1, 2) with Gaussian-mixture conditionals: a 2-D density, integrated
    on a grid (output weights shrunk so that every component is wide compared with the step)."""
    model = randomised(Autoregressive(spec((1, 1, 2), "dequantized"), architecture="gated_pixelcnn", channels=8,
                                      n_layers=1, kernel_size=3, n_components=3), seed=6, std=0.3)
    n, lo, hi = 400, -10.0, 10.0
    step = (hi - lo) / n
    axis = lo + step * (torch.arange(n, dtype=torch.float64) + 0.5)
    grid = torch.cartesian_prod(axis, axis).reshape(-1, 1, 1, 2)
    with torch.no_grad():
        model.net.head[-1].weight.mul_(0.5)
        model.net.head[-1].bias[6:].zero_()  # raw log-scales near 0: unit-ish components, tails inside the grid
        params = model.conditionals(grid)  # (n^2, 2, 9)
        _, means, log_scale = model._mixture(params)
        assert log_scale.min() > math.log(4 * step) and means.abs().max() < 2 and log_scale.max() < math.log(8 / 4.5)
        assert (params[:, 1] - params[:, 1].mean(0)).abs().max() > 0.1, "pixel 2 must depend on pixel 1"
        mass = float(model.log_prob(grid).exp().sum()) * step * step
    assert abs(mass - 1) < 5e-5, f"integral {mass}"


def test_gated_shapes_init_and_errors():
    torch.manual_seed(3)
    model = Autoregressive(spec((1, 4, 4)), architecture="gated_pixelcnn", channels=8, n_layers=2, kernel_size=5)
    x = torch.bernoulli(torch.full((64, 1, 4, 4), 0.3))
    model.init_from_data(x)
    assert torch.allclose(torch.sigmoid(model.net.output_bias()), x.mean().reshape(1))
    assert model.log_prob(x[:6].reshape(2, 3, 1, 4, 4)).shape == (2, 3)
    assert model.sample((2, 3)).shape == (2, 3, 1, 4, 4) and model.sample(0).shape == (0, 1, 4, 4)
    loss = model.loss(x)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="gated_pixelcnn"):
        Autoregressive(spec((6,)), architecture="gated_pixelcnn")
    with pytest.raises(ValueError, match=">= 3"):
        Autoregressive(spec((1, 4, 4)), architecture="gated_pixelcnn", kernel_size=1)
