"""A NaN loss stops training with a message naming the step, keeping the last good checkpoint."""
import types

import pytest
import torch

import zoo_core.plugins as plugins_module
from zoo_core.errors import TrainingDiverged
from zoo_core.hookspecs import hookimpl
from zoo_core.plugins import ZooPlugins
from zoo_core.runner import RunOptions, train
from zoo_gmm import GMM

NAN_AT_STEP = 5


class NaNAfterFiveSteps(GMM):
    """A GMM whose loss turns NaN at a known step (what a diverging run looks like)."""

    family = "nan-gmm"

    def loss(self, x):
        loss = super().loss(x)
        return loss * float("nan") if self.global_step >= NAN_AT_STEP else loss


@pytest.fixture
def nan_family(monkeypatch, tmp_path):
    module = types.ModuleType("nan_plugin")
    module.register_families = hookimpl(lambda register: register(NaNAfterFiveSteps))
    monkeypatch.setattr(plugins_module, "_PLUGINS", ZooPlugins(extra_plugins={"nan_plugin": module}))
    registry = tmp_path / "registry.yaml"
    registry.write_text("nan-moons:\n  family: nan-gmm\n  data: {name: moons, n_train: 1000}\n"
                        "  model: {n_components: 4}\n  train: {max_epochs: 10, batch_size: 500}\n")
    return registry


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(nan_family, tmp_path, capsys):
    runs = tmp_path / "runs"
    opts = RunOptions(registry_files=[str(nan_family)], runs_dir=str(runs), accelerator="cpu", progress=False)
    with pytest.raises(TrainingDiverged) as info:
        train("nan-moons", opts)
    message = str(info.value)
    assert f"at step {NAN_AT_STEP}" in message and "NaN" in message and "nan-gmm" in message
    last = runs / "nan-moons" / "version_0" / "checkpoints" / "last.ckpt"
    assert str(last) in message
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 4  # the end of epoch 2: the last step before the NaN
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())


def test_cli_reports_divergence_in_one_line(nan_family, tmp_path, capsys):
    from zoo_core.cli import main

    code = main(["train", "nan-moons", "--registry", str(nan_family), "--runs-dir", str(tmp_path / "r"),
                 "--accelerator", "cpu", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and f"step {NAN_AT_STEP}" in err and "Traceback" not in err
