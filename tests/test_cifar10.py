"""CIFAR-10 from archives in the official binary format written by the test (never downloaded from
the internet: the download path is exercised with a file:// mirror), and the families on (3, 32, 32)."""
from __future__ import annotations

import hashlib
import io
import math
import tarfile

import numpy as np
import pytest
import torch

from zoo_core.data import cifar10
from zoo_core.data.cifar10 import CIFAR10DataModule
from zoo_core.errors import DataError

PER_BATCH, N_TEST = 6, 7


def _records(n: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """n records: (bytes, images (n, 3, 32, 32), labels (n,)); the R plane first, then G, then B."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    data = b"".join(bytes([int(y)]) + img[0].tobytes() + img[1].tobytes() + img[2].tobytes()
                    for img, y in zip(images, labels))
    return data, images, labels.astype(np.int64)


def _write_archive(path, members: dict[str, bytes]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def archive(tmp_path, monkeypatch):
    """A small archive in the official layout under <tmp>/cifar10/, accepted as official (md5 patched)."""
    members, train, test = {}, [], None
    for i, name in enumerate(cifar10.TRAIN_FILES):
        data, images, labels = _records(PER_BATCH, i)
        members[f"cifar-10-batches-bin/{name}"] = data
        train.append((images, labels))
    data, images, labels = _records(N_TEST, 99)
    members["cifar-10-batches-bin/test_batch.bin"] = data
    members["cifar-10-batches-bin/batches.meta.txt"] = "\n".join(cifar10.CLASS_NAMES).encode()
    md5 = _write_archive(tmp_path / "cifar10" / cifar10.ARCHIVE, members)
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", md5)
    monkeypatch.delenv("ZOO_CIFAR10_MIRROR", raising=False)
    x = np.concatenate([t[0] for t in train])
    y = np.concatenate([t[1] for t in train])
    return tmp_path, (x, y), (images, labels)


def _one_line(info, *fragments):
    text = str(info.value)
    assert "\n" not in text, text
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in: {text}"


def test_reads_records_planes_labels_and_splits(archive):
    root, (x, y), (xt, yt) = archive
    dm = CIFAR10DataModule(data_dir=str(root), conditional=True, batch_size=4)
    n_val = len(x) // 10  # 5,000 of 50,000 for the official files
    assert torch.equal(dm.raw["train"], torch.from_numpy(x[:-n_val]).float())
    assert torch.equal(dm.raw["val"], torch.from_numpy(x[-n_val:]).float())
    assert torch.equal(dm.raw["test"], torch.from_numpy(xt).float())
    assert torch.equal(dm.eval_labels("test"), torch.from_numpy(yt))
    assert torch.equal(dm.eval_labels("train"), torch.from_numpy(y[:-n_val]))
    spec = dm.spec
    assert spec.event_shape == (3, 32, 32) and spec.num_levels == 256 and spec.num_classes == 10
    assert spec.representation == "dequantized" and spec.extras["class_names"][0] == "airplane"
    assert spec.log_prob_offset == pytest.approx(-3072 * math.log(256))
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (4, 3, 32, 32) and yb.shape == (4,) and 0 <= xb.min() and xb.max() < 1
    # the files directly in the data directory are found too
    (root / "cifar10" / cifar10.ARCHIVE).rename(root / cifar10.ARCHIVE)
    assert torch.equal(CIFAR10DataModule(data_dir=str(root)).raw["test"], dm.raw["test"])


def test_wrong_md5_is_refused(archive, monkeypatch):
    root, *_ = archive
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", "c32a1d4ab5d03f1284b67883e8d87530")  # the official one
    with pytest.raises(DataError) as info:
        CIFAR10DataModule(data_dir=str(root)).raw
    _one_line(info, str(root / "cifar10" / cifar10.ARCHIVE), "checksum mismatch", "c32a1d4ab5d03f1284b67883e8d87530")


def test_corrupted_archive_is_one_line(archive, monkeypatch):
    root, *_ = archive
    path = root / "cifar10" / cifar10.ARCHIVE
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # truncated download
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", hashlib.md5(path.read_bytes()).hexdigest())
    with pytest.raises(DataError) as info:
        CIFAR10DataModule(data_dir=str(root)).raw
    _one_line(info, "cannot read CIFAR-10 archive", str(path))


@pytest.mark.parametrize("problem", ["python-version", "ragged", "label"])
def test_wrong_contents_are_one_line(tmp_path, monkeypatch, problem):
    data, *_ = _records(3, 0)
    members = {f"cifar-10-batches-bin/{n}": data for n in (*cifar10.TRAIN_FILES, cifar10.TEST_FILE)}
    if problem == "python-version":
        members = {"cifar-10-batches-py/data_batch_1": b"\x80\x04 a pickle"}
    elif problem == "ragged":
        members["cifar-10-batches-bin/data_batch_3.bin"] = data[:-5]
    else:
        members["cifar-10-batches-bin/test_batch.bin"] = b"\x0c" + data[1:]
    md5 = _write_archive(tmp_path / "cifar10" / cifar10.ARCHIVE, members)
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", md5)
    with pytest.raises(DataError) as info:
        CIFAR10DataModule(data_dir=str(tmp_path)).raw
    expected = {"python-version": "no cifar-10-batches-bin/data_batch_1.bin inside",
                "ragged": "data_batch_3.bin: 9214 bytes is not a whole number of 3073-byte records",
                "label": "label byte 12 in record 0"}[problem]
    _one_line(info, expected)


def test_download_verifies_the_md5_and_leaves_no_partial_file(archive, tmp_path_factory, monkeypatch):
    source, *_ = archive
    mirror = source / "cifar10"
    target = tmp_path_factory.mktemp("data")
    monkeypatch.setenv("ZOO_CIFAR10_MIRROR", mirror.as_uri())  # file:// : no network
    dm = CIFAR10DataModule(data_dir=str(target))
    dm.prepare_data()
    assert (target / "cifar10" / cifar10.ARCHIVE).read_bytes() == (mirror / cifar10.ARCHIVE).read_bytes()
    assert len(dm.raw["test"]) == N_TEST
    other = tmp_path_factory.mktemp("data")
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", "0" * 32)
    with pytest.raises(DataError) as info:
        CIFAR10DataModule(data_dir=str(other)).prepare_data()
    _one_line(info, "failed its checksum", "deleted")
    assert list((other / "cifar10").iterdir()) == []
    monkeypatch.setenv("ZOO_CIFAR10_MIRROR", (other / "nowhere").as_uri())
    with pytest.raises(DataError) as info:
        CIFAR10DataModule(data_dir=str(other)).prepare_data()
    _one_line(info, "could not be downloaded", "cifar-10-binary.tar.gz")


def test_cifar10_registry_entries_resolve():
    from zoo_core.api import default_zoo

    registry = default_zoo().registry
    names = [n for n in registry.names() if n.endswith("-cifar10")]
    assert {"flow-cifar10", "diffusion-cifar10", "vae-cifar10", "autoregressive-cifar10", "gan-cifar10",
            "flow_matching-cifar10", "autoregressive-pixelcnn-cifar10"} <= set(names)
    for name in names:
        config = registry.resolve(name)
        assert config["data"]["name"] == "cifar10" and config["tier"] == "full"
        assert all(e["metric"] == "test.bits_per_dim" and e["source"] for e in config["expected"])
    published = {n: [e["value"] for e in registry.resolve(n)["expected"] if e["kind"] == "published"] for n in names}
    assert published["flow-cifar10"] == [3.49] and published["diffusion-cifar10"] == [3.70]


# ---- every family on a (3, 32, 32) image spec -------------------------------------------------------
SMALL = {  # tiny settings: this checks that each family accepts 3-channel 32x32 images, not its quality
    "gmm": {"n_components": 2, "covariance": "diag"},
    "vae": {"latent_dim": 4, "hidden": [32]},
    "autoencoder": {"latent_dim": 4, "hidden": [32]},
    "flow": {"n_couplings": 2, "hidden": [32], "mask": "random"},
    "gan": {"arch": "conv", "latent_dim": 8, "width": 8},
    "diffusion": {"network": "unet", "channels": [8, 16], "timesteps": 10, "bound_timesteps": 2,
                  "sample_steps": 2},
    "autoregressive": {"architecture": "made", "hidden": [16], "n_components": 1, "direct": False},
    "flow_matching": {"network": "conv", "channels": 8, "dilations": [1, 2], "sampler": "euler", "sample_steps": 2,
                      "trace": "hutchinson", "probes": 1, "ode_method": "euler", "ode_steps": 2},
}


@pytest.mark.parametrize("family", sorted(SMALL))
def test_family_accepts_three_channel_images(family):
    from zoo_core.data.spec import DataSpec
    from zoo_core.api import default_zoo

    spec = DataSpec("cifar10", (3, 32, 32), "dequantized", 256, {}, num_classes=10)
    torch.manual_seed(0)
    model = default_zoo().family(family)(data=spec.to_dict(), optim=None, **SMALL[family]).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        if model.likelihood != "none":
            lp = model.log_prob(x)
            assert lp.shape == (2,) and torch.isfinite(lp).all()
        s = model.sample((1,))  # one: MADE samples in 3072 network passes
    assert s.shape == (1, 3, 32, 32) and torch.isfinite(s).all()


def test_pixelcnns_take_three_channel_images():
    """The autoregressive plugin's PixelCNNs model (3, 32, 32) with R -> G -> B channel masks
    (tests/test_pixelcnn_colour.py checks the masks); their feature maps must split into 3 groups."""
    from zoo_core.data.spec import DataSpec
    from zoo_core.api import default_zoo
    from zoo_core.errors import ConfigError

    spec = DataSpec("cifar10", (3, 32, 32), "dequantized", 256)
    cls = default_zoo().family("autoregressive")
    for architecture in ("pixelcnn", "gated_pixelcnn"):
        model = cls(data=spec.to_dict(), optim=None, architecture=architecture, channels=6, n_layers=1,
                    kernel_size=3, n_components=1)
        with torch.no_grad():
            lp = model.log_prob(torch.rand(2, 3, 32, 32))
        assert lp.shape == (2,) and torch.isfinite(lp).all()
        with pytest.raises(ConfigError, match="at least the image's 3 channels"):
            cls(data=spec.to_dict(), optim=None, architecture=architecture, channels=2)


# ---- the CIFAR-10 feature classifier ----------------------------------------------------------------
def _coloured_records(n: int, seed: int) -> bytes:
    """n records whose class shows in their colour: class k tints the image with its own RGB mean."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    tints = np.random.default_rng(7).integers(30, 226, size=(10, 3))  # (10, 3) one colour per class
    images = np.clip(tints[labels][:, :, None, None] + rng.normal(0, 20, size=(n, 3, 32, 32)), 0, 255)
    images = images.astype(np.uint8)  # (n, 3, 32, 32)
    return b"".join(bytes([int(y)]) + img.tobytes() for img, y in zip(images, labels))


def test_cifar10_feature_classifier_is_trained_cached_and_reported(tmp_path, monkeypatch):
    from zoo_core.metrics import classifier

    members = {f"cifar-10-batches-bin/{name}": _coloured_records(60, i) for i, name in enumerate(cifar10.TRAIN_FILES)}
    members["cifar-10-batches-bin/test_batch.bin"] = _coloured_records(100, 99)
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", _write_archive(tmp_path / "cifar10" / cifar10.ARCHIVE, members))
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(classifier, "_LOADED", {})
    assert classifier.has_classifier("cifar10")
    extractor = classifier.get_feature_extractor("cifar10", "dequantized", data_dir=str(tmp_path))
    assert extractor.accuracy > 0.9, extractor.accuracy  # the tints make the classes separable
    assert "cifar10-dequantized classifier" in extractor.describe() and "test accuracy" in extractor.describe()
    x = torch.rand(5, 3, 32, 32)
    assert extractor(x).shape == (5, 128)
    path = classifier.classifier_path("cifar10", "dequantized")
    assert path.is_file() and path.with_suffix(".json").is_file()
    monkeypatch.setattr(classifier, "_LOADED", {})
    monkeypatch.setattr(classifier, "train_classifier", lambda *a, **k: pytest.fail("retrained a cached classifier"))
    again = classifier.get_feature_extractor("cifar10", "dequantized", data_dir=str(tmp_path))
    assert torch.equal(again(x), extractor(x)) and again.accuracy == extractor.accuracy


def test_cifar10_feature_classifier_never_downloads(tmp_path, monkeypatch):
    from zoo_core.metrics import classifier

    monkeypatch.setattr(classifier, "_LOADED", {})
    with pytest.raises(DataError) as info:
        classifier.get_feature_extractor("cifar10", "dequantized", data_dir=str(tmp_path))
    _one_line(info, "CIFAR-10 feature classifier needs", cifar10.ARCHIVE)
