"""train.fused_steps: k optimiser steps per Lightning step on k batches handed over at once
(zoo_core/fused.py). The updates are those of k = 1, bit for bit: same batches, order and noise,
same reparameterisation noise, gradient clipping, cosine schedule and max_steps; a killed fused
run resumes exactly; families that cannot fuse are refused in one line."""
import signal
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.precision import MixedPrecision, Precision
from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy

from test_divergence import NAN_AT_STEP, NaNAfterFiveSteps, NaNGradientAtStepFive, _plugin
from test_resume import VAE, _kill_after_first_checkpoint, _metrics, _position, _start
from zoo_core.cli import main
from zoo_core.errors import TrainingDiverged
from zoo_core.runner import RunOptions, train as run_training
from zoo_core.fused import direct_steps
from zoo_core.model import GenerativeModel

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


@pytest.mark.parametrize("entry, extra", [
    ("gmm-moons", ["--set", "train.batch_size=500"]),
    # conditional: the label counts of the class prior and the labelled start, per batch of a group
    ("gmm-digits-cond", ["--set", "train.batch_size=100", "--set", "model.n_components=2"])])
def test_the_gradient_fit_of_a_mixture_fuses_bit_for_bit(tmp_path, entry, extra):
    args = [entry, *extra, "--set", "model.fit=gradient", "--set", "optim.scheduler=cosine", "--max-steps", "25",
            "--set", "eval.metrics=[nll]", "--accelerator", "cpu", "--no-progress"]
    runs = {}
    for k in (1, 4):
        assert main(["train", *args, "--set", f"train.fused_steps={k}", "--runs-dir", str(tmp_path / str(k))]) == 0
        runs[k] = _metrics(tmp_path / str(k) / entry / "version_0")
    assert runs[1]["steps"] == runs[4]["steps"] == 25
    assert runs[1]["ddp"]["weights_sha256_per_rank"] == runs[4]["ddp"]["weights_sha256_per_rank"]
    assert runs[1]["test"]["nll_nats"] == runs[4]["test"]["nll_nats"]


@pytest.mark.parametrize("entry, why", [("gan-moons", "steps its own optimisers"),
                                        ("gmm-moons", "steps its own optimisers"),  # EM, its default fit
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


class _Listener(pl.Callback):
    def on_after_backward(self, trainer, pl_module):
        pass


class _Plain(GenerativeModel):
    _log_prob = _sample = loss = None  # never called: only the class's hooks are looked at


class _ModelHook(_Plain):
    def on_before_backward(self, loss):
        pass


def _trainer(strategy=None, precision=None, callbacks=()):
    return SimpleNamespace(strategy=strategy or SingleDeviceStrategy(torch.device("cpu")),
                           precision_plugin=precision or Precision(), callbacks=list(callbacks))


def test_the_fused_loop_skips_lightnings_step_hooks_only_where_nothing_listens():
    model = _Plain.__new__(_Plain)
    assert direct_steps(_trainer(), model, GenerativeModel)
    assert direct_steps(_trainer(precision=MixedPrecision("bf16-mixed", "cpu")), model, GenerativeModel)
    # a callback or model hook around the step, loss scaling, or another strategy: Lightning's own path
    assert not direct_steps(_trainer(callbacks=[_Listener()]), model, GenerativeModel)
    assert not direct_steps(_trainer(), _ModelHook.__new__(_ModelHook), GenerativeModel)
    assert not direct_steps(_trainer(precision=MixedPrecision("16-mixed", "cpu")), model, GenerativeModel)
    assert not direct_steps(_trainer(strategy=DDPStrategy()), model, GenerativeModel)


def test_a_listening_callback_hears_every_fused_step(tmp_path):
    """With a callback on on_after_backward the fused loop goes through manual_backward: the hook runs
    once per optimiser step, not once per group."""
    import zoo_core

    heard = []

    class Count(pl.Callback):
        def on_after_backward(self, trainer, pl_module):
            heard.append(trainer.global_step)

    zoo = zoo_core.default_zoo()
    from zoo_core.runner.build import build_datamodule, build_model, fuse_training_steps

    config = zoo.resolve("vae-moons", ["train.fused_steps=3", "train.max_steps=7", "optim.scheduler=cosine"])
    datamodule = build_datamodule(zoo, config)
    model = build_model(zoo, config, datamodule)
    fuse_training_steps(config, datamodule, model)
    trainer = pl.Trainer(max_steps=7, accelerator="cpu", devices=1, callbacks=[Count()], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.fit(model, datamodule=datamodule)
    assert heard == list(range(7)) and model._direct_steps is False


@pytest.mark.parametrize("family, expected", [
    (NaNAfterFiveSteps, ["loss became NaN", f"at step {NAN_AT_STEP}"]),
    (NaNGradientAtStepFive, ["gradient", f"step {NAN_AT_STEP}", "'means'", "optimizer 0, parameter group 0"])])
def test_fused_steps_stop_a_diverging_run_as_unfused_ones_do(tmp_path, family, expected):
    """The fused loop's checks (one host sync for loss and gradients) name the same step and parameter,
    and the step is not applied: the last checkpoint holds finite weights."""
    zoo = _plugin(family)
    registry = tmp_path / "registry.yaml"
    registry.write_text(f"bad-moons:\n  family: {family.family}\n  data: {{name: moons, n_train: 1000}}\n"
                        "  model: {n_components: 4}\n  train: {max_epochs: 10, batch_size: 250, fused_steps: 3}\n")
    runs = tmp_path / "runs"
    with pytest.raises(TrainingDiverged) as info:
        run_training(zoo, "bad-moons", RunOptions(registry_files=[str(registry)], runs_dir=str(runs),
                                                  accelerator="cpu", progress=False))
    assert all(part in str(info.value) for part in expected), str(info.value)
    checkpoint = torch.load(runs / "bad-moons" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4  # the end of the first epoch (4 batches), before step 5
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())
