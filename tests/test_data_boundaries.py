"""Data boundaries: wrong shapes, dtypes, NaNs and out-of-range values are refused where data enter
the zoo (``DataSpec.check`` on evaluated data, ``ZooDataModule.check_raw`` on loaded data), and bad
data directories or MNIST files give one-line errors naming the file or directory."""
from __future__ import annotations

import gzip
import math
import os
import socket
from pathlib import Path

import pytest
import torch

from conftest import SHARED_MNIST, run_zoo, zoo_env
from zoo_core import cli
from zoo_core.data import mnist
from zoo_core.data.base import ZooDataModule
from zoo_core.data.spec import DataSpec
from zoo_core.errors import DataError

HAVE_MNIST = all((SHARED_MNIST / f"{n}.gz").is_file() for n in mnist.MNIST_FILES)
needs_mnist = pytest.mark.skipif(not HAVE_MNIST, reason=f"the MNIST files are not in {SHARED_MNIST}")
WHERE = "dataset 'x', test split"


# ---- DataSpec.check ---------------------------------------------------------------------------------
def _spec(representation, shape=(1, 2, 2)):
    return DataSpec("x", shape, representation, None if representation == "continuous" else 17)


@pytest.mark.parametrize("representation, x", [
    ("binarized", torch.tensor([0.0, 1.0, 1.0, 0.0]).reshape(1, 1, 2, 2)),
    ("dequantized", torch.tensor([0.0, 0.5, 0.999, 1.0]).reshape(1, 1, 2, 2)),
    ("continuous", torch.tensor([[-1e30, 3.0]])),
])
def test_valid_data_passes(representation, x):
    _spec(representation, tuple(x.shape[1:])).check(x, WHERE)


@pytest.mark.parametrize("representation, x, message", [
    ("binarized", torch.zeros(3, 4), r"got shape \(3, 4\)"),
    ("binarized", torch.zeros(1, 2, 2), r"got shape \(1, 2, 2\)"),  # an example without its batch dimension
    ("binarized", torch.zeros(3, 1, 2, 2, dtype=torch.long), "expected floating-point values, got dtype torch.int64"),
    ("binarized", torch.zeros(0, 1, 2, 2), "no examples"),
    ("binarized", torch.tensor([0.0, 1.0, 0.5, 1.0]).reshape(1, 1, 2, 2),
     r"1 value\(s\) not 0 or 1 \(binarized pixels\), e.g. 0.5 in example 0"),
    ("dequantized", torch.tensor([0.0, -0.25, 0.5, 1.0]).reshape(1, 1, 2, 2),
     r"not in \[0, 1\] \(dequantized pixels .*\), e.g. -0.25"),
    ("dequantized", torch.tensor([[0.0, 0.1, 0.5, 1.0], [0.0, 0.1, 0.5, 255.0]]).reshape(2, 1, 2, 2),
     r"e.g. 255 in example 1; range seen \[0, 255\]"),
    ("dequantized", torch.tensor([0.0, math.nan, 0.5, 1.0]).reshape(1, 1, 2, 2), r"1 NaN value\(s\)"),
    ("continuous", torch.tensor([[0.0, 1.0], [math.nan, 2.0]]), r"1 NaN value\(s\), the first in example 1"),
    ("continuous", torch.tensor([[0.0, math.inf]]), r"1 infinite value\(s\)"),
])
def test_bad_data_is_named(representation, x, message):
    shape = (2,) if representation == "continuous" else (1, 2, 2)
    with pytest.raises(DataError, match=message) as info:
        _spec(representation, shape).check(x, WHERE)
    assert str(info.value).startswith(f"{WHERE} ({representation} data of shape (N, {', '.join(map(str, shape))}))")


# ---- what datamodules load --------------------------------------------------------------------------
class Fake(ZooDataModule):
    """A dataset whose load_splits returns whatever the test puts in ``splits``."""

    name = "fake"
    representations = ("binarized", "dequantized")
    num_levels = 4
    event_shape = (1, 2, 2)
    splits: dict = {}

    def load_splits(self):
        return dict(self.splits)


def _levels(n=5, value=None):
    x = torch.randint(0, 4, (n, 1, 2, 2), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    return x if value is None else x.float().index_put_((torch.tensor([1]),), torch.tensor(value))


def _load(representation, **override):
    good = _levels() if representation == "dequantized" else _levels().float() / 3
    Fake.splits = {"train": good, "val": good, "test": good, **override}
    return Fake(representation=representation).raw


def test_good_raw_data_loads():
    assert _load("dequantized")["test"].shape == (5, 1, 2, 2)
    assert _load("binarized")["train"].max() <= 1


@pytest.mark.parametrize("representation, override, message", [
    ("dequantized", {"test": torch.zeros(5, 1, 2, 3)}, r"test split: expected examples of shape \(1, 2, 2\), "
                                                      r"got \(1, 2, 3\)"),
    ("dequantized", {"val": torch.zeros(0, 1, 2, 2)}, r"val split: expected shape \(N, \*event_shape\) with N >= 1"),
    ("dequantized", {"train": _levels(value=7.0)}, r"train split: expected integer levels 0..3 to dequantize, "
                                                   r"got values in \[0, 7\]"),
    ("dequantized", {"train": _levels(value=1.5)}, r"got values in \[0, 3\] \(not all integers\)"),
    ("binarized", {"val": _levels(value=2.0)}, r"val split: expected intensities in \[0, 1\] to binarize"),
    ("binarized", {"test": _levels(value=math.nan)}, r"test split: 4 NaN or infinite value\(s\)"),
])
def test_bad_raw_data_is_refused(representation, override, message):
    with pytest.raises(DataError, match=message) as info:
        _load(representation, **override)
    assert str(info.value).startswith(f"dataset 'fake' ({representation}), ")


def test_evaluated_data_are_checked_against_the_representation(monkeypatch):
    """The boundary the runner evaluates through: eval_data checks the represented data."""
    _load("dequantized")
    dm = Fake(representation="dequantized")
    assert dm.eval_data("test").max() < 1
    dm = Fake(representation="dequantized")
    monkeypatch.setattr(dm, "_noise", lambda: lambda k, generator=None: k / 2)  # forgets the levels: values up to 1.5
    with pytest.raises(DataError, match=r"dataset 'fake', val split \(dequantized data .*not in \[0, 1\]"):
        dm.eval_data("val")


# ---- data directories and MNIST files, through the command line ------------------------------------
def _refused_mirror() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("ZOO_MNIST_MIRROR", _refused_mirror())
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def _train_error(capsys, data_dir) -> str:
    code = cli.main(["train", "gmm-mnist", "--data-dir", str(data_dir), "--max-steps", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and err.startswith("zoo: error: "), err
    return err.strip()


def _mnist_dir(tmp_path, replace: dict[str, bytes]) -> Path:
    """A data directory with the shared files, except ``replace``d ones (uncompressed content)."""
    d = tmp_path / "data"
    d.mkdir()
    for name in mnist.MNIST_FILES:
        if name in replace:
            (d / f"{name}.gz").write_bytes(gzip.compress(replace[name], compresslevel=1))
        else:
            (d / f"{name}.gz").symlink_to(SHARED_MNIST / f"{name}.gz")
    return d


def _labels() -> bytes:
    return gzip.decompress((SHARED_MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())


@needs_mnist
def test_corrupted_local_file_fails_its_checksum(tmp_path, capsys, offline):
    data = bytearray(_labels())
    data[-1] = (data[-1] + 1) % 10  # still a valid IDX file with 10000 labels: only the checksum can tell
    d = _mnist_dir(tmp_path, {"t10k-labels-idx1-ubyte": bytes(data)})
    err = _train_error(capsys, d)
    assert str(d / "t10k-labels-idx1-ubyte.gz") in err and "checksum mismatch" in err
    assert mnist.MNIST_FILES["t10k-labels-idx1-ubyte"] in err


@needs_mnist
@pytest.mark.parametrize("damage, message", [
    (lambda b: b[: len(b) // 2], "expected 10000 data bytes for dimensions (10000,), got 4996"),
    (lambda b: b[:4] + (9999).to_bytes(4, "big") + b[8:], "expected dimensions (10000,), got (9999,)"),
    (lambda b: b"\x01" + b[1:], "is not an IDX file (bad magic number)"),
])
def test_truncated_or_reshaped_file(tmp_path, capsys, offline, damage, message):
    d = _mnist_dir(tmp_path, {"t10k-labels-idx1-ubyte": damage(_labels())})
    err = _train_error(capsys, d)
    assert str(d / "t10k-labels-idx1-ubyte.gz") in err and message in err, err


def test_data_dir_that_is_a_file(tmp_path, capsys, offline):
    f = tmp_path / "not-a-dir"
    f.write_text("x")
    err = _train_error(capsys, f)
    assert f"data directory {f} is not a directory" in err


def test_missing_data_dir_names_where_to_put_the_files(tmp_path, capsys, offline):
    d = tmp_path / "nowhere"
    err = _train_error(capsys, d)
    assert "could not be downloaded" in err and "put the four MNIST files" in err and str(d / "mnist") in err


def test_unreadable_data_dir(tmp_path, capsys, offline, monkeypatch):
    d = tmp_path / "locked"
    (d / "mnist").mkdir(parents=True)
    real_access = os.access
    monkeypatch.setattr(mnist.os, "access", lambda p, mode: False if Path(p) == d / "mnist" else real_access(p, mode))
    err = _train_error(capsys, d)  # (as root a chmod would not lock anything: the check itself is simulated)
    assert f"data directory {d / 'mnist'} is not readable" in err


@needs_mnist
def test_bad_file_through_the_real_command(tmp_path):
    """The same as above in a fresh process, as a user runs it: one line on stderr, exit code 1."""
    d = _mnist_dir(tmp_path, {"t10k-labels-idx1-ubyte": _labels()[:-3]})
    result = run_zoo("train", "gmm-mnist", "--data-dir", d, "--max-steps", "1",
                     env=zoo_env(ZOO_MNIST_MIRROR=_refused_mirror()))
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"zoo: error: MNIST file {d / 't10k-labels-idx1-ubyte.gz'}: expected 10000 "
                                    f"data bytes"), result.stderr
