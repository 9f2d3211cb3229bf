"""Atomic checkpoint writes, a full disk while writing a run directory, corrupted checkpoints."""
import errno
import os
import shutil
from pathlib import Path

import pytest
import torch

import zoo_core.checkpoint_io as cio
from zoo_core.checkpoint import read_checkpoint
from zoo_core.checkpoint_io import AtomicCheckpointIO, write_atomic
from zoo_core.cli import main
from zoo_core.errors import RunDirWriteError

TINY = ["--set", "data.n_train=1000", "--set", "train.batch_size=500", "--set", "model.n_components=4",
        "--set", "eval.metrics=[nll]", "--set", "eval.num_samples=4", "--accelerator", "cpu", "--no-progress"]


def _train(runs, *extra):
    return main(["train", "gmm-moons", "--max-epochs", "2", "--runs-dir", str(runs), *TINY, *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    runs = tmp_path_factory.mktemp("ckio")
    assert _train(runs) == 0
    return runs / "gmm-moons" / "version_0"


@pytest.fixture
def run_dir(trained, tmp_path):
    target = tmp_path / "runs" / "gmm-moons" / "version_0"
    shutil.copytree(trained, target)
    return target


def _half_then_enospc(real, fail_on):
    """A _write_fd (write_atomic writes its temporary file through it) that, for a temporary file
    whose path satisfies ``fail_on``, writes half the bytes and then hits a full disk."""
    calls = {"n": 0}

    def write(fd, data):
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))  # the temporary file write_atomic created
        if fail_on(path):
            calls["n"] += 1
            with os.fdopen(fd, "wb") as f:
                f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(fd, data)
    write.calls = calls
    return write


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_crash_while_saving_leaves_previous_checkpoint_intact(run_dir, monkeypatch):
    last = run_dir / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    checkpoint = read_checkpoint(last)
    checkpoint["global_step"] = 999
    monkeypatch.setattr(cio, "_write_fd", _half_then_enospc(cio._write_fd, lambda p: True))
    with pytest.raises(RunDirWriteError, match=r"cannot write .*last\.ckpt: No space left on device \(ENOSPC\)"):
        AtomicCheckpointIO().save_checkpoint(checkpoint, last)
    assert last.read_bytes() == before  # untouched, and still loadable
    assert read_checkpoint(last)["global_step"] == 4  # 2 epochs of 2 steps
    assert sorted(p.name for p in last.parent.iterdir() if p.name.startswith(".")) == []  # no temporary left


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "sub" / "metrics.json"
    write_atomic(target, "first")
    write_atomic(target, b"second")
    assert target.read_text() == "second" and [p.name for p in target.parent.iterdir()] == ["metrics.json"]


def test_full_disk_during_training_is_one_line_and_keeps_last_checkpoint(tmp_path, monkeypatch, capsys):
    """The second write of last.ckpt (end of epoch 2) fails: exit 1, one line naming the file and
    the cause, the epoch-1 last.ckpt survives and the run resumes from it."""
    runs = tmp_path / "runs"
    seen = {"last": 0}

    def second_last(path):
        if path.name.startswith(".last.ckpt"):
            seen["last"] += 1
            return seen["last"] == 2
        return False
    monkeypatch.setattr(cio, "_write_fd", _half_then_enospc(cio._write_fd, second_last))
    assert main(["train", "gmm-moons", "--max-epochs", "3", "--runs-dir", str(runs), *TINY]) == 1
    err = _one_line(capsys)
    run_dir = runs / "gmm-moons" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    assert str(last) in err and "No space left on device" in err, err
    assert read_checkpoint(last)["global_step"] == 2  # the end of epoch 1, intact
    monkeypatch.undo()
    assert main(["train", "gmm-moons", "--resume", str(run_dir), "--runs-dir", str(runs), *TINY[-3:]]) == 0
    assert read_checkpoint(last)["global_step"] == 6


@pytest.mark.parametrize("name", ["config.yaml", "metrics.json"])
def test_full_disk_writing_run_files_is_one_line(run_dir, monkeypatch, capsys, name):
    """Resuming rewrites config.yaml and metrics.json: a full disk names the file; the old ones and
    last.ckpt survive."""
    target = run_dir / name
    before = target.read_bytes()
    monkeypatch.setattr(cio, "_write_fd", _half_then_enospc(cio._write_fd, lambda p: p.name.startswith(f".{name}")))
    code = main(["train", "gmm-moons", "--resume", str(run_dir), "--max-epochs", "3", *TINY[-3:]])
    err = _one_line(capsys)
    assert code == 1 and f"cannot write {target}: No space left on device" in err, err
    assert target.read_bytes() == before
    # config.yaml fails before training resumed; metrics.json after the third epoch was checkpointed
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == (4 if name == "config.yaml" else 6)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupted_last_checkpoint_is_one_line_for_resume_eval_and_sample(run_dir, tmp_path, capsys, damage):
    last = run_dir / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 3] if damage == "truncate" else b"\x00not a checkpoint" * 100)
    commands = [
        ["train", "gmm-moons", "--resume", str(run_dir), "--no-progress"],
        ["train", "gmm-moons", "--resume", str(last), "--no-progress"],
        ["eval", str(run_dir), "--no-progress"],
        ["sample", str(run_dir), "-n", "4", "-o", str(tmp_path / "s.png")],
    ]
    for argv in commands:
        assert main(argv) == 1, argv
        err = _one_line(capsys)
        assert str(last) in err and ("truncated or corrupted" in err or "not a readable checkpoint" in err), err
    assert not (tmp_path / "s.png").exists()


def test_checkpoint_is_written_by_the_atomic_writer(run_dir):
    """The trainer the runner builds uses AtomicCheckpointIO (the protection the tests above rely on)."""
    from zoo_core.runner import RunOptions, build_trainer

    config = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["zoo"]["config"]
    trainer = build_trainer(RunOptions(accelerator="cpu", progress=False), config, run_dir, training=True)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["zoo_rng"]["per_rank"]


def test_last_checkpoint_is_the_latest_epoch_when_validation_is_sparse(tmp_path):
    """Validation every 5 epochs must not leave last.ckpt at epoch 5 of a 7-epoch run."""
    from conftest import run_zoo

    result = run_zoo("train", "gmm-moons", "--set", "train.check_val_every_n_epoch=5", "--max-epochs", "7",
                     "--set", "model.fit=gradient", "--set", "train.batch_size=500",
                     "--runs-dir", tmp_path, "--no-progress", "--accelerator", "cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    checkpoint = torch.load(tmp_path / "gmm-moons" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 6 and checkpoint["global_step"] == 7 * 40


def test_resume_removes_temporary_files_of_a_process_killed_mid_save(run_dir):
    stale = run_dir / "checkpoints" / ".last.ckpt.tmp-999999"
    stale.write_bytes(b"half a checkpoint")
    assert main(["train", "gmm-moons", "--resume", str(run_dir), "--max-epochs", "3", *TINY]) == 0
    assert not stale.exists() and read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["epoch"] == 2


def test_rng_states_round_trip_through_a_weights_only_checkpoint_and_the_older_list_form(tmp_path):
    import random

    import numpy as np

    from zoo_core.checkpoint_io import collect_rng_states, set_rng_states

    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    states = collect_rng_states()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    torch.save(states, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
    assert isinstance(loaded["python"]["state"], torch.Tensor) and loaded["python"]["state"].shape == (625,)
    older = {**loaded, "python": {**loaded["python"], "state": loaded["python"]["state"].tolist()}}
    for form in (loaded, older):
        random.seed(7), np.random.seed(7), torch.manual_seed(7)
        set_rng_states(form)
        assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected
