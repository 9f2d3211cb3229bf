"""Class-conditional MADE and PixelCNNs (per-class biases; van den Oord et al. 2016, "Conditional
Image Generation with PixelCNN Decoders", eq. 4): log p(x | y) has shape (N,) and sums to exactly
1 over every binary image for each class; the label-free log_prob is the uniform mixture over
classes; samples depend on the class and the incremental sampler matches the definition;
MADE learns two class-dependent distributions; wrong contexts are refused."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_autoregressive import Autoregressive, all_binary, randomised  # noqa: E402
from test_autoregressive_sampling import reference_draw  # noqa: E402

from zoo_core.data.spec import DataSpec  # noqa: E402
from zoo_core.errors import ConfigError, ContextError  # noqa: E402

K = 3


def labelled(shape, representation="binarized", conditional=True, **extra) -> dict:
    return DataSpec("test", tuple(shape), representation, 256 if representation == "dequantized" else None,
                    num_classes=K, conditional=conditional, **extra).to_dict()


ARCHS = [
    dict(hidden=[16, 16]),
    dict(hidden=[12], num_masks=2),
    dict(architecture="pixelcnn", channels=8, n_layers=2, kernel_size=3),
    dict(architecture="gated_pixelcnn", channels=8, n_layers=2, kernel_size=3),
]


@pytest.mark.parametrize("kwargs", ARCHS)
def test_class_conditional_log_prob_sums_to_one_per_class(kwargs):
    model = randomised(Autoregressive(labelled((1, 2, 3)), **kwargs), seed=3, std=0.5)
    assert model.is_conditional
    x = all_binary((1, 2, 3))  # (64, 1, 2, 3)
    with torch.no_grad():
        per_class = []
        for c in range(K):
            lp = model.log_prob(x, torch.full((len(x),), c))
            assert lp.shape == (len(x),)
            assert abs(float(lp.exp().sum()) - 1) < 1e-10, f"class {c}: sum {float(lp.exp().sum())}"
            per_class.append(lp)
        per_class = torch.stack(per_class)  # (K, 64)
        assert (per_class[0] - per_class[1]).abs().max() > 1e-3, "the classes give the same distribution"
        # no label: the uniform mixture over classes
        torch.testing.assert_close(model.log_prob(x), per_class.logsumexp(0) - math.log(K))


@pytest.mark.parametrize("kwargs", ARCHS)
def test_class_conditional_samples(kwargs):
    model = randomised(Autoregressive(labelled((1, 3, 4)), **kwargs), seed=4, std=0.5)
    y = torch.arange(30) % K
    torch.manual_seed(1)
    fast, _ = model._draw(30, y)
    torch.manual_seed(1)
    ref, _ = reference_draw(model, 30, y)
    assert torch.equal(fast, ref)
    draws = []
    for c in range(K):
        torch.manual_seed(2)  # the same random numbers for every class
        draws.append(model.sample((200,), context=torch.tensor(c)))
    assert draws[0].shape == (200, 1, 3, 4)
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    torch.manual_seed(3)
    assert model.sample((5,)).shape == (5, 1, 3, 4)  # no label: drawn uniformly first


def test_conditional_made_learns_class_dependent_bits():
    """Class 0: each bit on with probability 0.1; class 1: 0.9. Full-batch Adam; the class-wise
    log-likelihoods reach the entropies and the samples follow the classes."""
    torch.manual_seed(0)
    model = Autoregressive(labelled((5,), conditional=True), hidden=[16])
    y = torch.arange(2000) % 2
    x = torch.bernoulli(torch.where(y[:, None] == 1, 0.9, 0.1).expand(2000, 5))
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(150):
        opt.zero_grad()
        model.loss(x, y).backward()
        opt.step()
    entropy = 5 * -(0.1 * math.log(0.1) + 0.9 * math.log(0.9))  # nats per example, either class
    with torch.no_grad():
        nll = float(-model.log_prob(x, y).mean())
        s0, s1 = model.sample((2000,), torch.tensor(0)), model.sample((2000,), torch.tensor(1))
    assert nll - entropy < 0.05, (nll, entropy)
    assert abs(float(s0.mean()) - 0.1) < 0.03 and abs(float(s1.mean()) - 0.9) < 0.03


def test_context_errors():
    plain = Autoregressive(labelled((4,), conditional=False), hidden=[8])
    assert not plain.is_conditional
    with pytest.raises(ContextError):
        plain.log_prob(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    model = Autoregressive(labelled((4,)), hidden=[8])
    with pytest.raises(ContextError):
        model.log_prob(torch.zeros(2, 4), torch.tensor([0, K]))
    with pytest.raises(ConfigError, match="class labels only"):
        Autoregressive(DataSpec("test", (4,), "binarized", conditional=True, context_shape=(3,)).to_dict(), hidden=[8])
