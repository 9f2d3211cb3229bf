"""The zoo's conformance kit run on the 'independent' family, plus checks of its closed-form fit.

Run with the plugin installed (``pip install ./examples/zoo-plugin-example``)::

    python -m pytest examples/zoo-plugin-example/tests -q
"""
import functools

import pytest
import torch

import zoo_independent
from zoo_core.api import default_zoo
from zoo_core.testing import ConformanceCase, FamilyConformance, case_from_config
from zoo_core.zoo import Zoo
from zoo_independent import Independent


@functools.lru_cache(maxsize=None)
def _zoo() -> Zoo:
    """The installed plugins, this one included; when it is only importable (not installed), a Zoo
    with it registered explicitly."""
    zoo = default_zoo()
    if "independent" in zoo.plugins.families:
        return zoo
    return Zoo(extra_plugins={"independent": zoo_independent})


@functools.lru_cache(maxsize=None)
def _cached_case(entry: str) -> ConformanceCase:
    zoo = _zoo()
    return case_from_config(zoo, zoo.resolve(entry))


class _IndependentConformance(FamilyConformance):
    entry = ""

    def make_case(self) -> ConformanceCase:
        return _cached_case(self.entry)

    def test_init_is_a_stationary_point(self):
        # The closed-form fit is where gradient descent on the loss would stop.
        case = self._case()
        model = Independent(data=case.model().hparams.data, prior_count=0.0)  # the plain MLE
        model.init_from_data(case.data)
        if model.binary:  # sigmoid(logit) = frequency of ones (constant pixels: logits clipped at +-20)
            mean = case.data.mean(0)
            varying = (mean > 0) & (mean < 1)
            torch.testing.assert_close(torch.sigmoid(model.logits)[varying], mean[varying], rtol=0, atol=1e-5)
        model.loss(case.data).backward()
        for name, p in model.named_parameters():
            assert float(p.grad.abs().max()) < 1e-4, f"{name}: gradient {float(p.grad.abs().max()):.2e} at the MLE"


class TestIndependentMoons(_IndependentConformance):
    """Gaussian marginals on 2-D data (the kit also integrates the density over a grid)."""

    entry = "independent-moons"

    def test_fit_matches_moments(self):
        case = self._case()
        model = case.model()
        torch.testing.assert_close(model.mean.detach(), case.data.mean(0), rtol=0, atol=1e-5)
        torch.testing.assert_close(model.log_std.exp().detach(), case.data.std(0, unbiased=False), rtol=1e-5, atol=1e-6)
        # exact likelihood: equals torch.distributions' independent Normal
        ref = torch.distributions.Independent(torch.distributions.Normal(model.mean, model.log_std.exp()), 1)
        with torch.no_grad():
            torch.testing.assert_close(model.log_prob(case.data), ref.log_prob(case.data))
            torch.testing.assert_close(model.entropy(), ref.entropy())


class TestIndependentDigits(_IndependentConformance):
    """Bernoulli marginals on binarised 8x8 digits."""

    entry = "independent-digits"

    def test_smoothed_fit(self):
        case = self._case()
        model = case.model()
        n, ones, a = len(case.data), case.data.sum(0), model.prior_count
        torch.testing.assert_close(torch.sigmoid(model.logits).detach(), (ones + a) / (n + 2 * a), rtol=1e-5, atol=1e-6)
        ref = torch.distributions.Independent(torch.distributions.Bernoulli(logits=model.logits), 3)
        with torch.no_grad():
            torch.testing.assert_close(model.log_prob(case.data), ref.log_prob(case.data))
            torch.testing.assert_close(model.entropy(), ref.entropy())

    def test_held_out_likelihood_is_finite(self):
        # the pseudo-counts keep pixels that never fire in the fitted batch from zeroing held-out data
        case = self._case()
        model = case.model().eval()
        all_on = torch.ones_like(case.data[:4])  # every pixel on: impossible under the plain MLE
        with torch.no_grad():
            assert torch.isfinite(model.log_prob(all_on)).all()


@pytest.mark.parametrize("bad", [{"prior_count": -1.0}, {"min_std": 0.0}])
def test_rejects_bad_settings(bad):
    case = _cached_case("independent-moons")
    with pytest.raises(ValueError):
        Independent(data=case.model().hparams.data, **bad)
