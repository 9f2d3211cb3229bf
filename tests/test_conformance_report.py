"""The conformance kit reports what it checked: a check that does not apply is SKIPPED with its
reason (never a silent pass), and every failure says what was expected and what came back."""
from __future__ import annotations

import pytest
import torch

from zoo_core.testing import (CHECKS, ConformanceCase, FamilyConformance, Skipped, check_bound,
                              check_density_integrates, check_log_prob, check_sample_shapes, run_all)


def _gmm_cls():
    from zoo_gmm.model import GMM

    return GMM


def _spec(dims: int) -> dict:
    return {"name": "toy", "event_shape": [dims], "representation": "continuous"}


def _case(cls, dims: int = 2, n_components: int = 2) -> ConformanceCase:
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(64, dims, generator=gen)
    return ConformanceCase(name=f"{cls.family}-{dims}d", family_cls=cls,
                           build=lambda: cls(data=_spec(dims), n_components=n_components), data=data, lr=1e-2,
                           device="cpu")


def _broken_family(kind: str):
    """A GMM with one deliberate defect."""
    GMM = _gmm_cls()

    class Broken(GMM):
        family = f"broken-{kind}"

        if kind == "sample-override":  # bypasses the base class's own shape check
            def sample(self, sample_shape=torch.Size(), context=None):
                out = super().sample(sample_shape, context)
                return torch.cat([out, out[..., :1]], dim=-1)

        if kind == "sample-inner":  # the family's _sample: caught by the base class's contract check
            def _sample(self, sample_shape, context=None):
                out = super()._sample(sample_shape, context)
                return torch.cat([out, out[..., :1]], dim=-1)

        if kind == "nan":
            def _log_prob(self, x, context=None):
                out = super()._log_prob(x, context).clone()
                out[0] = float("nan")
                return out

    return Broken


def test_density_integration_on_data_that_is_not_2d_is_skipped_with_the_reason():
    result = check_density_integrates(_case(_gmm_cls(), dims=3))
    assert isinstance(result, Skipped)
    assert "2-D data" in result.reason and "(3,)" in result.reason


def test_bound_checks_without_a_bound_or_reference_are_skipped_with_the_reason():
    result = check_bound(_case(_gmm_cls()))
    assert isinstance(result, Skipped) and "likelihood 'exact'" in result.reason

    from zoo_vae.model import VAE

    vae = ConformanceCase(name="vae-3d", family_cls=VAE, device="cpu",  # latent_dim 3: no quadrature reference
                          build=lambda: VAE(data=_spec(4), latent_dim=3, hidden=[8]),
                          data=torch.randn(32, 4, generator=torch.Generator().manual_seed(0)))
    result = check_bound(vae)
    assert isinstance(result, Skipped) and "reference_log_prob" in result.reason


def test_family_conformance_reports_a_pytest_skip_not_a_pass():
    case = _case(_gmm_cls(), dims=3)

    class Suite(FamilyConformance):
        def make_case(self):
            return case

    with pytest.raises(pytest.skip.Exception, match="2-D data"):
        Suite().test_density_integrates()
    with pytest.raises(pytest.skip.Exception, match="likelihood 'exact'"):
        Suite().test_bound()
    Suite().test_sample_shapes()  # applies: runs, passes, returns normally


def test_run_all_records_passes_and_skip_reasons():
    report = run_all(_case(_gmm_cls(), dims=3))
    assert set(report) == set(CHECKS)
    assert report["density_integrates"].startswith("skipped: ") and "2-D data" in report["density_integrates"]
    assert report["bound"].startswith("skipped: ")
    assert report["conditional"].startswith("skipped: ") and "unconditional" in report["conditional"]
    assert all(report[name] == "passed" for name in CHECKS
               if name not in ("density_integrates", "bound", "conditional")), report


@pytest.mark.parametrize("kind", ["sample-override", "sample-inner"])
def test_wrong_sample_shape_says_what_was_expected(kind):
    with pytest.raises(AssertionError) as info:
        check_sample_shapes(_case(_broken_family(kind)))
    message = str(info.value)
    assert "sample((8,)) returned" in message and "(8, 3)" in message and "expected (8, 2)" in message, message


def test_non_finite_log_prob_says_how_many_and_what_was_expected():
    with pytest.raises(AssertionError) as info:
        check_log_prob(_case(_broken_family("nan")))
    assert "1 NaN or infinite value(s) of 64" in str(info.value) and "expected finite" in str(info.value)


def test_run_all_names_the_failing_check():
    with pytest.raises(AssertionError, match=r"check 'sample_shapes' failed: sample\(\(8,\)\) returned \(8, 3\); "
                                             r"expected \(8, 2\)"):
        run_all(_case(_broken_family("sample-override")))
