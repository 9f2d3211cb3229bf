"""MNIST: IDX parsing, data-dir resolution, and downloads from a local HTTP server (never the internet)."""
from __future__ import annotations

import functools
import gzip
import http.server
import os
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo_core.data import mnist
from zoo_core.data.mnist import MNIST_FILES, MNISTDataModule, find_file, read_idx, resolve_data_dir
from zoo_core.errors import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
HAVE_SHARED = all((SHARED / f"{name}.gz").is_file() for name in MNIST_FILES)
needs_shared = pytest.mark.skipif(not HAVE_SHARED, reason=f"the four MNIST .gz files are not in {SHARED}")

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _refused_url() -> str:
    """A URL on a local port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def _isolate(mp: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        mp.delenv(var, raising=False)
    mp.setenv("no_proxy", "127.0.0.1,localhost")
    mp.setenv("ZOO_MNIST_MIRROR", _refused_url())  # any accidental download fails locally
    mp.delenv("ZOO_DATA_DIR", raising=False)


@pytest.fixture(autouse=True)
def no_internet(monkeypatch):
    _isolate(monkeypatch)


@pytest.fixture(scope="module")
def shared_dm():
    if not HAVE_SHARED:
        pytest.skip(f"the four MNIST .gz files are not in {SHARED}")
    with pytest.MonkeyPatch.context() as mp:
        _isolate(mp)
        dm = MNISTDataModule(data_dir=str(SHARED))  # files directly in <dir>/
        dm.raw
    return dm


@pytest.fixture
def server(tmp_path):
    """Serve ``tmp_path/served`` on 127.0.0.1; yields (base_url, served_dir, requested_paths)."""
    served = tmp_path / "served"
    served.mkdir()
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            requested.append(self.path)
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", served, requested
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


# ---- loading the shared files ---------------------------------------------------------------------
@needs_shared
def test_shapes_splits_and_range(shared_dm):
    raw = shared_dm.raw
    assert {k: tuple(v.shape) for k, v in raw.items()} == {
        "train": (50000, 1, 28, 28), "val": (10000, 1, 28, 28), "test": (10000, 1, 28, 28)}
    for x in raw.values():
        assert x.dtype == torch.float32 and x.min() == 0 and x.max() == 1
    spec = shared_dm.spec
    assert spec.name == "mnist" and spec.event_shape == (1, 28, 28) and spec.num_levels == 256 and spec.is_binary
    x = shared_dm.eval_data("test")
    assert set(x.unique().tolist()) == {0.0, 1.0}


@needs_shared
def test_label_counts(shared_dm):
    labels = shared_dm.labels
    assert [len(labels[k]) for k in ("train", "val", "test")] == [50000, 10000, 10000]
    train_all = torch.cat([labels["train"], labels["val"]])
    assert torch.bincount(train_all, minlength=10).tolist() == TRAIN_COUNTS
    assert torch.bincount(labels["test"], minlength=10).tolist() == TEST_COUNTS


@needs_shared
def test_dequantized_levels(shared_dm):
    dm = MNISTDataModule(representation="dequantized", data_dir=str(SHARED.parent))  # <dir>/mnist/ lookup
    raw = dm.raw
    for k, x in raw.items():
        assert x.min() == 0 and x.max() == 255
        assert torch.equal(x / 255, shared_dm.raw[k])
    assert torch.equal(raw["val"][:5], raw["val"][:5].round())
    ev = dm.eval_data("test")
    assert ev.min() >= 0 and ev.max() < 1


@needs_shared
def test_uncompressed_files(tmp_path, shared_dm):
    for name in MNIST_FILES:
        with gzip.open(SHARED / f"{name}.gz", "rb") as src, open(tmp_path / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    dm = MNISTDataModule(data_dir=str(tmp_path))
    assert all(find_file(tmp_path, n) == tmp_path / n for n in MNIST_FILES)
    assert torch.equal(dm.raw["test"], shared_dm.raw["test"])
    assert torch.equal(dm.raw["train"][-100:], shared_dm.raw["train"][-100:])
    assert torch.equal(dm.labels["val"], shared_dm.labels["val"])


# ---- resolution and lookup ------------------------------------------------------------------------
def test_data_dir_resolution_order(monkeypatch, tmp_path):
    flag, env, xdg, home = (tmp_path / n for n in ("flag", "env", "xdg", "home"))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert resolve_data_dir(None) == home / ".cache" / "zoo" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    assert resolve_data_dir(None) == xdg / "zoo" / "data"
    monkeypatch.setenv("ZOO_DATA_DIR", str(env))
    assert resolve_data_dir(None) == env
    assert resolve_data_dir(str(flag)) == flag
    assert resolve_data_dir(flag) == flag
    monkeypatch.setenv("ZOO_DATA_DIR", "")  # empty = unset
    assert resolve_data_dir(None) == xdg / "zoo" / "data"


def test_find_file_order(tmp_path):
    name = "t10k-labels-idx1-ubyte"
    assert find_file(tmp_path, name) is None
    (tmp_path / name).write_bytes(b"")
    assert find_file(tmp_path, name) == tmp_path / name
    (tmp_path / f"{name}.gz").write_bytes(b"")
    assert find_file(tmp_path, name) == tmp_path / f"{name}.gz"
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / name).write_bytes(b"")
    assert find_file(tmp_path, name) == tmp_path / "mnist" / name


def test_mirror_list(monkeypatch):
    monkeypatch.delenv("ZOO_MNIST_MIRROR")
    assert mnist.mirrors() == list(mnist.DEFAULT_MIRRORS)
    monkeypatch.setenv("ZOO_MNIST_MIRROR", "http://example.invalid/m/")
    assert mnist.mirrors() == ["http://example.invalid/m/"]


# ---- malformed files ------------------------------------------------------------------------------
def _idx(shape, payload: bytes, dtype=0x08) -> bytes:
    header = bytes([0, 0, dtype, len(shape)]) + b"".join(int(d).to_bytes(4, "big") for d in shape)
    return header + payload


def test_read_idx_valid_and_gz(tmp_path):
    data = _idx((2, 3), bytes(range(6)))
    (tmp_path / "a").write_bytes(data)
    (tmp_path / "a.gz").write_bytes(gzip.compress(data))
    for p in (tmp_path / "a", tmp_path / "a.gz"):
        arr = read_idx(p, (2, 3))
        assert arr.dtype == np.uint8 and arr.tolist() == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.parametrize("content, match", [
    (b"\x01\x02\x08\x01", "bad magic"),
    (_idx((4,), b"\x00" * 4, dtype=0x0D), "unsigned-byte"),
    (_idx((5,), b"\x00" * 5), "expected dimensions"),
    (_idx((4,), b"\x00" * 3), "data bytes"),
    (bytes([0, 0, 8, 3, 0]), "truncated"),
    (gzip.compress(_idx((4,), b"\x00" * 4), mtime=0)[:-9], "cannot read"),
], ids=["magic", "dtype", "dims", "short-data", "truncated-header", "truncated-gzip"])
def test_read_idx_malformed(tmp_path, content, match):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(DataError, match=match) as info:
        read_idx(path, (4,))
    assert str(path) in str(info.value)


# ---- downloads ------------------------------------------------------------------------------------
@needs_shared
def test_download_all_files(server, tmp_path, monkeypatch, shared_dm):
    url, served, requested = server
    for name in MNIST_FILES:
        shutil.copy(SHARED / f"{name}.gz", served)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    monkeypatch.setenv("ZOO_MNIST_MIRROR", url)
    monkeypatch.setenv("ZOO_DATA_DIR", str(data_dir))
    dm = MNISTDataModule()
    dm.prepare_data()
    assert sorted(requested) == sorted(f"/{n}.gz" for n in MNIST_FILES)
    assert sorted(p.name for p in (data_dir / "mnist").iterdir()) == sorted(f"{n}.gz" for n in MNIST_FILES)
    assert torch.equal(dm.raw["test"], shared_dm.raw["test"])
    assert len(requested) == 4, "files already present must not be downloaded again"


@needs_shared
def test_download_falls_back_to_next_mirror(server, tmp_path, monkeypatch):
    url, served, requested = server
    name = "t10k-labels-idx1-ubyte"
    shutil.copy(SHARED / f"{name}.gz", served)
    monkeypatch.delenv("ZOO_MNIST_MIRROR")
    monkeypatch.setattr(mnist, "DEFAULT_MIRRORS", (_refused_url(), url))
    target = mnist.download_file(name, tmp_path)
    assert target == tmp_path / "mnist" / f"{name}.gz" and target.read_bytes() == (SHARED / f"{name}.gz").read_bytes()
    assert os.listdir(tmp_path / "mnist") == [f"{name}.gz"]


@needs_shared
def test_download_checksum_mismatch(server, tmp_path, monkeypatch):
    url, served, _ = server
    name = "t10k-labels-idx1-ubyte"
    data = bytearray(gzip.decompress((SHARED / f"{name}.gz").read_bytes()))
    data[100:110] = bytes((b + 1) % 10 for b in data[100:110])  # still a valid IDX file, wrong labels
    (served / f"{name}.gz").write_bytes(gzip.compress(bytes(data)))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for other in MNIST_FILES:  # the other three are present (in <dir>/ itself)
        if other != name:
            (data_dir / f"{other}.gz").symlink_to(SHARED / f"{other}.gz")
    monkeypatch.setenv("ZOO_MNIST_MIRROR", url)
    with pytest.raises(DataError) as info:
        MNISTDataModule(data_dir=str(data_dir)).raw
    msg = str(info.value)
    assert "checksum" in msg and f"{name}.gz" in msg and MNIST_FILES[name] in msg and "\n" not in msg
    assert os.listdir(data_dir / "mnist") == [], "no partial or corrupt file may be left behind"


@pytest.mark.parametrize("mirror", ["refused", "404"])
def test_download_failure_hint(server, tmp_path, monkeypatch, mirror):
    url, _, _ = server  # serves an empty directory: every file is a 404
    data_dir = tmp_path / "empty"
    monkeypatch.setenv("ZOO_DATA_DIR", str(data_dir))
    monkeypatch.setenv("ZOO_MNIST_MIRROR", _refused_url() if mirror == "refused" else url)
    with pytest.raises(DataError) as info:
        MNISTDataModule().prepare_data()
    msg = str(info.value)
    assert "\n" not in msg
    assert "train-images-idx3-ubyte.gz could not be downloaded" in msg
    assert ("refused" if mirror == "refused" else "404") in msg.lower()
    assert "put the four MNIST files" in msg and str(data_dir / "mnist") in msg
    assert "--data-dir" in msg and "ZOO_DATA_DIR" in msg
    assert os.listdir(data_dir / "mnist") == []


@needs_shared
def test_labels_and_conditional_batches():
    dm = MNISTDataModule(data_dir=str(SHARED), conditional=True, batch_size=50)
    assert torch.equal(torch.bincount(dm.eval_labels("test"), minlength=10), torch.tensor(TEST_COUNTS))
    assert dm.spec.num_classes == 10 and dm.spec.conditional
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (50, 1, 28, 28) and y.shape == (50,) and y.dtype == torch.int64
    xt, yt = next(iter(dm.test_dataloader()))
    assert torch.equal(yt, dm.eval_labels("test")[: len(yt)])
