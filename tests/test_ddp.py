"""Real multi-process training and evaluation on CPU (gloo): Lightning's launcher and torchrun."""
import json
import subprocess
import sys

import pytest

from conftest import run_zoo, zoo_env


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("ddp")
    result = run_zoo("train", "gmm-moons", "--accelerator", "cpu", "--devices", "2", "--max-epochs", "2",
                     "--runs-dir", runs, "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    return runs / "gmm-moons" / "version_0"


def test_lightning_ddp_ranks_end_with_identical_weights(ddp_run):
    ddp = _metrics(ddp_run)["ddp"]
    assert ddp["world_size"] == 2
    assert len(set(ddp["weights_sha256_per_rank"])) == 1 and ddp["identical"]
    # one run directory for both processes
    assert sorted(p.name for p in ddp_run.parent.iterdir()) == ["version_0"]


def test_two_process_eval_equals_single_process(ddp_run):
    single = run_zoo("eval", ddp_run, "--accelerator", "cpu", "--no-progress")
    double = run_zoo("eval", ddp_run, "--accelerator", "cpu", "--devices", "2", "--no-progress")
    assert single.returncode == 0 and double.returncode == 0, (single.stderr[-2000:], double.stderr[-2000:])
    one = json.loads(single.stdout[single.stdout.index("{"):])["test"]
    two = json.loads(double.stdout[double.stdout.index("{"):])["test"]
    assert one["num_examples"] == two["num_examples"] == 5000  # no padding, no duplicates
    assert two["nll_nats"] == pytest.approx(one["nll_nats"], rel=1e-9, abs=1e-12)
    # and training's own evaluation (2 processes) agrees as well
    assert _metrics(ddp_run)["test"]["nll_nats"] == pytest.approx(one["nll_nats"], rel=1e-9)


def test_torchrun_launch(tmp_path):
    """torchrun starts both processes itself; the runner takes devices from it and shares one run dir."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
           "-m", "zoo_core", "train", "vae-moons", "--accelerator", "cpu", "--max-epochs", "1",
           "--set", "data.n_train=4000", "--set", "eval.iw_samples=10", "--runs-dir", str(tmp_path),
           "--no-progress"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=zoo_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "vae-moons").iterdir())
    assert len(runs) == 1
    ddp = _metrics(runs[0])["ddp"]
    assert ddp["world_size"] == 2 and ddp["identical"]


def test_fused_steps_under_ddp_take_the_steps_of_unfused_ddp(tmp_path):
    """Two processes, 3 optimiser steps per Lightning step: every backward re-arms DDP's gradient
    synchronisation (Lightning's manual_backward), so the weights equal unfused DDP's bit for bit."""
    digests = {}
    for k in (1, 3):
        result = run_zoo("train", "vae-moons", "--accelerator", "cpu", "--devices", "2", "--max-steps", "20",
                         "--set", f"train.fused_steps={k}", "--set", "eval.metrics=[nll]",
                         "--runs-dir", tmp_path / str(k), "--no-progress")
        assert result.returncode == 0, result.stderr[-3000:]
        ddp = _metrics(tmp_path / str(k) / "vae-moons" / "version_0")["ddp"]
        assert ddp["world_size"] == 2 and ddp["identical"]
        digests[k] = ddp["weights_sha256_per_rank"][0]
    assert digests[1] == digests[3]
