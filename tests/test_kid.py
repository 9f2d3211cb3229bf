"""The kid metric: the estimator against torchmetrics, its unbiasedness in n (where the Fréchet distance
is biased), the metric in the features of frechet, and metrics.json of a trained digits entry."""
import json
import math
from pathlib import Path

import pytest
import torch
from torchmetrics.image.kid import KernelInceptionDistance as TorchmetricsKID
from torchmetrics.image.kid import maximum_mean_discrepancy, poly_kernel, poly_mmd

from zoo_core.data.toy import MoonsDataModule
from zoo_core.metrics import kid as kid_module
from zoo_core.metrics.features import Flatten, model_samples, split_halves
from zoo_core.metrics.frechet import frechet_distance
from zoo_core.metrics.kid import KernelInceptionDistance, kernel_inception_distance, kid_unbiased


def gaussians(n, d, seed, mean=0.0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + mean


class Identity(torch.nn.Module):
    def forward(self, x):
        return x


# ---- the estimator against torchmetrics ---------------------------------------------------------------
@pytest.mark.parametrize("d, shift", [(16, 0.0), (64, 0.3), (3, 2.0)])
def test_unbiased_mmd_matches_torchmetrics_poly_mmd(d, shift):
    x, y = gaussians(200, d, 1), gaussians(200, d, 2, mean=shift)
    ours = kid_unbiased(x, y)
    assert ours == pytest.approx(float(poly_mmd(x, y)), rel=1e-5, abs=1e-12)
    kernels = poly_kernel(x, x), poly_kernel(x, y), poly_kernel(y, y)
    assert ours == pytest.approx(float(maximum_mean_discrepancy(*kernels)), rel=1e-5, abs=1e-12)


@pytest.mark.parametrize("gram_max", [kid_module.GRAM_MAX, 10])  # full kernel matrices, then per-subset kernels
def test_subset_mean_and_std_match_torchmetrics_kernel_inception_distance(monkeypatch, gram_max):
    """The same subsets as torchmetrics (drawn in its order from a generator with the same seed)."""
    monkeypatch.setattr(kid_module, "GRAM_MAX", gram_max)
    x, y = gaussians(300, 32, 3), gaussians(260, 32, 4, mean=0.2)
    reference = TorchmetricsKID(feature=Identity(), subsets=30, subset_size=120)
    reference.update(x, real=True)
    reference.update(y, real=False)
    torch.manual_seed(7)
    mean, std = (float(v) for v in reference.compute())
    ours = kernel_inception_distance(x, y, subsets=30, subset_size=120, seed=7)
    assert ours[0] == pytest.approx(mean, rel=1e-5) and ours[1] == pytest.approx(std, rel=1e-5)
    assert ours[2] == 120 and std > 0


def test_subsets_are_capped_at_n_and_then_are_the_whole_sets():
    x, y = gaussians(150, 8, 5), gaussians(150, 8, 6, mean=0.5)
    mean, std, m = kernel_inception_distance(x, y)  # torchmetrics' 1000 > n: every subset is all 150
    assert m == 150 and std == 0.0 and mean == pytest.approx(float(poly_mmd(x, y)), rel=1e-5)
    assert math.isnan(kernel_inception_distance(x[:1], y[:1])[0])


# ---- unbiasedness in n, where the Fréchet distance is biased -------------------------------------------
D = 8


def _many(n, shift, seeds):
    """(KID values, FD values) over ``seeds`` draws of n points from N(0, I) and n from N(shift, I) in D dims."""
    kids, fds = [], []
    for s in range(seeds):
        x, y = gaussians(n, D, 1000 + 2 * s), gaussians(n, D, 1001 + 2 * s, mean=shift)
        kids.append(kernel_inception_distance(x, y)[0])
        fds.append(frechet_distance(x.float(), y.float(), Flatten(D)))
    return torch.tensor(kids, dtype=torch.float64), torch.tensor(fds, dtype=torch.float64)


def _mean_se(v):
    return float(v.mean()), float(v.std() / math.sqrt(len(v)))


def test_same_distribution_kid_averages_zero_while_fd_is_positive():
    kids, fds = _many(50, 0.0, 300)
    mean, se = _mean_se(kids)
    assert abs(mean) < 3 * se
    assert (kids < 0).any()  # an unbiased estimate of 0 goes both ways
    fd_mean, fd_se = _mean_se(fds)
    assert fd_mean > 20 * fd_se and (fds > 0).all()  # the plug-in FD is biased upwards at small n


def test_shifted_distributions_kid_expectation_does_not_depend_on_n_while_fd_does():
    small_kid, small_fd = _many(50, 0.5, 300)
    large_kid, large_fd = _many(400, 0.5, 60)
    (ks, ks_se), (kl, kl_se) = _mean_se(small_kid), _mean_se(large_kid)
    assert kl > 10 * kl_se and ks > 0  # a real difference is seen at either n
    assert abs(ks - kl) < 3 * math.hypot(ks_se, kl_se)
    (fs, fs_se), (fl, fl_se) = _mean_se(small_fd), _mean_se(large_fd)
    assert fs - fl > 5 * math.hypot(fs_se, fl_se)  # FD at n = 50 is larger on average than at n = 400
    # the true FD of N(0, I) and N(0.5, I) in D dims is |shift|^2 = 0.25 D: n = 400 is near it, n = 50 far off
    assert fl == pytest.approx(0.25 * D, rel=0.15) and fs > 1.3 * 0.25 * D


# ---- the metric --------------------------------------------------------------------------------------
def test_metric_uses_the_features_of_frechet_with_a_two_halves_floor():
    """Moons are compared in data space, as frechet does; the values are the estimator's on those features."""
    from zoo_gmm import GMM

    dm = MoonsDataModule(seed=0)
    model = GMM(dm.spec.to_dict(), n_components=2).eval()
    test = dm.eval_data("test")
    metric = KernelInceptionDistance(quality_samples=300)
    metric.reset()
    for chunk in test.split(128):
        metric.update(model, chunk)
    out = metric.compute(model)
    assert set(out) == {"kid", "kid_std", "kid_data_floor", "kid_num_samples", "kid_subset_size",
                        "kid_feature_extractor"}
    reference, other = split_halves(test.float(), 300)
    samples = model_samples(model, 300)
    assert out["kid_num_samples"] == out["kid_subset_size"] == 300 and out["kid_std"] == 0.0
    assert out["kid"] == pytest.approx(kid_unbiased(reference, samples), rel=1e-9)
    assert out["kid_data_floor"] == pytest.approx(kid_unbiased(reference, other), rel=1e-9)
    assert out["kid_feature_extractor"] == "data space (2-D)"
    assert out["kid"] > 10 * abs(out["kid_data_floor"])  # two Gaussian components do not make moons
    assert "Bińkowski" in metric.describe(model) and "min(1000, n)" in metric.describe(model)


def test_kid_is_registered_with_its_keys(zoo):
    reg = zoo.plugins.metrics["kid"]
    assert list(reg.meta("keys"))[:3] == ["kid", "kid_std", "kid_data_floor"]
    assert zoo.metric("kid").summary.startswith("Kernel inception distance")


def test_training_a_digits_entry_writes_kid_to_metrics_json(tmp_path, zoo):
    """End to end: the runner's evaluation of a digits entry, in the classifier features of frechet."""
    from zoo_core.runner import RunOptions, train

    metrics = train(zoo, "gmm-digits", RunOptions(
        max_steps=3, runs_dir=str(tmp_path), progress=False, accelerator="cpu",
        overrides=["eval.quality_samples=100", "eval.num_samples=4", "eval.metrics=[frechet,kid]"]))
    saved = json.loads((Path(metrics["run_dir"]) / "metrics.json").read_text())
    test = saved["test"]
    for key in ("kid", "kid_std", "kid_data_floor", "fd"):
        assert math.isfinite(test[key]), key
    assert test["kid_num_samples"] == test["fd_num_samples"] == test["kid_subset_size"] == 100
    assert test["kid_feature_extractor"] == test["fd_feature_extractor"]
    assert "classifier" in test["kid_feature_extractor"] and "Bińkowski" in saved["metric_descriptions"]["kid"]
