"""The user's own data without a plugin: ``array`` files (.npy, .npz, .pt, .csv, in-memory arrays)
and ``image_folder`` directories of PNG/JPEG images; labels, splits, one-line errors, end to end."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from zoo_core.data.array import ArrayDataModule
from zoo_core.data.image_folder import ImageFolderDataModule
from zoo_core.data.user import split_indices
from zoo_core.errors import ConfigError, DataError, ZooError

SPLITS = ("train", "val", "test")


def _points(n=200, seed=0) -> np.ndarray:
    """(n, 3): column 0 is the example's index (to trace it through the split), then 2-D points."""
    rng = np.random.default_rng(seed)
    return np.concatenate([np.arange(n, dtype=np.float64)[:, None], rng.normal(size=(n, 2))], axis=1)


def _whole(dm) -> torch.Tensor:
    """The three raw splits put back in the original order, by the index in column 0."""
    x = torch.cat([dm.raw[s] for s in SPLITS])
    return x[torch.argsort(x[:, 0])]


def _one_line(exc_info, *fragments):
    text = str(exc_info.value)
    assert "\n" not in text, text
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in: {text}"


# ---- formats ----------------------------------------------------------------------------------------
def test_npy_round_trip_and_default_split(tmp_path):
    x = _points(200)
    np.save(tmp_path / "points.npy", x)
    dm = ArrayDataModule(path=str(tmp_path / "points.npy"))
    assert {s: len(dm.raw[s]) for s in SPLITS} == {"train": 160, "val": 20, "test": 20}
    assert torch.equal(_whole(dm), torch.from_numpy(x).float())  # a partition of the file's rows
    spec = dm.spec
    assert spec.event_shape == (3,) and spec.representation == "continuous" and spec.num_levels is None
    assert spec.num_classes is None and not spec.conditional
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, torch.Tensor) and batch.shape == (128, 3)


def test_npz_key_and_labels_key(tmp_path):
    x, y = _points(100), np.arange(100) % 4
    np.savez(tmp_path / "d.npz", labels=y, data=x)
    dm = ArrayDataModule(path=str(tmp_path / "d.npz"), labels="labels", conditional=True, batch_size=16)
    assert torch.equal(_whole(dm), torch.from_numpy(x).float())  # the first array that is not the labels
    for s in SPLITS:
        assert torch.equal(dm.eval_labels(s), dm.raw[s][:, 0].long() % 4)  # labels travel with their rows
    assert dm.spec.num_classes == 4 and dm.spec.conditional
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (16, 3) and yb.dtype == torch.int64 and torch.equal(yb, xb[:, 0].long() % 4)
    xt, yt = next(iter(dm.test_dataloader()))
    assert torch.equal(xt, dm.eval_data("test")) and torch.equal(yt, dm.eval_labels("test"))
    assert torch.equal(dm.init_batch(), dm.raw["train"])  # x only
    # key chooses the array
    np.savez(tmp_path / "e.npz", a=np.zeros((10, 2)), b=np.ones((10, 5)))
    assert ArrayDataModule(path=str(tmp_path / "e.npz"), key="b").spec.event_shape == (5,)
    assert ArrayDataModule(path=str(tmp_path / "e.npz")).spec.event_shape == (2,)


def test_labels_from_a_second_file(tmp_path):
    x, y = _points(60), (np.arange(60) % 3).astype(np.int64)
    np.save(tmp_path / "x.npy", x)
    np.savetxt(tmp_path / "y.csv", y, fmt="%d")
    torch.save(torch.from_numpy(y), tmp_path / "y.pt")
    for labels in ("y.csv", "y.pt"):
        dm = ArrayDataModule(path=str(tmp_path / "x.npy"), labels=str(tmp_path / labels))
        assert torch.equal(dm.eval_labels("train"), dm.raw["train"][:, 0].long() % 3)
        assert dm.spec.num_classes == 3 and not dm.spec.conditional
        assert isinstance(next(iter(dm.train_dataloader())), torch.Tensor)  # unconditional: bare x


def test_pt_tensor_and_dict(tmp_path):
    x = torch.from_numpy(_points(50)).float()
    torch.save(x, tmp_path / "t.pt")
    assert torch.equal(_whole(ArrayDataModule(path=str(tmp_path / "t.pt"))), x)
    torch.save({"x": x, "y": torch.arange(50) % 2}, tmp_path / "d.pt")
    dm = ArrayDataModule(path=str(tmp_path / "d.pt"), key="x", labels="y")
    assert torch.equal(_whole(dm), x) and dm.spec.num_classes == 2


def test_csv_header_label_column_and_class_names(tmp_path):
    x = _points(30)
    names = ["cat", "dog", "ant"]
    lines = ["i,class,a,b"] + [f"{r[0]:g},{names[int(r[0]) % 3]},{float(r[1])!r},{float(r[2])!r}" for r in x]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    dm = ArrayDataModule(path=str(tmp_path / "t.csv"), label_column="class")
    assert torch.equal(_whole(dm), torch.from_numpy(x).float())
    assert dm.spec.extras["class_names"] == ["ant", "cat", "dog"]  # sorted names -> 0..K-1
    index = {"ant": 0, "cat": 1, "dog": 2}
    for s in SPLITS:
        expected = torch.tensor([index[names[int(i) % 3]] for i in dm.raw[s][:, 0]])
        assert torch.equal(dm.eval_labels(s), expected)
    same = ArrayDataModule(path=str(tmp_path / "t.csv"), labels="class")  # labels: a column of the same file
    assert torch.equal(same.eval_labels("test"), dm.eval_labels("test"))
    # no header, numeric label column by index
    (tmp_path / "n.csv").write_text("\n".join(f"{int(r[0]) % 2},{r[0]:g},{float(r[1])!r}" for r in x) + "\n")
    dm = ArrayDataModule(path=str(tmp_path / "n.csv"), label_column=0)
    assert dm.spec.event_shape == (2,) and torch.equal(dm.eval_labels("val"), dm.raw["val"][:, 0].long() % 2)


def test_levels_dequantized_and_binarized_images(tmp_path):
    rng = np.random.default_rng(1)
    k = rng.integers(0, 256, size=(40, 3, 4, 5), dtype=np.uint8)
    np.save(tmp_path / "img.npy", k)
    dm = ArrayDataModule(path=str(tmp_path / "img.npy"), levels=256, representation="dequantized")
    spec = dm.spec
    assert spec.event_shape == (3, 4, 5) and spec.is_image and spec.num_levels == 256
    assert spec.log_prob_offset == pytest.approx(-60 * math.log(256))  # bits/dim of the 8-bit data
    x = dm.eval_data("test")
    assert x.min() >= 0 and x.max() < 1 and torch.equal(torch.floor(x * 256), dm.raw["test"])
    grey = ArrayDataModule(path=str(tmp_path / "img.npy"), levels=256, representation="binarized")
    assert grey.raw["train"].max() <= 1 and set(grey.eval_data("val").unique().tolist()) <= {0.0, 1.0}
    np.save(tmp_path / "hw.npy", k[:, 0])  # (N, H, W): grey images
    assert ArrayDataModule(path=str(tmp_path / "hw.npy"), levels=256,
                           representation="dequantized").spec.event_shape == (1, 4, 5)


def test_from_array_numpy_and_tensor_resumable_with_labels():
    x = _points(300)
    y = np.arange(300) % 5
    for data, labels in ((x, y), (torch.from_numpy(x), torch.from_numpy(y))):
        dm = ArrayDataModule.from_array(data, labels, conditional=True, batch_size=32, seed=7)
        assert dm.spec.num_classes == 5 and "in-memory" in dm.describe_source()
        loader = dm.train_dataloader()
        epoch1 = []
        loader.sampler.set_epoch(1)
        for xb, yb in loader:
            assert torch.equal(yb, xb[:, 0].long() % 5)
            epoch1.append((xb, yb))
        # resume in the middle of epoch 1: the same batches, from the third on
        fresh = ArrayDataModule.from_array(data, labels, conditional=True, batch_size=32, seed=7).train_dataloader()
        fresh.load_state_dict({"epoch": 1, "batches_done": 2})
        resumed = list(fresh)
        assert len(resumed) == len(epoch1) - 2
        for (xa, ya), (xb, yb) in zip(epoch1[2:], resumed):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert ArrayDataModule.from_array(x).spec.num_classes is None
    with pytest.raises(DataError) as info:
        ArrayDataModule.from_array(x, conditional=True)
    _one_line(info, "'array'", "no labels")


def test_split_is_seeded_and_configurable(tmp_path):
    np.save(tmp_path / "p.npy", _points(100))
    path = str(tmp_path / "p.npy")
    a, b, c = (ArrayDataModule(path=path, seed=s) for s in (3, 3, 4))
    for s in SPLITS:
        assert torch.equal(a.raw[s], b.raw[s])
    assert not torch.equal(a.raw["test"], c.raw["test"])
    d = ArrayDataModule(path=path, split=[0.5, 0.3, 0.2])
    assert [len(d.raw[s]) for s in SPLITS] == [50, 30, 20]
    idx = split_indices(10, (0.8, 0.1, 0.1), 0, "x")
    assert sorted(torch.cat(list(idx.values())).tolist()) == list(range(10))
    with pytest.raises(ConfigError) as info:
        ArrayDataModule(path=path, split=[0.8, 0.3, 0.1])
    _one_line(info, "data.split", "summing to 1")
    np.save(tmp_path / "two.npy", _points(2))
    with pytest.raises(DataError) as info:
        ArrayDataModule(path=str(tmp_path / "two.npy")).raw
    _one_line(info, "two.npy", "too few")


# ---- bad inputs: one line naming the file and what was expected -----------------------------------------
def test_bad_array_files(tmp_path):
    def error(name, content=None, **options):
        path = tmp_path / name
        if content is not None:
            path.write_text(content) if isinstance(content, str) else content(path)
        with pytest.raises(ZooError) as info:
            ArrayDataModule(path=str(path), **options).raw
        text = str(info.value)
        assert "\n" not in text and str(path) in text, text
        return text

    assert "line 3 has 2 cells, expected 3" in error("ragged.csv", "1,2,3\n4,5,6\n7,8\n")
    assert "line 2, column 2: 'abc' is not a number" in error("word.csv", "1,2\n3,abc\n5,6\n")
    nan = np.ones((20, 2))
    nan[7, 1] = np.nan
    assert "NaN" in error("nan.npy", lambda p: np.save(p, nan)) and "example" in error("nan.npy")
    inf = np.ones((20, 2))
    inf[3, 0] = np.inf
    assert "infinite" in error("inf.npy", lambda p: np.save(p, inf))
    assert "NaN" in error("nan.csv", "1,2\nnan,3\n4,5\n")
    assert "expected a tensor or a dict of tensors" in error("list.pt", lambda p: torch.save({"x": [1, 2]}, p))
    assert "expected a tensor or a dict of tensors" in error("obj.pt", lambda p: torch.save(
        {"x": torch.zeros(3, 2), "opt": torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1)}, p))
    assert "expected one of .npy, .npz, .pt, .csv" in error("data.txt", "1 2\n")
    assert "Python objects" in error("obj.npy", lambda p: np.save(p, np.array([{"a": 1}] * 4), allow_pickle=True))
    assert "no such file" in error("missing.npy")
    np.save(tmp_path / "frac.npy", np.full((10, 2), 0.5))
    assert "levels=256 declares integer values 0..255" in error("frac.npy", levels=256, representation="dequantized")
    np.savez(tmp_path / "k.npz", x=np.zeros((10, 2)))
    assert "no array 'z'" in error("k.npz", key="z")
    assert "neither an array" in error("k.npz", labels="nope")
    np.savez(tmp_path / "fl.npz", x=np.zeros((10, 2)), y=np.full(10, 0.5))
    assert "integer class labels" in error("fl.npz", labels="y")
    np.savez(tmp_path / "short.npz", x=np.zeros((10, 2)), y=np.zeros(9))
    assert "expected 10 labels" in error("short.npz", labels="y")


def test_bad_options_are_config_errors(tmp_path):
    np.save(tmp_path / "p.npy", _points(20))
    path = str(tmp_path / "p.npy")
    with pytest.raises(ConfigError) as info:
        ArrayDataModule(path=path, representation="dequantized")
    _one_line(info, "needs data.levels")
    with pytest.raises(ConfigError) as info:
        ArrayDataModule(path=path, levels=256)
    _one_line(info, "levels=256", "dequantized or binarized")
    with pytest.raises(ConfigError) as info:
        ArrayDataModule()
    _one_line(info, "data.path")
    with pytest.raises(DataError) as info:
        ArrayDataModule(path=path, conditional=True)
    _one_line(info, "dataset 'array'", "no labels")


# ---- image folders ----------------------------------------------------------------------------------
def _write_digits(root, n_per_class=12, classes=(0, 1, 2), flat=False, fmt="PNG", rgb=False):
    """sklearn digits as 8-bit PNGs (levels 0..16 scaled by 15): class subfolders, or flat."""
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    written = {}
    for c in classes:
        images = bunch.images[bunch.target == c][:n_per_class]
        folder = root if flat else root / f"digit{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(images):
            a = (im * 15).astype(np.uint8)  # (8, 8) 0..240
            pic = Image.fromarray(np.stack([a, 255 - a, a // 2], -1) if rgb else a)
            name = folder / f"c{c}_{i:03d}.{'png' if fmt == 'PNG' else 'jpg'}"
            pic.save(name, format=fmt)
            written[name.name] = (a, c)
    return written


def test_image_folder_classes_values_and_labels(tmp_path):
    written = _write_digits(tmp_path / "digits")
    dm = ImageFolderDataModule(path=str(tmp_path / "digits"), conditional=True, batch_size=8)
    spec = dm.spec
    assert spec.event_shape == (1, 8, 8) and spec.num_levels == 256 and spec.representation == "dequantized"
    assert spec.extras["class_names"] == ["digit0", "digit1", "digit2"] and spec.num_classes == 3
    assert sum(len(dm.raw[s]) for s in SPLITS) == 36
    # every example is one written image with its class: match pixel arrays
    by_pixels = {a.tobytes(): c for a, c in written.values()}
    for s in SPLITS:
        for x, y in zip(dm.raw[s], dm.eval_labels(s)):
            assert by_pixels[x[0].to(torch.uint8).numpy().tobytes()] == int(y)
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (8, 1, 8, 8) and yb.shape == (8,) and xb.min() >= 0 and xb.max() < 1
    binary = ImageFolderDataModule(path=str(tmp_path / "digits"), representation="binarized")
    assert set(binary.eval_data("test").unique().tolist()) <= {0.0, 1.0}


def test_image_folder_flat_resize_channels_and_jpeg(tmp_path):
    _write_digits(tmp_path / "flat", n_per_class=5, flat=True)
    dm = ImageFolderDataModule(path=str(tmp_path / "flat"))
    assert dm.spec.num_classes is None and "class_names" not in dm.spec.extras
    with pytest.raises(DataError) as info:
        ImageFolderDataModule(path=str(tmp_path / "flat"), conditional=True).raw
    _one_line(info, "image_folder", "no labels")
    rgb = ImageFolderDataModule(path=str(tmp_path / "flat"), channels=3, size=[16, 12])
    x = rgb.raw["train"]
    assert x.shape[1:] == (3, 16, 12) and torch.equal(x[:, 0], x[:, 1])  # grey to RGB: equal planes
    _write_digits(tmp_path / "colour", n_per_class=4, flat=True, rgb=True)
    assert ImageFolderDataModule(path=str(tmp_path / "colour")).spec.event_shape == (3, 8, 8)  # RGB by default
    _write_digits(tmp_path / "jpeg", n_per_class=4, fmt="JPEG")
    assert ImageFolderDataModule(path=str(tmp_path / "jpeg")).spec.num_classes == 3


def test_bad_image_folders(tmp_path):
    from PIL import Image

    def error(path, *fragments, **options):
        with pytest.raises(ZooError) as info:
            ImageFolderDataModule(path=str(path), **options).raw
        _one_line(info, *fragments)

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    error(tmp_path / "empty", str(tmp_path / "empty"), "no images found")
    mixed = tmp_path / "mixed"
    _write_digits(mixed, n_per_class=3, flat=True)
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(mixed / "zz_big.png")
    error(mixed, "zz_big.png", "8x9", "set data.size")
    assert ImageFolderDataModule(path=str(mixed), size=8).spec.event_shape == (1, 8, 8)
    broken = tmp_path / "broken"
    _write_digits(broken, n_per_class=3, flat=True)
    (broken / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    error(broken, "bad.png", "cannot read this image", "expected a PNG or JPEG")
    error(tmp_path / "nowhere", "no such directory")
    with pytest.raises(ConfigError) as info:
        ImageFolderDataModule(path=str(mixed), channels=2)
    _one_line(info, "data.channels")


# ---- random-CNN features for image data without a zoo classifier ------------------------------------------
def test_random_features_are_fixed_and_separate_distributions():
    from zoo_core.metrics.frechet import frechet_distance
    from zoo_core.metrics.random_features import RandomConvFeatures

    a, b = RandomConvFeatures((3, 8, 8)), RandomConvFeatures((3, 8, 8))
    x = torch.rand(50, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a(x), b(x)) and a(x).shape == (50, a.num_features)  # seeded, not trained
    assert "random-CNN" in a.describe()
    gen = torch.Generator().manual_seed(1)
    blobs = lambda n: (torch.rand(n, 1, 1, 1, generator=gen) * torch.ones(n, 3, 8, 8))  # flat images
    noise = lambda n: torch.rand(n, 3, 8, 8, generator=gen)
    floor = frechet_distance(blobs(300), blobs(300), a)
    assert frechet_distance(blobs(300), noise(300), a) > 20 * floor


# ---- end to end through the CLI and a user registry file ---------------------------------------------------
def _train(tmp_path, registry_text, entry):
    from zoo_core.cli import main

    registry = tmp_path / "mine.yaml"
    registry.write_text(registry_text)
    runs = tmp_path / "runs"
    code = main(["train", entry, "--registry", str(registry), "--runs-dir", str(runs), "--no-progress",
                 "--accelerator", "cpu"])
    assert code == 0
    return json.loads((runs / entry / "version_0" / "metrics.json").read_text())


def test_train_gmm_on_user_npy_points(tmp_path):
    rng = np.random.default_rng(0)
    centres = np.array([[-2.0, 0.0], [2.0, 0.0]])
    points = centres[rng.integers(0, 2, 2000)] + 0.3 * rng.normal(size=(2000, 2))
    np.save(tmp_path / "points.npy", points.astype(np.float32))
    metrics = _train(tmp_path, f"""
my-points:
  family: gmm
  data: {{name: array, path: {tmp_path / 'points.npy'}}}
  model: {{n_components: 2, covariance: full}}
  optim: {{lr: 5.0e-2}}
  train: {{max_epochs: 8, batch_size: 200}}
  eval: {{metrics: [nll, frechet]}}
""", "my-points")
    # the true density's entropy: log 2 + log(2 pi e 0.09) = 0.69 + 0.41 (components hardly overlap)
    true_entropy = math.log(2) + math.log(2 * math.pi * math.e * 0.09)
    assert true_entropy - 0.15 < metrics["test"]["nll_nats"] < true_entropy + 0.3
    assert metrics["test"]["fd_feature_extractor"].startswith("data space")


def test_train_on_a_folder_of_png_digits(tmp_path):
    _write_digits(tmp_path / "pngs", n_per_class=40, classes=range(10))
    metrics = _train(tmp_path, f"""
my-digits:
  family: gmm
  data: {{name: image_folder, path: {tmp_path / 'pngs'}, representation: dequantized, conditional: true}}
  model: {{n_components: 10, covariance: diag}}
  optim: {{lr: 1.0e-2}}
  train: {{max_epochs: 4, batch_size: 64}}
  eval: {{metrics: [nll, frechet], quality_samples: 100}}
""", "my-digits")
    test = metrics["test"]
    assert math.isfinite(test["nll_nats"]) and 0 < test["bits_per_dim"] < 8  # of the 8-bit pixels
    assert "random-CNN" in test["fd_feature_extractor"] and "random-CNN" in metrics["metric_descriptions"]["frechet"]
    assert test["fd"] > test["fd_data_floor"]
