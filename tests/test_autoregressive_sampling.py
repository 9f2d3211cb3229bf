"""The incremental ancestral samplers of the autoregressive family (``incremental.py``) against
sampling straight from the definition (the whole network on the partial sample before every
draw): the same seed gives the same samples (binary draws bit for bit, real-valued ones within
float rounding) for MADE with one or several orderings and both PixelCNNs, and the samples are
ordinary tensors that autograd accepts."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_autoregressive import Autoregressive, randomised, spec  # noqa: E402

from zoo_autoregressive.incremental import incremental_sampler  # noqa: E402


def reference_draw(model: Autoregressive, n: int, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """n samples and the conditional means met on the way, one full network pass per dimension,
    drawing labels, masks and values from the global generator in the order the model does."""
    x = torch.zeros(n, *model.event_shape, dtype=model.dtype)  # (n, *event)
    means = torch.zeros_like(x)
    with torch.no_grad():
        if model.is_conditional and y is None:
            y = torch.randint(model.num_classes, (n,))
        ks = torch.randint(model.num_masks, (n,)) if model.num_masks > 1 else torch.zeros(n, dtype=torch.long)
        for k in range(model.num_masks):
            rows = (ks == k).nonzero()[:, 0]
            if not len(rows):
                continue
            xk, mk = x[rows], means[rows].reshape(len(rows), model.D)
            yk = y[rows] if y is not None else None
            for d in torch.argsort(model.order(k)).tolist():
                params = model.conditionals(xk, k, yk)[:, d]  # (n_k, P), every dimension recomputed
                value, mk[:, d] = model.dim_sample(params)
                xk.reshape(len(rows), model.D)[:, d] = value
            x[rows], means[rows] = xk, mk.reshape(xk.shape)
    return x, means


CASES = [  # (event shape, representation, model kwargs)
    ((7,), "binarized", dict(hidden=[16, 16])),
    ((6,), "binarized", dict(hidden=[12, 10], num_masks=3)),
    ((1, 3, 3), "dequantized", dict(hidden=[16, 12], n_components=2, direct=False)),
    ((2,), "continuous", dict(hidden=[16], n_components=3, num_masks=2)),
    ((1, 5, 6), "binarized", dict(architecture="pixelcnn", channels=8, n_layers=3, kernel_size=5)),
    ((1, 4, 4), "dequantized", dict(architecture="pixelcnn", channels=8, n_layers=2, kernel_size=3, n_components=3)),
    ((1, 5, 6), "binarized", dict(architecture="gated_pixelcnn", channels=8, n_layers=3, kernel_size=5)),
    ((1, 4, 4), "dequantized", dict(architecture="gated_pixelcnn", channels=8, n_layers=2, kernel_size=3,
                                    n_components=3)),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape, representation, kwargs", CASES)
def test_incremental_sampling_matches_the_definition(shape, representation, kwargs, dtype):
    model = randomised(Autoregressive(spec(shape, representation), **kwargs), seed=2, std=0.3).to(dtype)
    n = 40
    torch.manual_seed(5)
    fast, fast_means = model._draw(n)
    torch.manual_seed(5)
    ref, ref_means = reference_draw(model, n)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    if representation == "binarized":
        assert set(fast.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(fast, ref), "different binary samples under the same seed"
    else:
        torch.testing.assert_close(fast, ref, atol=tol, rtol=tol)
    torch.testing.assert_close(fast_means, ref_means, atol=tol, rtol=tol)
    torch.manual_seed(5)
    public = model.sample((n,))
    torch.testing.assert_close(public, fast, atol=0, rtol=0)  # sample() is _draw()


@pytest.mark.parametrize("kwargs", [dict(hidden=[10, 10]),
                                    dict(architecture="pixelcnn", channels=4, n_layers=1),
                                    dict(architecture="gated_pixelcnn", channels=4, n_layers=1, kernel_size=3)])
def test_incremental_conditionals_equal_the_full_pass(kwargs):
    """At a fixed image, every step's parameters equal the full network's (float64)."""
    model = randomised(Autoregressive(spec((1, 4, 5)), **kwargs), seed=4, std=0.4)
    x = torch.bernoulli(torch.full((3, 1, 4, 5), 0.5, dtype=torch.float64))
    with torch.no_grad():
        full = model.conditionals(x)  # (3, D, P)
        steps = incremental_sampler(model.net, 3, model.event_shape, model.net_input)
        flat = x.reshape(3, -1)
        for d in range(model.D):
            torch.testing.assert_close(steps.params(d), full[:, d], atol=1e-12, rtol=1e-12)
            steps.set(d, flat[:, d])


def test_samples_are_ordinary_tensors():
    """Drawn under inference_mode, returned as ordinary tensors: autograd takes them."""
    for kwargs in (dict(hidden=[8]), dict(architecture="gated_pixelcnn", channels=4, n_layers=1, kernel_size=3)):
        model = Autoregressive(spec((1, 3, 3)), **kwargs)
        x = model.sample((4,))
        assert not x.is_inference()
        model.loss(x).backward()
        model.loss(model.sample_for_display(4).round()).backward()
