"""A NaN loss stops training with a message naming the step, keeping the last good checkpoint."""
import types

import pytest
import torch

from zoo_core.errors import TrainingDiverged
from zoo_core.hookspecs import hookimpl
from zoo_core.runner import RunOptions, train
from zoo_core.zoo import Zoo
from zoo_gmm import GMM

NAN_AT_STEP = 5


class NaNAfterFiveSteps(GMM):
    """A GMM whose loss turns NaN at a known step (what a diverging run looks like)."""

    family = "nan-gmm"

    def loss(self, x, context=None):
        loss = super().loss(x, context)
        return loss * float("nan") if self.global_step >= NAN_AT_STEP else loss


@pytest.fixture
def nan_family(tmp_path):
    """(a Zoo with the NaN family, a registry file with its entry)."""
    module = types.ModuleType("nan_plugin")
    module.register_families = hookimpl(lambda register: register(NaNAfterFiveSteps))
    zoo = Zoo(extra_plugins={"nan_plugin": module})
    registry = tmp_path / "registry.yaml"
    registry.write_text("nan-moons:\n  family: nan-gmm\n  data: {name: moons, n_train: 1000}\n"
                        "  model: {n_components: 4}\n  train: {max_epochs: 10, batch_size: 500}\n")
    return zoo, registry


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(nan_family, tmp_path, capsys):
    zoo, registry = nan_family
    runs = tmp_path / "runs"
    opts = RunOptions(registry_files=[str(registry)], runs_dir=str(runs), accelerator="cpu", progress=False)
    with pytest.raises(TrainingDiverged) as info:
        train(zoo, "nan-moons", opts)
    message = str(info.value)
    assert f"at step {NAN_AT_STEP}" in message and "NaN" in message and "nan-gmm" in message
    last = runs / "nan-moons" / "version_0" / "checkpoints" / "last.ckpt"
    assert str(last) in message
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 4  # the end of epoch 2: the last step before the NaN
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())


def test_cli_reports_divergence_in_one_line(nan_family, tmp_path, capsys):
    from zoo_core.cli import main

    zoo, registry = nan_family
    code = main(["train", "nan-moons", "--registry", str(registry), "--runs-dir", str(tmp_path / "r"),
                 "--accelerator", "cpu", "--no-progress"], zoo=zoo)
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and f"step {NAN_AT_STEP}" in err and "Traceback" not in err


# ---- gradients: a finite loss whose gradient is NaN names the parameter -------------------------
class NaNGradientAtStepFive(GMM):
    """The loss stays finite, but from step 5 d(loss)/d(means) is NaN: 0 * sqrt(0) has gradient 0 * inf."""

    family = "nangrad-gmm"

    def loss(self, x, context=None):
        loss = super().loss(x, context)
        if self.global_step >= NAN_AT_STEP:
            loss = loss + 0.0 * torch.sqrt(0.0 * self.means.sum())  # value 0, gradient NaN
        return loss


class DivergesAtHighLearningRate(GMM):
    """What a too-large learning rate looks like, made deterministic: from step 5 the loss is NaN
    while the optimiser's learning rate is above 0.05."""

    family = "lr-gmm"

    def loss(self, x, context=None):
        loss = super().loss(x, context)
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        return loss * float("nan") if self.global_step >= NAN_AT_STEP and lr > 0.05 else loss


def _plugin(*families) -> Zoo:
    """A Zoo with ``families`` registered by one extra plugin."""
    def register_families(register):
        for family in families:
            register(family)

    module = types.ModuleType("divergence_plugin")
    module.register_families = hookimpl(register_families)
    return Zoo(extra_plugins={"divergence_plugin": module})


def test_nan_gradient_names_parameter_group_and_step(tmp_path):
    zoo = _plugin(NaNGradientAtStepFive)
    registry = tmp_path / "registry.yaml"
    registry.write_text("nangrad-moons:\n  family: nangrad-gmm\n  data: {name: moons, n_train: 1000}\n"
                        "  model: {n_components: 4}\n  train: {max_epochs: 10, batch_size: 500}\n")
    runs = tmp_path / "runs"
    with pytest.raises(TrainingDiverged) as info:
        train(zoo, "nangrad-moons", RunOptions(registry_files=[str(registry)], runs_dir=str(runs), accelerator="cpu",
                                          progress=False))
    message = str(info.value)
    assert "gradient" in message and f"step {NAN_AT_STEP}" in message
    assert "'means'" in message and "optimizer 0, parameter group 0" in message and "was NaN" in message
    assert "logits" not in message  # only the parameter whose gradient went bad is named
    checkpoint = torch.load(runs / "nangrad-moons" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == NAN_AT_STEP - 1
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())


def test_nan_weights_are_named_and_never_checkpointed():
    model = GMM(data={"name": "moons", "event_shape": [2], "representation": "continuous"}, n_components=3)
    with torch.no_grad():
        model.log_diag[1, 0] = float("inf")
    with pytest.raises(TrainingDiverged, match=r"loss became (NaN|infinite).*non-finite weights: 'log_diag'"):
        model.check_finite(torch.tensor(float("nan")), "loss")


def test_diverged_run_resumes_from_last_good_checkpoint_with_a_saner_learning_rate(tmp_path):
    """--resume keeps the saved config and applies --set on top; the optimiser state restored
    from the checkpoint must not bring the old learning rate back."""
    zoo = _plugin(DivergesAtHighLearningRate)
    registry = tmp_path / "registry.yaml"
    registry.write_text("lr-moons:\n  family: lr-gmm\n  data: {name: moons, n_train: 1000}\n  model: {n_components: 4}\n"
                        "  optim: {lr: 0.1}\n  train: {max_epochs: 5, batch_size: 500}\n"
                        "  eval: {metrics: [nll], num_samples: 4}\n")
    runs = tmp_path / "runs"
    opts = dict(registry_files=[str(registry)], runs_dir=str(runs), accelerator="cpu", progress=False)
    with pytest.raises(TrainingDiverged) as info:
        train(zoo, "lr-moons", RunOptions(**opts))
    run_dir = runs / "lr-moons" / "version_0"
    assert f"--resume {run_dir}" in str(info.value)
    metrics = train(zoo, "lr-moons", RunOptions(**opts, resume=str(run_dir), overrides=["optim.lr=0.01"]))
    assert metrics["steps"] == 10 and metrics["epochs"] == 5  # went on from step 4 to the end
    assert torch.isfinite(torch.tensor(metrics["test"]["nll_nats"]))
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.01)
    assert checkpoint["zoo"]["config"]["optim"]["lr"] == 0.01


def test_gan_manual_optimisation_names_the_discriminator_parameter(tmp_path):
    """Manual optimisation (two optimisers): the check runs before each optimiser's step."""
    from zoo_gan import GAN

    class NaNDiscriminatorGradient(GAN):
        family = "nangrad-gan"

        def discriminator_loss(self, real, fake, y=None):
            d_loss, value = super().discriminator_loss(real, fake, y)
            if int(self.d_step_count) >= 3:
                last = list(self.discriminator.parameters())[-1]
                d_loss = d_loss + 0.0 * torch.sqrt(0.0 * last.sum())  # value unchanged, gradient NaN
            return d_loss, value

    zoo = _plugin(NaNDiscriminatorGradient)
    registry = tmp_path / "registry.yaml"
    registry.write_text("nangan-moons:\n  family: nangrad-gan\n  data: {name: moons, n_train: 1000}\n"
                        "  model: {latent_dim: 2, g_hidden: [8], d_hidden: [8]}\n"
                        "  train: {max_epochs: 5, batch_size: 500}\n")
    with pytest.raises(TrainingDiverged) as info:
        train(zoo, "nangan-moons", RunOptions(registry_files=[str(registry)], runs_dir=str(tmp_path / "runs"),
                                         accelerator="cpu", progress=False))
    message = str(info.value)
    assert "gradient of 'discriminator." in message and "optimizer 0, parameter group 0" in message
    assert "step 6" in message  # 3 batches of two optimiser steps (D then G) each were applied
