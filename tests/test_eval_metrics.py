"""The evaluation metrics against known answers: Fréchet distance, precision/recall (and density/coverage),
reconstruction error, the NLL gap to the true entropy, the feature classifiers and their cache."""
import json
import math
import re
from pathlib import Path

import pytest
import torch

from conftest import SHARED_MNIST, run_zoo
from zoo_core.data.digits import DigitsDataModule
from zoo_core.data.toy import EightGaussiansDataModule, MoonsDataModule
from zoo_core.metrics import classifier as clf
from zoo_core.metrics.features import Flatten, HeldOut, model_samples, split_halves
from zoo_core.metrics.frechet import FrechetDistance, frechet_distance
from zoo_core.metrics.nll import NLL
from zoo_core.metrics.precision_recall import K, PrecisionRecall, knn_radii, precision_recall
from zoo_core.metrics.reconstruction import Reconstruction
from zoo_core.model import GenerativeModel


def gaussians(n, d, seed, mean=0.0, std=1.0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * std + mean


def run_metric(metric, model, data, batch=128):
    metric.reset()
    for chunk in data.split(batch):
        metric.update(model, chunk)
    return metric.compute(model)


class Replay(GenerativeModel):
    """A 'model' whose samples are rows of a fixed tensor (drawn with replacement, seeded by torch)."""

    family = "replay"
    likelihood = "none"

    def __init__(self, data, pool):
        super().__init__(data)
        self.register_buffer("pool", pool)

    def _log_prob(self, x, context=None):
        raise self.no_likelihood()

    def loss(self, x, context=None):
        return torch.zeros(())

    def _sample(self, sample_shape, context=None):
        n = int(torch.tensor(sample_shape).prod()) if len(sample_shape) else 1
        return self.pool[torch.randint(len(self.pool), (n,))].reshape(*sample_shape, *self.event_shape)


# ---- precision / recall / density / coverage ----------------------------------------------------
def test_knn_radii_is_the_kth_neighbour_excluding_the_point_itself():
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0], [10.0]], dtype=torch.float64)
    # neighbours of 0: 1, 3, 6 -> 3rd at 6; of 10: 6, 3, 1 -> 9
    assert knn_radii(x, 3).tolist() == [6.0, 5.0, 3.0, 5.0, 9.0]
    assert knn_radii(x, 1).tolist() == [1.0, 1.0, 2.0, 3.0, 4.0]


def test_identical_sets_have_precision_recall_and_coverage_one():
    x = gaussians(500, 5, 0)
    values = precision_recall(x, x.clone())
    assert values["precision"] == values["recall"] == values["coverage"] == 1.0


def test_far_disjoint_sets_score_zero():
    x, y = gaussians(400, 3, 1), gaussians(400, 3, 2, mean=100.0)
    assert precision_recall(x, y) == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_mode_collapse_keeps_precision_and_halves_recall():
    """Real data: two far modes; the model covers one of them -> precision ~ 1, recall and coverage ~ 1/2."""
    real = torch.cat([gaussians(1000, 2, 3, mean=-20.0), gaussians(1000, 2, 4, mean=20.0)])
    collapsed = gaussians(2000, 2, 5, mean=20.0)
    values = precision_recall(real, collapsed)
    assert values["precision"] > 0.95
    assert 0.45 < values["recall"] < 0.52 and 0.4 < values["coverage"] < 0.5


def test_density_and_coverage_expectations_for_the_same_distribution():
    """Naeem et al. 2020: E[density] = 1 and E[coverage] = 1 - prod_{i=1..k} (N - i) / (M + N - i) when the
    samples come from the data distribution (k = 3, M = N = 1000: 0.8751)."""
    n, runs = 1000, 8
    density, coverage = [], []
    for seed in range(runs):
        values = precision_recall(gaussians(n, 2, 10 + seed), gaussians(n, 2, 100 + seed))
        density.append(values["density"])
        coverage.append(values["coverage"])
    expected_coverage = 1 - math.prod((n - i) / (2 * n - i) for i in range(1, K + 1))
    assert sum(coverage) / runs == pytest.approx(expected_coverage, abs=0.012)
    assert sum(density) / runs == pytest.approx(1.0, abs=0.03)


# ---- Fréchet distance ----------------------------------------------------------------------------
def test_frechet_distance_of_gaussians_matches_the_closed_form():
    """FD(N(m1, S1), N(m2, S2)) = |m1 - m2|^2 + sum (sqrt s1 - sqrt s2)^2 for diagonal covariances."""
    n = 50000
    x = gaussians(n, 2, 20) * torch.tensor([1.0, 2.0], dtype=torch.float64)
    y = gaussians(n, 2, 21) * torch.tensor([3.0, 0.5], dtype=torch.float64) + torch.tensor([1.0, -2.0],
                                                                                              dtype=torch.float64)
    expected = (1 + 4) + (1 - 3) ** 2 + (2 - 0.5) ** 2
    assert frechet_distance(x.float(), y.float(), Flatten(2)) == pytest.approx(expected, rel=0.02)
    assert frechet_distance(x.float(), x.float(), Flatten(2)) == pytest.approx(0.0, abs=1e-3)


def test_sample_metrics_on_2d_data_are_in_data_space():
    """A model that replays fresh data scores like the data floor; one shifted by (3, 0) has FD ~ 9."""
    dm = MoonsDataModule(seed=0)
    spec, test = dm.spec.to_dict(), dm.eval_data("test")
    good, shifted = Replay(spec, dm.raw["train"]), Replay(spec, dm.raw["train"] + torch.tensor([3.0, 0.0]))
    fd, pr = FrechetDistance(quality_samples=1000), PrecisionRecall(quality_samples=1000)
    g, s = run_metric(fd, good, test), run_metric(fd, shifted, test)
    assert g["fd_num_samples"] == 1000 and g["fd_feature_extractor"] == "data space (2-D)"
    assert g["fd"] < 0.05 and g["fd_data_floor"] < 0.05
    assert s["fd"] == pytest.approx(9.0, rel=0.05)
    p = run_metric(pr, good, test)
    assert p["precision"] > 0.9 and p["recall"] > 0.9 and abs(p["precision"] - p["precision_data_floor"]) < 0.05
    assert run_metric(pr, shifted, test)["precision"] < 0.2
    assert p["pr_space"] == "data space (2-D)" and p["pr_k"] == 3


def test_samples_are_drawn_once_per_model_state_and_redrawn_after_a_change():
    dm = MoonsDataModule(seed=0)
    model = Replay(dm.spec.to_dict(), dm.raw["train"][:100].clone())
    first = model_samples(model, 50)
    assert model_samples(model, 50) is first
    with torch.no_grad():
        model.pool.add_(1.0)
    assert not torch.equal(model_samples(model, 50), first)


def test_held_out_halves_are_a_random_subset_of_the_whole_split():
    held = HeldOut()
    data = torch.arange(2000.0).reshape(1000, 2)
    for chunk in data.split(300):
        held.update(chunk)
    assert torch.equal(held.gathered(), data)
    reference, other = split_halves(data, 100)
    rows = torch.cat([reference, other])[:, 0] / 2  # (200,) row numbers
    assert len(set(rows.tolist())) == 200 and rows.max() > 800 and rows.min() < 200


# ---- the classifiers and their cache --------------------------------------------------------------
def _digits_model(representation):
    dm = DigitsDataModule(representation=representation, seed=0)
    return dm, Replay(dm.spec.to_dict(), dm.eval_data("train"))


@pytest.fixture
def cheap_digits_recipe(monkeypatch, tmp_path):
    """A private cache and a five-epoch digits recipe: for the cache mechanics, not the accuracy."""
    monkeypatch.setenv(clf.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setitem(clf.RECIPES, "digits", clf.Recipe(arch="mlp", features=16, hidden=32, epochs=5,
                                                          batch_size=64, lr=2e-3, weight_decay=0.0))
    monkeypatch.setattr(clf, "_LOADED", {})
    return tmp_path / "cache"


def test_classifier_is_cached_atomically_and_reloaded_with_weights_only(cheap_digits_recipe, monkeypatch):
    first = clf.get_feature_extractor("digits", "binarized")
    files = sorted(p.name for p in (cheap_digits_recipe / "classifiers").iterdir())
    stem = files[0].rsplit(".", 1)[0]
    assert re.fullmatch(r"digits-binarized-[0-9a-f]{12}", stem), files
    assert files == [f"{stem}.json", f"{stem}.lock", f"{stem}.pt"]  # no temporary files left behind
    meta = json.loads((cheap_digits_recipe / "classifiers" / f"{stem}.json").read_text())
    assert meta["test_accuracy"] == first.accuracy and meta["num_test"] == 300 and meta["recipe"]["epochs"] == 5
    torch.load(cheap_digits_recipe / "classifiers" / f"{stem}.pt", weights_only=True)

    # a fresh process (empty memo) loads the file instead of training again
    monkeypatch.setattr(clf, "_LOADED", {})
    monkeypatch.setattr(clf, "train_classifier", lambda *a, **k: pytest.fail("retrained a cached classifier"))
    again = clf.get_feature_extractor("digits", "binarized")
    x = DigitsDataModule(representation="binarized", seed=0).eval_data("test")[:50]
    assert torch.equal(first(x), again(x)) and again.num_features == 16


def test_classifier_training_is_deterministic_and_a_corrupt_cache_is_retrained(cheap_digits_recipe, monkeypatch):
    first = clf.get_feature_extractor("digits", "dequantized")
    path = clf.classifier_path("digits", "dequantized")
    path.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(clf, "_LOADED", {})
    again = clf.get_feature_extractor("digits", "dequantized")
    x = DigitsDataModule(representation="dequantized", seed=0).eval_data("test")[:50]
    assert torch.equal(first(x), again(x)) and first.accuracy == again.accuracy


def test_classifier_trains_inside_an_evaluation_under_inference_mode_and_bf16_autocast(cheap_digits_recipe):
    """The first evaluation that needs a classifier trains it inside Lightning's test loop: inference
    mode, and autocast under bf16-mixed; training must not depend on the caller's modes."""
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        inside = clf.get_feature_extractor("digits", "binarized")
    clf._LOADED.clear()
    clf.classifier_path("digits", "binarized").unlink()
    outside = clf.get_feature_extractor("digits", "binarized")
    x = DigitsDataModule(representation="binarized", seed=0).eval_data("test")[:50]
    assert torch.equal(inside(x), outside(x)) and inside.accuracy == outside.accuracy


def test_recipe_changes_change_the_cache_file(cheap_digits_recipe):
    before = clf.classifier_path("digits", "binarized")
    clf.RECIPES["digits"] = clf.Recipe(arch="mlp", features=16, hidden=32, epochs=6, batch_size=64, lr=2e-3,
                                       weight_decay=0.0)
    assert clf.classifier_path("digits", "binarized") != before
    assert clf.classifier_path("digits", "dequantized") != before


def test_an_unusable_cache_is_reported_not_fatal(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(clf.CACHE_ENV, str(blocker / "cache"))  # a directory inside a file cannot be made
    monkeypatch.setattr(clf, "_LOADED", {})
    dm, replay = _digits_model("binarized")
    out = run_metric(FrechetDistance(quality_samples=50), replay, dm.eval_data("test"))
    assert out["fd_feature_extractor"].startswith("not available: cannot create the classifier cache")
    assert "ZOO_CACHE_DIR" in out["fd_feature_extractor"] and "fd" not in out
    assert "not available" in PrecisionRecall().describe(replay)


@pytest.mark.parametrize("representation, minimum", [("binarized", 0.90), ("dequantized", 0.95)])
def test_digits_classifier_accuracy(representation, minimum):
    """The real recipe (session cache): ~93% on single binarisations of 8x8 digits, ~98% dequantised."""
    extractor = clf.get_feature_extractor("digits", representation)
    assert extractor.accuracy >= minimum
    assert f"test accuracy {extractor.accuracy:.2%}" in extractor.describe()


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="needs the shared MNIST files")
def test_mnist_classifier_accuracy():
    """Trained once per cache (about a minute of one CPU core), then loaded."""
    extractor = clf.get_feature_extractor("mnist", "binarized", SHARED_MNIST.parent)
    assert extractor.accuracy >= 0.98 and extractor.num_features == 128


def _rectangles(n, size, gen):
    """(n, 1, size, size) images of one filled axis-aligned rectangle each: ink, but no digit."""
    out = torch.zeros(n, 1, size, size)
    for image in out:
        top, left = torch.randint(0, size - 3, (2,), generator=gen).tolist()
        height, width = torch.randint(2, size // 2 + 1, (2,), generator=gen).tolist()
        image[0, top:top + height, left:left + width] = 1.0
    return out


@pytest.mark.parametrize("representation", ["binarized", "dequantized"])
def test_digits_frechet_and_precision_recall_separate_digits_from_non_digits(representation):
    """Replaying training digits scores near the held-out floor; noise and rectangles score far worse."""
    dm, replay = _digits_model(representation)
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(500, 1, 8, 8, generator=gen)
    noise = Replay(dm.spec.to_dict(), noise.round() if representation == "binarized" else noise)
    rectangles = Replay(dm.spec.to_dict(), _rectangles(500, 8, gen))
    test = dm.eval_data("test")
    fd, pr = FrechetDistance(quality_samples=2000), PrecisionRecall(quality_samples=2000)
    good = run_metric(fd, replay, test)
    assert good["fd_num_samples"] == 150  # half of the 300 test digits
    assert good["fd"] < 2 * good["fd_data_floor"] and "test accuracy" in good["fd_feature_extractor"]
    p_good = run_metric(pr, replay, test)
    assert p_good["precision"] > 0.8 and p_good["recall"] > 0.8 and p_good["density"] > 0.8
    for bad_model in (noise, rectangles):
        assert run_metric(fd, bad_model, test)["fd"] > 5 * good["fd_data_floor"]
        p_bad = run_metric(pr, bad_model, test)
        assert p_bad["precision"] < 0.6 and p_bad["recall"] < 0.2 and p_bad["coverage"] < 0.3
    assert run_metric(pr, noise, test)["precision"] < 0.05  # the classifier's junk class
    assert "classifier" in fd.describe(replay) and "test accuracy" in pr.describe(replay)


# ---- reconstruction ------------------------------------------------------------------------------
def _entry_model(entry, **overrides):
    from zoo_core.api import default_zoo
    from zoo_core.runner import build_datamodule, build_model

    zoo = default_zoo()
    config = zoo.resolve(entry, [f"{k}={v}" for k, v in overrides.items()])
    dm = build_datamodule(zoo, config)
    torch.manual_seed(0)
    return dm, build_model(zoo, config, dm).eval()


def test_reconstruction_of_the_autoencoder_equals_its_own_bernoulli_loss():
    dm, model = _entry_model("autoencoder-digits")
    x = dm.eval_data("test")
    out = run_metric(Reconstruction(), model, x, batch=64)
    with torch.no_grad():
        expected_bce = model.reconstruction_error(x).double().mean()
        expected_mse = ((torch.sigmoid(model.decode(model.encode(x))) - x.reshape(len(x), -1)) ** 2).mean()
    assert out["reconstruction_bce_nats"] == pytest.approx(float(expected_bce), rel=1e-5)
    assert out["reconstruction_mse"] == pytest.approx(float(expected_mse), rel=1e-5)
    assert out["reconstruction_num_examples"] == 300 and out["reconstruction_bce_nats_stderr"] > 0


def test_reconstruction_of_the_vae_uses_the_encoder_mean_and_a_perfect_reconstruction_scores_zero():
    dm, model = _entry_model("vae-digits")
    x = dm.eval_data("test")[:100]
    with torch.no_grad():
        mean, _ = model.encode(x.reshape(100, -1))
        assert torch.allclose(model.reconstruct(x), torch.sigmoid(model.decode(mean)[0]).reshape(x.shape))
    metric = Reconstruction()
    assert metric.applies_to(model) and "encoder mean" in metric.describe(model)
    model.reconstruct = lambda batch: batch.clone()  # a perfect reconstruction
    out = run_metric(metric, model, x)
    assert out["reconstruction_mse"] == 0.0 and out["reconstruction_bce_nats"] < 64 * 1.1e-7


def test_reconstruction_applies_only_to_families_that_reconstruct(zoo):
    families = zoo.plugins.families
    applies = {name for name, reg in families.items()
               if Reconstruction().applies_to(reg.obj.__new__(reg.obj))}
    assert {"vae", "autoencoder"} <= applies and not applies & {"gmm", "gan", "flow", "diffusion"}


# ---- NLL gap to the true entropy -------------------------------------------------------------------
def _gmm_on_8gaussians(std):
    from zoo_gmm import GMM

    dm = EightGaussiansDataModule(seed=0)
    model = GMM(dm.spec.to_dict(), n_components=8, covariance="full")
    centres = torch.as_tensor(EightGaussiansDataModule.centers(), dtype=torch.float32)
    model.set_mixture(torch.full((8,), 1 / 8), centres, torch.eye(2).expand(8, 2, 2) * std ** 2)
    return dm, model.eval()


def test_nll_gap_of_the_true_mixture_is_zero_within_the_standard_error():
    dm, model = _gmm_on_8gaussians(EightGaussiansDataModule.std)
    with torch.no_grad():
        out = run_metric(NLL(), model, dm.eval_data("test"), batch=1000)
    assert out["true_entropy_nats"] == pytest.approx(1.698061, abs=1e-6)
    assert abs(out["nll_gap_nats"]) < 3 * out["nll_nats_stderr"] and out["nll_nats_stderr"] < 0.03
    assert "true entropy H(p) = 1.698061" in NLL().describe(model)


def test_nll_gap_of_a_too_wide_mixture_is_its_kl_divergence():
    """Same centres, std 0.3 instead of 0.2: the components barely overlap, so KL(p || q) is the
    Gaussian one, log(s_q^2 / s_p^2) + s_p^2 / s_q^2 - 1 = 0.2554 nats in 2-D."""
    dm, model = _gmm_on_8gaussians(0.3)
    with torch.no_grad():
        out = run_metric(NLL(), model, dm.eval_data("test"), batch=1000)
    kl = math.log(0.3 ** 2 / 0.2 ** 2) + 0.2 ** 2 / 0.3 ** 2 - 1
    assert out["nll_gap_nats"] == pytest.approx(kl, abs=3 * out["nll_nats_stderr"] + 0.01)


def test_no_gap_without_a_known_entropy():
    from zoo_gmm import GMM

    model = GMM(MoonsDataModule(seed=0).spec.to_dict(), n_components=2)
    out = run_metric(NLL(), model.eval(), MoonsDataModule(seed=0).eval_data("test")[:200])
    assert "nll_gap_nats" not in out and "nll_gap" not in NLL().describe(model)


# ---- descriptions, help and the runner ---------------------------------------------------------------
def test_eval_help_lists_every_registered_metric_with_its_summary(capsys, zoo):
    from zoo_core.cli import main

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, reg in zoo.plugins.metrics.items():
        assert name in text and " ".join(reg.obj.summary.split()[:6]) in text, name


def test_every_builtin_metric_has_a_summary(zoo):
    for name in ("nll", "sample_quality", "frechet", "precision_recall", "reconstruction"):
        assert zoo.metric(name).summary, name


def test_training_on_digits_reports_every_default_metric(tmp_path, zoo):
    from zoo_core.runner import RunOptions, train

    metrics = train(zoo, "autoencoder-digits", RunOptions(
        max_steps=5, runs_dir=str(tmp_path), progress=False, accelerator="cpu",
        overrides=["eval.quality_samples=100", "eval.num_samples=4"]))
    test = metrics["test"]
    assert set(metrics["metric_descriptions"]) == {"sample_quality", "frechet", "kid", "precision_recall", "reconstruction"}
    for key in ("fd", "fd_data_floor", "precision", "recall", "reconstruction_bce_nats", "reconstruction_mse"):
        assert math.isfinite(test[key]), key
    assert test["fd_num_samples"] == test["pr_num_samples"] == 100
    saved = json.loads((Path(metrics["run_dir"]) / "metrics.json").read_text())
    assert saved["metric_descriptions"]["frechet"] == metrics["metric_descriptions"]["frechet"]
    assert "test accuracy" in saved["metric_descriptions"]["frechet"]


def test_two_process_eval_gives_the_single_process_sample_metrics(tmp_path, zoo):
    """DDP: held-out data gathered in split order, seeded samples, rank 0's classifier -> same values."""
    from zoo_core.runner import RunOptions, train

    single = train(zoo, "gmm-digits", RunOptions(
        max_steps=3, runs_dir=str(tmp_path), progress=False, accelerator="cpu",
        overrides=["eval.quality_samples=100", "eval.num_samples=4", "eval.metrics=[frechet,precision_recall]"]))["test"]
    single_run = tmp_path / "gmm-digits" / "version_0"
    two = run_zoo("eval", single_run, "--accelerator", "cpu", "--devices", "2", "--no-progress")
    assert two.returncode == 0, two.stderr[-2000:]
    double = json.loads(two.stdout[two.stdout.index("{"):])["test"]
    assert (single_run / "eval_test.json").is_file()
    for key in ("fd", "fd_data_floor", "precision", "recall", "density", "coverage"):
        assert double[key] == pytest.approx(single[key], rel=1e-6, abs=1e-9), key
