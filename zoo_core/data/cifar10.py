"""CIFAR-10 (Krizhevsky 2009, "Learning Multiple Layers of Features from Tiny Images") from the
official *binary* archive ``cifar-10-binary.tar.gz``, downloaded when missing.

The archive holds ``cifar-10-batches-bin/data_batch_1.bin`` .. ``data_batch_5.bin`` (50,000 training
images) and ``test_batch.bin`` (10,000 test images). Each record is 3073 bytes: one label byte
(0..9) then 3072 pixel bytes, the red, green and blue planes of 32x32 in row-major order. Only these
raw bytes are read, straight from the archive (nothing is extracted to disk, and the python-pickle
version of CIFAR-10 is never unpickled).

Where the archive is looked for: the data directory of ``zoo_core.data.mnist.resolve_data_dir``
(``--data-dir`` > ``ZOO_DATA_DIR`` > ``~/.cache/zoo/data``), in ``<dir>/cifar10/`` and then ``<dir>/``.
A missing archive is downloaded into ``<dir>/cifar10/`` (env ``ZOO_CIFAR10_MIRROR`` replaces the URL's
base) to a temporary file renamed into place only when its md5 is the official one, the md5 the
CIFAR-10 page publishes for the binary version. The md5 is checked again every time the archive is
loaded, so a corrupted or altered archive is refused.

Splits: train = the first 45,000 training images, val = the last 5,000 (data_batch_5's second half),
test = test_batch. Labels 0..9 (``CLASS_NAMES``). Representation: ``dequantized`` 8-bit images, so
bits/dim are those of the papers (e.g. RealNVP 3.49, Glow 3.35, PixelCNN 3.14 on the test set). The
zoo has no [-1, 1] representation: families that want one rescale x in [0, 1] themselves.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from zoo_core.data.base import ZooDataModule
from zoo_core.data.mnist import DOWNLOAD_TIMEOUT_S, resolve_data_dir
from zoo_core.errors import DataError

ARCHIVE = "cifar-10-binary.tar.gz"
#: md5 of the official binary archive (as published on https://www.cs.toronto.edu/~kriz/cifar.html)
ARCHIVE_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
DEFAULT_URL = "https://www.cs.toronto.edu/~kriz/"
MEMBER_DIR = "cifar-10-batches-bin"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
RECORD = 1 + 3 * 32 * 32  # label byte + R, G, B planes
N_VAL = 5000
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_CHUNK = 1 << 20


def _where_hint(root: Path) -> str:
    return (f"put {ARCHIVE} (the binary version from https://www.cs.toronto.edu/~kriz/cifar.html) in "
            f"{root / 'cifar10'}, or point --data-dir / ZOO_DATA_DIR at a directory that holds it")


def find_archive(root: Path) -> Path | None:
    for candidate in (root / "cifar10" / ARCHIVE, root / ARCHIVE):
        if candidate.is_file():
            return candidate
    return None


def file_md5(path: Path) -> str:
    md5 = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            md5.update(chunk)
    return md5.hexdigest()


def parse_records(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw CIFAR-10 binary records -> (images (n, 3, 32, 32) uint8, labels (n,) int64)."""
    if len(data) == 0 or len(data) % RECORD:
        raise DataError(f"{where}: {len(data)} bytes is not a whole number of {RECORD}-byte records "
                        f"(1 label byte + 3072 pixel bytes); truncated or not CIFAR-10 binary data")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD)  # (n, 3073)
    labels = records[:, 0].astype(np.int64)  # (n,)
    if int(labels.max()) > 9:
        raise DataError(f"{where}: label byte {int(labels.max())} in record {int(labels.argmax())}; "
                        f"expected 0..9 (not CIFAR-10 binary data?)")
    images = records[:, 1:].reshape(-1, 3, 32, 32)  # (n, 3, 32, 32): R, G, B planes, row-major
    return images, labels


def read_archive(path: Path, expected_md5: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{member file name: (images, labels)} for the six batch files of the archive, md5 checked first."""
    if expected_md5 is not None and (actual := file_md5(path)) != expected_md5:
        raise DataError(f"CIFAR-10 archive {path}: checksum mismatch: its md5 is {actual}, expected {expected_md5} "
                        f"(the official {ARCHIVE}); it is corrupted or not the binary CIFAR-10: replace it, or "
                        f"delete it to download it again")
    out = {}
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for name in (*TRAIN_FILES, TEST_FILE):
                member = f"{MEMBER_DIR}/{name}"
                try:
                    info = tar.getmember(member)
                except KeyError:
                    raise DataError(f"CIFAR-10 archive {path}: no {member} inside; expected the binary version "
                                    f"({ARCHIVE}), not the python or matlab one") from None
                handle = tar.extractfile(info) if info.isfile() else None
                if handle is None:
                    raise DataError(f"CIFAR-10 archive {path}: {member} is not a regular file")
                out[name] = parse_records(handle.read(), f"CIFAR-10 archive {path}, {member}")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read CIFAR-10 archive {path}: {' '.join(str(exc).split()) or type(exc).__name__}"
                        f" (expected the gzipped tar {ARCHIVE})") from None
    return out


def download_archive(root: Path) -> Path:
    """Fetch the archive into ``<root>/cifar10/``; renamed into place only if its md5 is the official one."""
    target_dir = root / "cifar10"
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"CIFAR-10 archive {ARCHIVE} is missing and {target_dir} cannot be created ({exc}); "
                        f"{_where_hint(root)}") from None
    base = os.environ.get("ZOO_CIFAR10_MIRROR") or DEFAULT_URL
    url = base.rstrip("/") + "/" + ARCHIVE
    target = target_dir / ARCHIVE
    fd, tmp_name = tempfile.mkstemp(dir=target_dir, prefix=f".{ARCHIVE}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            reason = exc if isinstance(exc, urllib.error.HTTPError) else getattr(exc, "reason", None) or exc
            raise DataError(f"CIFAR-10 archive could not be downloaded from {url} "
                            f"({' '.join(str(reason).split()) or type(exc).__name__}); {_where_hint(root)}") from None
        if (actual := file_md5(tmp)) != ARCHIVE_MD5:
            raise DataError(f"CIFAR-10 archive from {url} failed its checksum (md5 {actual}, expected {ARCHIVE_MD5}); "
                            f"the corrupt download was deleted; {_where_hint(root)}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def ensure_archive(data_dir) -> Path:
    root = resolve_data_dir(data_dir)
    if root.exists() and not root.is_dir():
        raise DataError(f"data directory {root} is not a directory; point --data-dir / ZOO_DATA_DIR at the "
                        f"directory that holds cifar10/{ARCHIVE}")
    return find_archive(root) or download_archive(root)


class CIFAR10DataModule(ZooDataModule):
    """CIFAR-10 32x32 RGB: train 45,000 / val 5,000 / test 10,000, shape (N, 3, 32, 32), 256 levels."""

    name = "cifar10"
    representations = ("dequantized",)
    num_levels = 256
    event_shape = (3, 32, 32)
    labelled = True
    num_classes = 10

    def __init__(self, conditional: bool = False, **kwargs):
        super().__init__(conditional=conditional, **kwargs)

    def prepare_data(self) -> None:
        ensure_archive(self.data_dir)  # download once per node before the ranks load the data

    def load_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        batches = read_archive(ensure_archive(self.data_dir), ARCHIVE_MD5)
        train = np.concatenate([batches[f][0] for f in TRAIN_FILES])  # (50000, 3, 32, 32) uint8
        train_y = np.concatenate([batches[f][1] for f in TRAIN_FILES])  # (50000,)
        test, test_y = batches[TEST_FILE]
        n_train = len(train) - min(N_VAL, len(train) // 10)  # 45,000 of the official 50,000
        x, y = torch.from_numpy(train.copy()), torch.from_numpy(train_y)
        return {"train": (x[:n_train], y[:n_train]), "val": (x[n_train:], y[n_train:]),
                "test": (torch.from_numpy(test.copy()), torch.from_numpy(test_y))}

    def extras(self) -> dict:
        return {"class_names": list(CLASS_NAMES)}
