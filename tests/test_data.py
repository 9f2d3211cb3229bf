"""Toy 2-D datasets and sklearn digits."""
from __future__ import annotations

import math

import pytest
import torch

from zoo_core.data.digits import DigitsDataModule
from zoo_core.data.toy import TOY_DATASETS, CheckerboardDataModule, EightGaussiansDataModule
from zoo_core.errors import DataError

SIZES = dict(n_train=2000, n_val=500, n_test=300)


# ---- toy ----------------------------------------------------------------------------------------
def test_registry_names():
    assert set(TOY_DATASETS) == {"moons", "8gaussians", "checkerboard", "rings", "spirals"}
    for name, cls in TOY_DATASETS.items():
        assert cls.name == name


@pytest.mark.parametrize("name", sorted(TOY_DATASETS))
def test_toy_shapes_and_determinism(name):
    cls = TOY_DATASETS[name]
    a, b, c = cls(seed=3, **SIZES), cls(seed=3, **SIZES), cls(seed=4, **SIZES)
    for split, n in (("train", 2000), ("val", 500), ("test", 300)):
        x = a.raw[split]
        assert x.shape == (n, 2) and x.dtype == torch.float32
        assert torch.isfinite(x).all()
        assert x.abs().max() < 5
        assert torch.equal(x, b.raw[split]), "same seed must give the same data"
        assert not torch.allclose(x, c.raw[split][:n]), "different seeds must give different data"
    # splits come from different streams
    assert not torch.allclose(a.raw["train"][:300], a.raw["val"][:300])
    assert not torch.allclose(a.raw["val"][:300], a.raw["test"])
    spec = a.spec
    assert spec.event_shape == (2,) and spec.representation == "continuous" and spec.num_levels is None
    batch = next(iter(a.train_dataloader()))
    assert batch.shape == (a.batch_size, 2)
    assert torch.equal(a.eval_data("test"), a.raw["test"])  # no noise for continuous data


def test_toy_rejects_image_representation():
    with pytest.raises(DataError, match="continuous"):
        TOY_DATASETS["moons"](representation="binarized")


@pytest.mark.parametrize("cls", [EightGaussiansDataModule, CheckerboardDataModule])
def test_true_density_integrates_to_one(cls):
    h = 0.01
    g = torch.arange(-4 + h / 2, 4, h, dtype=torch.float64)  # midpoints, never on a cell edge
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)  # (G*G, 2)
    logp = cls().true_log_prob(grid)
    assert logp.shape == (len(grid),)
    total = logp.exp().sum().item() * h * h
    assert total == pytest.approx(1.0, rel=0.01)


def test_checkerboard_density_values():
    dm = CheckerboardDataModule()
    x = torch.tensor([[-1.5, -1.5], [-0.5, -1.5], [0.5, 0.5], [1.5, 0.5], [2.5, 0.0], [-2.1, -1.5]])
    expected = [-math.log(8), -math.inf, -math.log(8), -math.inf, -math.inf, -math.inf]
    assert dm.true_log_prob(x).tolist() == pytest.approx(expected)


@pytest.mark.parametrize("cls", [EightGaussiansDataModule, CheckerboardDataModule])
def test_true_entropy_matches_samples(cls):
    dm = cls(n_train=10, n_val=10, n_test=100_000, seed=7)
    h_true = dm.extras()["true_entropy_nats"]
    assert dm.spec.extras["true_entropy_nats"] == h_true
    logp = dm.true_log_prob(dm.raw["test"].double())  # held-out samples
    assert torch.isfinite(logp).all(), "every sample must lie in the support"
    estimate = -logp.mean().item()
    stderr = logp.std().item() / math.sqrt(len(logp))
    assert abs(estimate - h_true) <= 4 * stderr + 1e-6, (estimate, h_true, stderr)


def test_eight_gaussians_entropy_value():
    # well separated components: H is just below log 8 + log(2 pi e sigma^2)
    h = EightGaussiansDataModule().extras()["true_entropy_nats"]
    upper = math.log(8) + math.log(2 * math.pi * math.e * 0.2 ** 2)
    assert upper - 1e-3 < h < upper
    assert CheckerboardDataModule().extras() == {"true_entropy_nats": math.log(8)}
    assert TOY_DATASETS["moons"]().extras() == {}
    assert TOY_DATASETS["moons"]().true_log_prob(torch.zeros(3, 2)) is None


# ---- digits -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_levels():
    from sklearn.datasets import load_digits
    return torch.from_numpy(load_digits().images)  # (1797, 8, 8) float64


def test_digits_splits_and_binarized_range(digits_levels):
    dm = DigitsDataModule(seed=0)
    assert dm.representation == "binarized"
    sizes = {k: len(v) for k, v in dm.raw.items()}
    assert sizes == {"train": 1197, "val": 300, "test": 300}
    for x in dm.raw.values():
        assert x.shape[1:] == (1, 8, 8)
        assert x.min() >= 0 and x.max() <= 1
        assert torch.equal(x * 16, (x * 16).round())  # intensities are k / 16
    # the three splits partition the dataset
    total = sum(float(x.sum()) for x in dm.raw.values()) * 16
    assert total == pytest.approx(float(digits_levels.sum()))
    spec = dm.spec
    assert spec.event_shape == (1, 8, 8) and spec.num_levels == 17 and spec.is_binary


def test_digits_split_depends_on_seed():
    a, b, c = DigitsDataModule(seed=0), DigitsDataModule(seed=0), DigitsDataModule(seed=1)
    assert torch.equal(a.raw["train"], b.raw["train"])
    assert not torch.equal(a.raw["test"], c.raw["test"])


def test_digits_dequantized_levels():
    dm = DigitsDataModule(representation="dequantized", seed=0)
    for x in dm.raw.values():
        assert torch.equal(x, x.round()) and x.min() == 0 and x.max() == 16
    assert dm.raw["train"].max() == 16
    x = dm.eval_data("val")
    assert x.min() >= 0 and x.max() < 1
    assert torch.equal(torch.floor(x * 17), dm.raw["val"])  # noise stays within its level's bin
    assert dm.spec.log_prob_offset == pytest.approx(-64 * math.log(17))
    batch = next(iter(dm.train_dataloader()))
    assert batch.min() >= 0 and batch.max() < 1


def test_digits_binarized_loader_and_fixed_eval_noise():
    dm = DigitsDataModule(batch_size=64, seed=0)
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (64, 1, 8, 8)
    assert set(batch.unique().tolist()) <= {0.0, 1.0}
    test_a = dm.eval_data("test")
    test_b = DigitsDataModule(batch_size=32, seed=0).eval_data("test")
    assert set(test_a.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(test_a, test_b)
    loader = dm.test_dataloader()
    assert torch.equal(torch.cat(list(loader)), test_a)


def test_digits_rejects_continuous():
    with pytest.raises(DataError, match="digits"):
        DigitsDataModule(representation="continuous")


# ---- labels and conditional batches -------------------------------------------------------------------
def test_digits_labels_follow_their_images(digits_levels):
    from sklearn.datasets import load_digits

    target = torch.from_numpy(load_digits().target)
    by_pixels = {}
    for image, y in zip(digits_levels, target):
        by_pixels.setdefault(image.to(torch.uint8).numpy().tobytes(), set()).add(int(y))
    dm = DigitsDataModule(representation="dequantized", seed=2, conditional=True, batch_size=32)
    for split in ("train", "val", "test"):
        labels = dm.eval_labels(split)
        assert labels.dtype == torch.int64 and labels.shape == (len(dm.raw[split]),)
        for x, y in zip(dm.raw[split], labels):
            assert int(y) in by_pixels[x[0].to(torch.uint8).numpy().tobytes()]
    spec = dm.spec
    assert spec.num_classes == 10 and spec.conditional and spec.context_shape == ()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 8, 8) and y.shape == (32,) and y.dtype == torch.int64
    xt, yt = torch.cat([b[0] for b in dm.test_dataloader()]), torch.cat([b[1] for b in dm.test_dataloader()])
    assert torch.equal(xt, dm.eval_data("test")) and torch.equal(yt, dm.eval_labels("test"))
    assert isinstance(dm.init_batch(), torch.Tensor)


def test_conditional_batches_are_the_unconditional_batches_plus_labels():
    """Same x (noise included) with and without labels, and the labels of the same examples, also
    after resuming mid-epoch."""
    plain = DigitsDataModule(seed=5, batch_size=100)
    cond = DigitsDataModule(seed=5, batch_size=100, conditional=True)
    assert not plain.spec.conditional and plain.spec.num_classes == 10  # labels exist, unused
    plain_loader, cond_loader = plain.train_dataloader(), cond.train_dataloader()
    for loader in (plain_loader, cond_loader):
        loader.load_state_dict({"epoch": 2, "batches_done": 3})
    batches = list(zip(plain_loader, cond_loader))
    assert len(batches) == 12 - 3
    order = plain_loader.sampler.indices(2)
    for b, (x, (xc, yc)) in enumerate(batches, start=3):
        assert torch.equal(x, xc)
        assert torch.equal(yc, cond.eval_labels("train")[order[b * 100:(b + 1) * 100]])


def test_unlabelled_dataset_refuses_conditional():
    with pytest.raises(DataError, match=r"dataset 'moons' has no labels, so it cannot be conditional") as info:
        TOY_DATASETS["moons"](conditional=True)
    assert "\n" not in str(info.value)
    moons = TOY_DATASETS["moons"](**SIZES)
    assert moons.spec.num_classes is None
    with pytest.raises(DataError, match="dataset 'moons' has no labels"):
        moons.eval_labels("test")


def test_registry_passes_conditional_to_the_datamodule(tmp_path):
    from zoo_core.api import default_zoo
    from zoo_core.runner import build_datamodule

    path = tmp_path / "r.yaml"
    path.write_text("c:\n  family: gmm\n  data: {name: digits, representation: dequantized, conditional: true}\n"
                    "m:\n  family: gmm\n  data: {name: moons, conditional: true}\n"
                    "u:\n  family: gmm\n  data: {name: array, path: nowhere.npy, label_column: 2}\n")
    zoo = default_zoo().with_registry([str(path)])
    registry = zoo.registry
    config = registry.resolve("c")
    assert config["data"]["conditional"] is True
    assert build_datamodule(zoo, config).spec.conditional
    assert registry.resolve("u")["data"]["label_column"] == 2
    with pytest.raises(DataError, match="'moons' has no labels"):
        build_datamodule(zoo, registry.resolve("m"))
