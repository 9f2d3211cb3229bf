"""Killed runs resume exactly: SIGKILL mid-epoch, `zoo train ENTRY --resume RUN_DIR`, and the final
weights (sha256) and test NLL equal those of an uninterrupted run with the same seed, bit for bit.

The VAE is the strong case: every step draws noise (reparameterisation), so a resume that did
not restore the RNG states, or restarted the epoch instead of continuing at the next batch,
ends with different weights."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import zoo_env
from zoo_core.cli import main

# 1000 examples in batches of 50: 20 steps per epoch, 3 epochs; last.ckpt every 4 steps.
VAE = ["vae-moons", "--set", "data.n_train=1000", "--set", "model.hidden=[32,32]", "--set", "train.max_epochs=3",
       "--set", "train.batch_size=50", "--set", "train.checkpoint_every_n_steps=4", "--set", "eval.iw_samples=4",
       "--set", "eval.metrics=[nll]", "--set", "eval.num_samples=4", "--accelerator", "cpu", "--no-progress"]
STEPS_PER_EPOCH = 20


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def _start(args, runs: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "zoo_core", "train", *args, "--runs-dir", str(runs)]
    return subprocess.Popen(cmd, env=zoo_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_after_first_checkpoint(proc: subprocess.Popen, last: Path, victim=None, timeout=300) -> None:
    """Wait until training has written last.ckpt (mid-epoch, every 4 steps), then SIGKILL."""
    deadline = time.monotonic() + timeout
    while not last.exists():
        assert proc.poll() is None, f"the run ended before it was killed: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    os.kill(victim() if victim else proc.pid, signal.SIGKILL)


def _position(last: Path) -> tuple[int, dict]:
    checkpoint = torch.load(last, weights_only=True)
    return checkpoint["global_step"], checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]


def _same_result(a: Path, b: Path) -> None:
    ma, mb = _metrics(a), _metrics(b)
    assert ma["steps"] == mb["steps"] == 3 * STEPS_PER_EPOCH // ma["ddp"]["world_size"]
    assert ma["ddp"]["weights_sha256_per_rank"] == mb["ddp"]["weights_sha256_per_rank"]
    assert ma["test"]["nll_nats"] == mb["test"]["nll_nats"]  # bit-identical on CPU, not approximately


def test_sigkilled_run_resumes_mid_epoch_bit_identically(tmp_path):
    assert main(["train", *VAE, "--runs-dir", str(tmp_path / "ref")]) == 0
    reference = tmp_path / "ref" / "vae-moons" / "version_0"

    runs = tmp_path / "killed"
    run_dir = runs / "vae-moons" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    proc = _start(VAE, runs)
    _kill_after_first_checkpoint(proc, last)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (run_dir / "metrics.json").exists()
    step, loader = _position(last)
    assert 0 < step < 3 * STEPS_PER_EPOCH and step % STEPS_PER_EPOCH != 0, "the kill should land mid-epoch"
    assert loader == {"epoch": step // STEPS_PER_EPOCH, "batches_done": step % STEPS_PER_EPOCH}

    assert main(["train", *VAE, "--runs-dir", str(runs), "--resume", str(run_dir)]) == 0
    _same_result(reference, run_dir)


def test_killed_run_with_a_cosine_schedule_resumes_mid_epoch_bit_identically(tmp_path):
    """A schedule sized by trainer.estimated_stepping_batches makes Lightning build the training
    loader before it restores its loops, and so skip restoring the loader's position; the
    datamodule's own state (restored first) must still put the run at the right batch."""
    args = [*VAE, "--set", "optim.scheduler=cosine"]
    assert main(["train", *args, "--runs-dir", str(tmp_path / "ref")]) == 0
    runs = tmp_path / "killed"
    run_dir = runs / "vae-moons" / "version_0"
    proc = _start(args, runs)
    _kill_after_first_checkpoint(proc, run_dir / "checkpoints" / "last.ckpt")
    assert proc.wait(timeout=60) == -signal.SIGKILL
    step, _ = _position(run_dir / "checkpoints" / "last.ckpt")
    assert 0 < step < 3 * STEPS_PER_EPOCH and step % STEPS_PER_EPOCH != 0, "the kill should land mid-epoch"
    assert main(["train", *args, "--runs-dir", str(runs), "--resume", str(run_dir)]) == 0
    _same_result(tmp_path / "ref" / "vae-moons" / "version_0", run_dir)


def test_old_checkpoint_without_resume_state_still_loads_and_resumes(tmp_path):
    """Checkpoints written before mid-epoch resume (no RNG states, no loader position, no
    train.checkpoint_every_n_steps in their config) still evaluate and resume."""
    args = ["gmm-moons", "--set", "data.n_train=1000", "--set", "train.batch_size=500", "--set", "model.n_components=4",
            "--set", "eval.metrics=[nll]", "--set", "eval.num_samples=4", "--accelerator", "cpu", "--no-progress"]
    runs = tmp_path / "runs"
    assert main(["train", *args, "--max-epochs", "2", "--runs-dir", str(runs)]) == 0
    run_dir = runs / "gmm-moons" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    del checkpoint["zoo_rng"]
    del checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    del checkpoint["zoo"]["config"]["train"]["checkpoint_every_n_steps"]
    torch.save(checkpoint, last)
    assert main(["eval", str(run_dir), "--no-progress"]) == 0
    assert main(["train", *args, "--max-epochs", "3", "--runs-dir", str(runs), "--resume", str(run_dir)]) == 0
    assert torch.load(last, weights_only=True)["global_step"] == 6


def test_ddp_rank_killed_then_resumed_with_two_processes_matches_uninterrupted(tmp_path):
    """Two CPU processes (gloo, Lightning's launcher). SIGKILL the child rank: the job must exit
    (Lightning's launcher watches its children, and gloo reports the lost peer to rank 0), not hang.
    Resuming with two processes ends where an uninterrupted two-process run ends."""
    ddp = [*VAE, "--devices", "2"]
    ref = subprocess.run([sys.executable, "-m", "zoo_core", "train", *ddp, "--runs-dir", str(tmp_path / "ref")],
                         env=zoo_env(), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]

    runs = tmp_path / "killed"
    run_dir = runs / "vae-moons" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    proc = _start(ddp, runs)

    def child_rank() -> int:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 1, children
        return int(children[0])
    _kill_after_first_checkpoint(proc, last, victim=child_rank)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the surviving rank hung after its peer was killed")
    assert proc.returncode != 0
    if proc.returncode == 1:  # rank 0 saw the lost peer before the launcher's watchdog killed it
        assert "process of this 2-process run was lost" in err.strip().splitlines()[-1], err[-2000:]
    step, loader = _position(last)
    assert 0 < step < 3 * STEPS_PER_EPOCH // 2

    resumed = subprocess.run([sys.executable, "-m", "zoo_core", "train", *ddp, "--runs-dir", str(runs), "--resume",
                              str(run_dir)], env=zoo_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _same_result(tmp_path / "ref" / "vae-moons" / "version_0", run_dir)


def test_train_batches_order_depends_on_seed_and_epoch_only_and_skip_resumes_exactly():
    from zoo_core.data.base import TrainBatches

    full = [b for _, _, b in TrainBatches(103, 10, seed=5)]
    assert torch.equal(torch.sort(torch.cat(full)).values, torch.arange(103))  # a permutation, last batch of 3
    again = TrainBatches(103, 10, seed=5)
    again.set_epoch(0)
    assert all(torch.equal(a, b) for a, b in zip(full, (b for _, _, b in again)))
    again.set_epoch(1)
    assert not torch.equal(torch.cat([b for _, _, b in again]), torch.cat(full))  # a new order each epoch
    resumed = TrainBatches(103, 10, seed=5)
    resumed.skip(4)
    rest = list(resumed)
    assert [n for _, n, _ in rest] == list(range(4, 11))
    assert all(torch.equal(a, b) for a, (_, _, b) in zip(full[4:], rest))
    assert len(list(resumed)) == 11  # the skip applies to one pass only
    # two ranks: disjoint halves of one padded permutation, as DistributedSampler shards
    ranks = [torch.cat([b for _, _, b in TrainBatches(103, 10, seed=5, num_replicas=2, rank=r)]) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 52 and set(torch.cat(ranks).tolist()) == set(range(103))
