"""Metrics of conditional models: generative-classifier accuracy and conditional sample accuracy."""
import math

import pytest
import torch

from zoo_core.builtin import register_metrics
from zoo_core.metrics.classifier import _labelled_splits
from zoo_core.metrics.conditional import ConditionalSampleAccuracy, GenerativeClassifierAccuracy
from zoo_core.metrics.nll import NLL
from zoo_gan import GAN
from zoo_gmm import GMM

TOY = {"name": "toy", "event_shape": [2], "representation": "continuous"}
TOY_COND = {**TOY, "num_classes": 3, "conditional": True}
DIGITS_COND = {"name": "digits", "event_shape": [1, 8, 8], "representation": "dequantized", "num_levels": 17,
               "num_classes": 10, "conditional": True}


def run(metric, model, batches):
    metric.reset()
    for x, y in batches:
        metric.update(model, x, context=y)
    return metric.compute(model)


def toy_labelled(n=900, seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.multinomial(torch.tensor([1.0, 2.0, 3.0]), n, replacement=True, generator=gen)
    centres = torch.tensor([[-4.0, 0.0], [0.0, 4.0], [4.0, 0.0]])
    return centres[y] + 0.6 * torch.randn(n, 2, generator=gen), y


def test_generative_classifier_on_separated_classes_is_exact_bayes():
    x, y = toy_labelled()
    model = GMM(TOY_COND, n_components=1, fit="em")
    model.fit_em(x, context=y)
    metric = GenerativeClassifierAccuracy()
    assert metric.applies_to(model)
    out = run(metric, model, zip(x.split(128), y.split(128)))
    expected = (model.class_log_prob(x) + model.class_prior.log_probs()).argmax(1)
    assert out["generative_classifier_accuracy"] == pytest.approx(float((expected == y).double().mean()))
    assert out["generative_classifier_accuracy"] > 0.99 and out["generative_classifier_examples"] == len(x)
    assert "exact log-likelihood" in metric.describe(model) and "class prior" in metric.describe(model)


def test_generative_classifier_with_identical_classes_picks_the_prior_mode():
    """p(x | y) the same for every y: the Bayes classifier answers argmax p(y), the most frequent class (2)."""
    x, y = toy_labelled()
    model = GMM(TOY_COND, n_components=1, fit="em")
    model.fit_em(x, context=y)
    with torch.no_grad():
        model.means.copy_(model.means[:1].expand(3, 2))
        model.lower.copy_(model.lower[:1].expand(3, 2, 2))
        model.log_diag.copy_(model.log_diag[:1].expand(3, 2))
    out = run(GenerativeClassifierAccuracy(), model, [(x, y)])
    assert out["generative_classifier_accuracy"] == pytest.approx(float((y == 2).double().mean()))


def test_conditional_metrics_apply_only_to_conditional_models():
    plain, gan = GMM(TOY, n_components=2), GAN(TOY_COND, latent_dim=2, g_hidden=[8], d_hidden=[8])
    assert not GenerativeClassifierAccuracy().applies_to(plain)
    assert not GenerativeClassifierAccuracy().applies_to(gan)  # no likelihood
    assert not ConditionalSampleAccuracy().applies_to(GMM(TOY_COND, n_components=2))  # no digit classifier
    assert not ConditionalSampleAccuracy().applies_to(GMM({**DIGITS_COND, "conditional": False}, n_components=1))
    bound = GMM(TOY_COND, n_components=1)
    bound.likelihood = "bound"
    assert "the bound classifies" in GenerativeClassifierAccuracy().describe(bound)
    registered = {}
    register_metrics(lambda name, ref: registered.setdefault(name, ref))
    assert registered["generative_classifier"].load() is GenerativeClassifierAccuracy  # lazy registrations
    assert registered["conditional_samples"].load() is ConditionalSampleAccuracy


def test_nll_says_conditional():
    assert "conditional NLL -log p(x | y)" in NLL().describe(GMM(TOY_COND, n_components=1))
    assert "conditional" not in NLL().describe(GMM(TOY, n_components=1))


def digits(split_seed=0):
    """Dequantised digits (N, 1, 8, 8) and labels of the feature classifier's own train/test split."""
    train, train_y, test, test_y, levels = _labelled_splits("digits", None)
    gen = torch.Generator().manual_seed(split_seed)
    deq = lambda k: (k.float() + torch.rand(k.shape, generator=gen)) / levels  # noqa: E731
    return deq(train), train_y, deq(test), test_y


def test_conditional_sample_accuracy_of_a_class_conditional_gmm_on_digits():
    """One full-covariance Gaussian per digit: its samples of class k are mostly read as k; the same
    model with its classes rotated (class k drawing class k+1's Gaussian) scores near zero."""
    x, y, test, test_y = digits()
    model = GMM(DIGITS_COND, n_components=1, covariance="full", reg_covar=1e-2, fit="em")
    model.fit_em(x, context=y)
    metric = ConditionalSampleAccuracy(quality_samples=1000)
    assert metric.applies_to(model)
    good = run(metric, model, zip(test.split(100), test_y.split(100)))
    assert good["cond_samples_per_class"] == 100
    assert good["cond_sample_accuracy"] > 0.8, good
    assert math.isfinite(good["cond_fd_class_mean"])

    rotated = GMM(DIGITS_COND, n_components=1, covariance="full", reg_covar=1e-2, fit="em")
    rotated.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in (rotated.means, rotated.lower, rotated.log_diag):
            p.copy_(p.roll(-1, dims=0))  # class k now holds class k+1's Gaussian
    bad = run(metric, rotated, zip(test.split(100), test_y.split(100)))
    assert bad["cond_sample_accuracy"] < 0.2, bad
    assert bad["cond_fd_class_mean"] > good["cond_fd_class_mean"]
    classifier = run(GenerativeClassifierAccuracy(), model, [(test, test_y)])
    assert classifier["generative_classifier_accuracy"] > 0.85, classifier


class NoisyBound(torch.nn.Module):
    """A stand-in for a stochastic bound: log p(x | c) = -|x - c| minus N(0, 5^2) estimator noise drawn
    from the global RNG, like a Monte Carlo bound; classes 0..2 on the real line."""
    num_classes, likelihood, is_conditional = 3, "bound", True
    device = torch.device("cpu")
    data_spec = type("Spec", (), {"context_shape": ()})()

    def log_prob(self, x, context):
        return -(x[:, 0] - context.double()).abs() - 5.0 * torch.randn(len(x), dtype=torch.float64)


def test_generative_classifier_pairs_the_classes_of_a_stochastic_bound():
    """With the same random draws for every class the estimator noise cancels in argmax_y: the
    noisy bound classifies as well as the noiseless score (here perfectly); with independent
    draws per class (the noise 5x the signal) it would be near chance."""
    torch.manual_seed(0)
    y = torch.randint(3, (600,))
    x = y.double().unsqueeze(1) + 0.1 * torch.randn(600, 1, dtype=torch.float64)  # (600, 1) near its class
    out = run(GenerativeClassifierAccuracy(), NoisyBound(), zip(x.split(100), y.split(100)))
    assert out["generative_classifier_accuracy"] == 1.0
    model = NoisyBound()
    independent = torch.stack([model.log_prob(x, torch.full_like(y, c)) for c in range(3)], 1).argmax(1)
    assert float((independent == y).double().mean()) < 0.6  # what unpaired estimates would give
