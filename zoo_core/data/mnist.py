"""MNIST from the four official IDX files (gzipped or not), downloaded when missing.

Where the files are looked for (``resolve_data_dir``): the explicit ``data_dir`` (the CLI's
``--data-dir``) > env ``ZOO_DATA_DIR`` > ``($XDG_CACHE_HOME or ~/.cache)/zoo/data``; within that
directory, ``<dir>/mnist/`` and then ``<dir>/`` itself, each file as ``name.gz`` or ``name``.

Missing files are downloaded into ``<dir>/mnist/`` from a mirror list (env ``ZOO_MNIST_MIRROR``
replaces it with one base URL). A download goes to a temporary file that is renamed into place only
after the md5 of its *uncompressed* content matches the official one, so concurrent processes (DDP
ranks) and interrupted downloads never leave a partial file under the final name.

Checksums are verified at download time and again whenever the files are loaded: the IDX header and
sizes are parsed (naming truncated or wrong files precisely), then the md5 of the uncompressed
content must be the official one, so a local file with a changed byte is refused too.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from zoo_core.data.base import ZooDataModule
from zoo_core.errors import DataError

#: official md5 of the UNCOMPRESSED files
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
#: expected IDX dimensions of each file
MNIST_SHAPES: dict[str, tuple[int, ...]] = {
    "train-images-idx3-ubyte": (60000, 28, 28),
    "train-labels-idx1-ubyte": (60000,),
    "t10k-images-idx3-ubyte": (10000, 28, 28),
    "t10k-labels-idx1-ubyte": (10000,),
}
DEFAULT_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
DOWNLOAD_TIMEOUT_S = 30
N_TRAIN = 50000  # the last 10,000 training images are the validation set
_CHUNK = 1 << 20


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """Data directory: explicit ``data_dir`` > env ``ZOO_DATA_DIR`` > ``($XDG_CACHE_HOME or ~/.cache)/zoo/data``."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get("ZOO_DATA_DIR")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "zoo" / "data"


def mirrors() -> list[str]:
    """Base URLs to download from: env ``ZOO_MNIST_MIRROR`` alone if set, else ``DEFAULT_MIRRORS``."""
    env = os.environ.get("ZOO_MNIST_MIRROR")
    return [env] if env else list(DEFAULT_MIRRORS)


def find_file(root: Path, name: str) -> Path | None:
    """``<root>/mnist/`` then ``<root>/``; ``name.gz`` then ``name``. None if absent."""
    for d in (root / "mnist", root):
        for candidate in (d / f"{name}.gz", d / name):
            if candidate.is_file():
                return candidate
    return None


def _where_hint(root: Path) -> str:
    return (f"put the four MNIST files ({', '.join(n + '[.gz]' for n in MNIST_FILES)}) in {root / 'mnist'}, "
            f"or point --data-dir / ZOO_DATA_DIR at a directory that holds them")


# ---- IDX parsing ------------------------------------------------------------------------------
def read_idx(path: str | os.PathLike, expected_shape: tuple[int, ...] | None = None,
             expected_md5: str | None = None) -> np.ndarray:
    """Parse an unsigned-byte IDX file, gzipped or not (detected by its magic bytes), into a uint8 array.

    ``expected_md5``: the md5 of the uncompressed content, checked after the header and sizes."""
    path = Path(path)
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read MNIST file {path}: {e}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"MNIST file {path} is not an IDX file (bad magic number)")
    if data[2] != 0x08:
        raise DataError(f"MNIST file {path}: expected unsigned-byte IDX data (type 0x08), got type 0x{data[2]:02x}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"MNIST file {path} is truncated (incomplete IDX header)")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if expected_shape is not None and shape != tuple(expected_shape):
        raise DataError(f"MNIST file {path}: expected dimensions {tuple(expected_shape)}, got {shape}")
    size = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != size:
        raise DataError(f"MNIST file {path}: expected {size} data bytes for dimensions {shape}, "
                        f"got {len(data) - header}")
    if expected_md5 is not None and (actual := hashlib.md5(data).hexdigest()) != expected_md5:
        raise DataError(f"MNIST file {path}: checksum mismatch: the md5 of its uncompressed content is {actual}, "
                        f"expected {expected_md5} (the official file); it is corrupted or not MNIST: "
                        f"replace it, or delete it to download it again")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


# ---- download ---------------------------------------------------------------------------------
def _md5_uncompressed(path: Path) -> str:
    md5 = hashlib.md5()
    with gzip.open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            md5.update(chunk)
    return md5.hexdigest()


class _ChecksumMismatch(Exception):
    pass


def _download_one(url: str, target: Path, expected_md5: str) -> None:
    """Fetch ``url`` into a temp file next to ``target``; rename only if the uncompressed md5 matches."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
        try:
            actual = _md5_uncompressed(tmp)
        except (OSError, EOFError, zlib.error) as e:
            raise _ChecksumMismatch(f"not a valid gzip file ({e})") from e
        if actual != expected_md5:
            raise _ChecksumMismatch(f"md5 of the uncompressed content is {actual}, expected {expected_md5}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def download_file(name: str, root: Path) -> Path:
    """Download ``name.gz`` into ``<root>/mnist/`` from the first mirror that serves a correct copy."""
    target_dir = root / "mnist"
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"MNIST file {name}.gz is missing and {target_dir} cannot be created ({e}); "
                        f"{_where_hint(root)}") from e
    target = target_dir / f"{name}.gz"
    failures, bad_checksum = [], None
    for base in mirrors():
        url = base.rstrip("/") + f"/{name}.gz"
        try:
            _download_one(url, target, MNIST_FILES[name])
            return target
        except _ChecksumMismatch as e:
            bad_checksum = f"{url}: {e}"
            failures.append(bad_checksum)
        except (OSError, http.client.HTTPException, ValueError) as e:  # HTTP error, refused, timeout, bad URL
            reason = e if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", None) or e
            failures.append(f"{url}: {' '.join(str(reason).split()) or type(e).__name__}")
    if bad_checksum is not None:
        raise DataError(f"MNIST file {name}.gz failed its checksum after download ({bad_checksum}); "
                        f"the corrupt download was deleted; {_where_hint(root)}")
    raise DataError(f"MNIST file {name}.gz could not be downloaded ({'; '.join(failures)}); {_where_hint(root)}")


def ensure_files(data_dir: str | os.PathLike | None) -> dict[str, Path]:
    """Paths of the four files, downloading the missing ones."""
    root = resolve_data_dir(data_dir)
    if root.exists() and not root.is_dir():
        raise DataError(f"data directory {root} is not a directory; point --data-dir / ZOO_DATA_DIR at the "
                        f"directory that holds mnist/ (or the four MNIST files)")
    for d in (root, root / "mnist"):
        if d.is_dir() and not os.access(d, os.R_OK | os.X_OK):
            raise DataError(f"data directory {d} is not readable (permission denied); {_where_hint(root)}")
    return {name: find_file(root, name) or download_file(name, root) for name in MNIST_FILES}


def load_mnist_arrays(data_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """The four files as uint8 arrays, keyed by file name (without ``.gz``)."""
    paths = ensure_files(data_dir)
    return {name: read_idx(path, MNIST_SHAPES[name], MNIST_FILES[name]) for name, path in paths.items()}


class MNISTDataModule(ZooDataModule):
    """MNIST 28x28: train = first 50,000 training images, val = last 10,000, test = t10k; (N, 1, 28, 28).

    Labels 0..9 (``eval_labels(split)``; ``self.labels`` too once the data are loaded), the context
    of conditional models with ``conditional=True``."""

    name = "mnist"
    representations = ("binarized", "dequantized")
    num_levels = 256
    event_shape = (1, 28, 28)
    labelled = True
    num_classes = 10

    def __init__(self, conditional: bool = False, **kwargs):
        super().__init__(conditional=conditional, **kwargs)
        self.labels: dict[str, Tensor] = {}

    def prepare_data(self) -> None:
        ensure_files(self.data_dir)  # download once per node before the ranks load the data

    def load_splits(self) -> dict[str, Tensor]:
        a = load_mnist_arrays(self.data_dir)
        train = torch.from_numpy(a["train-images-idx3-ubyte"].copy())[:, None]  # (60000, 1, 28, 28) uint8
        test = torch.from_numpy(a["t10k-images-idx3-ubyte"].copy())[:, None]  # (10000, 1, 28, 28) uint8
        train_y = torch.from_numpy(a["train-labels-idx1-ubyte"].astype(np.int64))  # (60000,)
        test_y = torch.from_numpy(a["t10k-labels-idx1-ubyte"].astype(np.int64))  # (10000,)
        self.labels = {"train": train_y[:N_TRAIN], "val": train_y[N_TRAIN:], "test": test_y}
        splits = {"train": train[:N_TRAIN], "val": train[N_TRAIN:], "test": test}
        if self.representation == "binarized":
            splits = {k: v.float().div_(self.num_levels - 1) for k, v in splits.items()}  # intensities in [0, 1]
        return {k: (v, self.labels[k]) for k, v in splits.items()}  # integer levels 0..255 (uint8) when dequantized
