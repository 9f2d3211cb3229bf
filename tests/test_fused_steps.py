"""train.fused_steps: k optimiser steps per Lightning step on k batches handed over at once
(zoo_core/fused.py). The updates are those of k = 1, bit for bit: same batches, order and noise,
same reparameterisation noise, gradient clipping, cosine schedule and max_steps; a killed fused
run resumes exactly; families that cannot fuse are refused in one line."""
import signal

import pytest
import torch

from test_resume import VAE, _kill_after_first_checkpoint, _metrics, _position, _start
from zoo_core.cli import main

# VAE (noise at every step) with gradient clipping and a cosine schedule: 20 batches per epoch, so
# groups of 3 leave a group of 2 at each epoch's end.
CLIPPED = [*VAE, "--set", "train.gradient_clip_val=0.5", "--set", "optim.scheduler=cosine"]


def _run(tmp_path, name, *extra):
    assert main(["train", *CLIPPED, *extra, "--runs-dir", str(tmp_path / name)]) == 0
    return tmp_path / name / "vae-moons" / "version_0"


def test_fused_steps_take_the_same_steps_bit_for_bit(tmp_path):
    plain = _run(tmp_path, "plain")
    fused = _run(tmp_path, "fused", "--set", "train.fused_steps=3")
    a, b = _metrics(plain), _metrics(fused)
    assert a["steps"] == b["steps"] == 60
    assert a["ddp"]["weights_sha256_per_rank"] == b["ddp"]["weights_sha256_per_rank"]
    assert a["test"]["nll_nats"] == b["test"]["nll_nats"]
    sched = [torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["lr_schedulers"][0] for d in (plain, fused)]
    assert sched[0]["T_max"] == sched[1]["T_max"] == 60 and sched[0]["last_epoch"] == sched[1]["last_epoch"] == 60


def test_fused_steps_stop_at_max_steps_inside_a_group(tmp_path):
    run = _run(tmp_path, "fused", "--set", "train.fused_steps=4", "--max-steps", "10")
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
    assert _metrics(run)["steps"] == 10


def test_killed_fused_run_resumes_exactly(tmp_path):
    reference = _run(tmp_path, "plain")
    fused = [*CLIPPED, "--set", "train.fused_steps=3"]
    runs = tmp_path / "killed"
    run_dir = runs / "vae-moons" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    proc = _start(fused, runs)
    _kill_after_first_checkpoint(proc, last)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    step, loader = _position(last)
    assert 0 < step < 60 and step % 20 != 0 and loader["group"] == 3, (step, loader)
    assert main(["train", *fused, "--runs-dir", str(runs), "--resume", str(run_dir)]) == 0
    a, b = _metrics(reference), _metrics(run_dir)
    assert a["ddp"]["weights_sha256_per_rank"] == b["ddp"]["weights_sha256_per_rank"]
    assert a["test"]["nll_nats"] == b["test"]["nll_nats"]
    # resuming mid-epoch with another group size is refused, not silently misaligned
    proc = _start(fused, tmp_path / "again")
    _kill_after_first_checkpoint(proc, tmp_path / "again" / "vae-moons" / "version_0" / "checkpoints" / "last.ckpt")
    proc.wait(timeout=60)
    code = main(["train", *CLIPPED, "--set", "train.fused_steps=2", "--runs-dir", str(tmp_path / "again"),
                 "--resume", str(tmp_path / "again" / "vae-moons" / "version_0")])
    assert code != 0


@pytest.mark.parametrize("entry, why", [("gan-moons", "steps its own optimisers"),
                                        ("diffusion-moons", "overrides on_train_batch_end")])
def test_families_that_cannot_fuse_are_refused_in_one_line(tmp_path, capsys, entry, why):
    code = main(["train", entry, "--set", "train.fused_steps=2", "--max-steps", "2", "--accelerator", "cpu",
                 "--no-progress", "--runs-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert f"train.fused_steps: 2: family '{entry.split('-')[0]}' {why}" in err[0] and "Traceback" not in err[0]


def test_fused_steps_must_be_a_positive_integer(tmp_path, capsys):
    assert main(["train", "vae-moons", "--set", "train.fused_steps=0", "--runs-dir", str(tmp_path)]) == 1
    assert "key 'train.fused_steps': expected a positive integer" in capsys.readouterr().err
