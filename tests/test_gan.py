"""Numerical checks of the GAN family: the optimal discriminator and the value of the game at the
optimum (-log 4 + 2 JSD) on known Gaussians, the WGAN-GP penalty and critic, spectral
normalisation, the k-to-1 discriminator schedule of manual optimisation, divergence detection,
checkpoints, and a two-process DDP run that must end with identical weights and buffers.
Seeded and small."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

try:
    import zoo_gan
except ImportError:  # an uninstalled checkout: the package lives under plugins/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
    import zoo_gan

from conftest import run_zoo, zoo_env
from zoo_core.data.spec import DataSpec
from zoo_core.errors import NoLikelihoodError, TrainingDiverged
from zoo_gan import GAN
from zoo_gan.model import game_value, gradient_penalty

TOY = DataSpec("toy-2d", (2,), "continuous").to_dict()
BINARY = DataSpec("tiny-binary", (1, 8, 8), "binarized").to_dict()
DEQUANTIZED = DataSpec("tiny-images", (1, 8, 8), "dequantized", num_levels=17).to_dict()
MU = 1.5  # p_data = N(0, I_2), p_g = N((MU, 0), I_2)


class Shift(nn.Module):
    """A fixed generator: G(z) = z + (MU, 0), so p_g = N((MU, 0), I) for z ~ N(0, I_2)."""

    def forward(self, z):
        return z + torch.tensor([MU, 0.0], dtype=z.dtype)


class OptimalLogit(nn.Module):
    """logit of D*(x) = p_data / (p_data + p_g): log N(x; 0, I) - log N(x; (MU, 0), I), scaled/shifted."""

    def __init__(self, scale: float = 1.0, shift: float = 0.0):
        super().__init__()
        self.scale, self.shift = scale, shift

    def forward(self, x):
        return self.scale * (-MU * x[:, 0] + 0.5 * MU**2) + self.shift


def jsd_1d_unit_gaussians(mu: float) -> float:
    """JSD(N(0, 1) || N(mu, 1)) in nats by quadrature (the 2-D case reduces to the shift axis)."""
    t = torch.linspace(-14.0, 14.0 + mu, 400_001, dtype=torch.float64)
    p = torch.exp(-0.5 * t**2) / math.sqrt(2 * math.pi)
    q = torch.exp(-0.5 * (t - mu) ** 2) / math.sqrt(2 * math.pi)
    m = 0.5 * (p + q)
    integrand = 0.5 * p * torch.log(p / m) + 0.5 * q * torch.log(q / m)
    return float(torch.trapezoid(integrand, t))


def fixed_generator_gan(**kwargs) -> GAN:
    model = GAN(TOY, {"lr": 2e-3, "betas": [0.5, 0.999]}, latent_dim=2, **kwargs)
    model.generator = Shift()
    return model


def test_value_at_the_optimal_discriminator_is_minus_log4_plus_2jsd():
    """V(D*, G) = -log 4 + 2 JSD(p_data || p_g), computed by the model's own loss; D* is the maximiser."""
    assert game_value(torch.zeros(5), torch.zeros(7)).item() == pytest.approx(-math.log(4), abs=1e-7)  # D = 1/2
    model = fixed_generator_gan().eval()
    model.discriminator = OptimalLogit()
    n = 400_000
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    with torch.no_grad():
        value = model.loss(x).item()
        # the two terms per sample, for the Monte Carlo standard error (same z under the same seed)
        torch.manual_seed(1)
        fake = model.generate(model.noise(n))
        a = -torch.nn.functional.softplus(-model.discriminate(x)).double()  # log D*(x)
        b = -torch.nn.functional.softplus(model.discriminate(fake)).double()  # log(1 - D*(G(z)))
    assert value == pytest.approx((a.mean() + b.mean()).item(), abs=1e-5)
    se = math.sqrt(a.var().item() / n + b.var().item() / n)
    jsd = jsd_1d_unit_gaussians(MU)
    expected = -math.log(4) + 2 * jsd
    assert abs(value - expected) < 4 * se + 1e-4, (value, expected, se)
    assert 0.1 < jsd < math.log(2)  # a non-trivial case

    # Any other discriminator scores less on the same samples (common random numbers).
    for scale, shift in ((0.7, 0.0), (1.3, 0.0), (1.0, 0.3), (1.0, -0.3)):
        model.discriminator = OptimalLogit(scale, shift)
        torch.manual_seed(1)
        with torch.no_grad():
            other = model.loss(x).item()
        assert other < value - 1e-3, (scale, shift, other, value)


def test_discriminator_steps_learn_the_optimal_discriminator():
    """The discriminator loss, descended with Adam against a fixed p_g, drives D towards
    D* = p_data / (p_data + p_g) and the value towards -log 4 + 2 JSD."""
    torch.manual_seed(2)
    model = fixed_generator_gan(d_hidden=[64, 64])
    opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=2e-3, betas=(0.5, 0.999))
    for _ in range(400):
        x = torch.randn(512, 2)
        with torch.no_grad():
            fake = model.generate(model.noise(512))
        d_loss, value = model.discriminator_loss(x, fake)
        assert d_loss.item() == pytest.approx(-value.item())  # D descends -V
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
    model.eval()
    grid = torch.stack(torch.meshgrid(torch.linspace(-1, 2.5, 8), torch.linspace(-1.5, 1.5, 7), indexing="ij"), -1)
    grid = grid.reshape(-1, 2)
    with torch.no_grad():
        learned = torch.sigmoid(model.discriminate(grid))
        optimal = torch.sigmoid(OptimalLogit()(grid))  # = p / (p + q)
        torch.manual_seed(3)
        value = model.loss(torch.randn(200_000, 2)).item()
    assert (learned - optimal).abs().max() < 0.08, (learned - optimal).abs().max()
    expected = -math.log(4) + 2 * jsd_1d_unit_gaussians(MU)
    assert expected - 0.02 < value < expected + 0.01, (value, expected)  # can only fall short of the max


def test_gradient_penalty_and_wasserstein_critic():
    # For a linear critic l(x) = w.x + b the penalty is (||w|| - 1)^2 exactly, wherever x_hat is.
    critic = nn.Linear(2, 1)
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([[3.0, 4.0]]))
    real, fake = torch.randn(10, 2), torch.randn(10, 2)
    gp = gradient_penalty(lambda x: critic(x).squeeze(-1), real, fake)
    assert gp.item() == pytest.approx(16.0, rel=1e-6)
    gp.backward()  # differentiable in the critic's parameters: d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    torch.testing.assert_close(critic.weight.grad, torch.tensor([[2 * 4 * 3 / 5, 2 * 4 * 4 / 5]]))

    # A WGAN-GP critic trained against a shifted Gaussian: the optimal 1-Lipschitz critic is linear,
    # l(x) = s x_1 with s = 1, giving W1(N(0, I), N((mu, 0), I)) = mu. The penalty is soft: over
    # linear critics, s mu - lambda (s - 1)^2 peaks at s* = 1 + mu / (2 lambda), so the penalised
    # critic's estimate is s* mu (slightly above W1), and that is what training must reach.
    torch.manual_seed(4)
    model = fixed_generator_gan(objective="wgan-gp", d_hidden=[64, 64])
    opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=1e-3, betas=(0.5, 0.9))
    for step in range(500):
        if step == 300:  # settle: a smaller step for the last 200
            opt_d.param_groups[0]["lr"] = 1e-4
        with torch.no_grad():
            fake = model.generate(model.noise(256))
        d_loss, _ = model.discriminator_loss(torch.randn(256, 2), fake)
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
    torch.manual_seed(5)
    with torch.no_grad():
        estimate = model.loss(torch.randn(100_000, 2)).item()  # mean l(x) - mean l(G(z)), fresh samples
    s_star = 1 + MU / (2 * model.gp_weight)
    assert estimate == pytest.approx(s_star * MU, abs=0.03), (estimate, s_star * MU)


def test_spectral_norm_bounds_every_discriminator_layer():
    torch.manual_seed(6)
    model = GAN(DEQUANTIZED, objective="hinge", arch="conv", width=8)
    assert model.use_spectral_norm
    buffers = [name for name, _ in model.discriminator.named_buffers()]
    assert any(name.endswith("_u") for name in buffers) and any(name.endswith("_v") for name in buffers)
    x = torch.rand(16, 1, 8, 8)
    for _ in range(30):  # power iterations run in training-mode forward passes
        model.discriminate(x)
    layers = [m for m in model.discriminator.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 3
    for layer in layers:
        w = layer.weight.reshape(len(layer.weight), -1)  # the normalised weight W / sigma(W)
        assert torch.linalg.matrix_norm(w, ord=2).item() == pytest.approx(1.0, abs=1e-3)
    assert not GAN(DEQUANTIZED, objective="nonsaturating", arch="conv", width=8).use_spectral_norm


def _fit(model: GAN, batches: list[torch.Tensor], max_steps: int = -1) -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=1, max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0)
    loader = torch.utils.data.DataLoader(torch.cat(batches), batch_size=len(batches[0]))  # the batches in order
    trainer.fit(model, train_dataloaders=loader)
    return trainer


@pytest.mark.parametrize("d_steps", [1, 3])
def test_manual_optimisation_takes_k_discriminator_steps_per_generator_step(d_steps):
    torch.manual_seed(7)
    model = GAN(TOY, {"lr": 1e-3}, d_steps=d_steps, g_hidden=[16], d_hidden=[16])
    batches = [torch.randn(32, 2) for _ in range(7)]
    trainer = _fit(model, batches)
    d_opt, g_opt = trainer.optimizers
    d_taken = {int(d_opt.state[p]["step"]) for p in model.discriminator.parameters()}
    g_taken = {int(g_opt.state[p]["step"]) for p in model.generator.parameters()} or {0}
    assert d_taken == {7} and g_taken == {7 // d_steps}
    assert int(model.d_step_count) == 7
    assert trainer.global_step == 7 + 7 // d_steps  # Lightning counts every optimiser step
    assert {"train/d_loss", "train/g_loss", "train/loss"} <= set(trainer.logged_metrics)


def test_a_non_finite_loss_stops_training_before_the_step():
    torch.manual_seed(8)
    model = GAN(TOY, {"lr": 1e-3}, g_hidden=[16], d_hidden=[16])
    batches = [torch.randn(32, 2) for _ in range(3)]
    batches[2][0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match="discriminator loss became NaN"):
        _fit(model, batches)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert int(model.d_step_count) == 2


@pytest.mark.parametrize("spec,arch", [(BINARY, "conv"), (BINARY, "mlp"), (DEQUANTIZED, "conv"), (TOY, "mlp")])
def test_interface(spec, arch):
    torch.manual_seed(9)
    model = GAN(spec, arch=arch, width=8, g_hidden=[16], d_hidden=[16]).eval()
    event = tuple(spec["event_shape"])
    assert model.family == "gan" and model.likelihood == "none"
    with pytest.raises(NoLikelihoodError, match="gan"):
        model.log_prob(torch.zeros(3, *event))
    assert "Fréchet" in str(model.no_likelihood())
    assert model.sample().shape == event
    assert model.sample(5).shape == (5, *event)
    assert model.sample((2, 3)).shape == (2, 3, *event)
    shown = model.sample_for_display(6)
    assert shown.shape == (6, *event)
    if spec is BINARY:
        assert set(model.sample(20).unique().tolist()) <= {0.0, 1.0}
        assert 0 < shown.min() and shown.max() < 1 and len(shown.unique()) > 2  # probabilities
    x = torch.rand(4, *event)
    loss = model.loss(x.reshape(2, 2, *event))  # extra batch dimensions are flattened
    assert loss.dim() == 0 and loss.item() <= 0
    with pytest.raises(ValueError, match=", ".join(map(str, event))):
        model.loss(torch.zeros(4, 3, 7))


def test_bad_settings_are_refused():
    for kwargs in ({"objective": "lsgan"}, {"arch": "resnet"}, {"d_steps": 0}, {"arch": "conv"}):
        with pytest.raises(ValueError):
            GAN(TOY, **kwargs)
    with pytest.raises(ValueError, match="scheduler"):
        GAN(TOY, {"scheduler": "cosine"})


def test_ranks_draw_different_noise():
    model = GAN(TOY, latent_dim=3).train()
    slices = []
    for rank in (0, 1):
        model._trainer = SimpleNamespace(world_size=2, global_rank=rank)
        torch.manual_seed(10)
        slices.append(model.noise(4))
    model._trainer = None
    torch.manual_seed(10)
    torch.testing.assert_close(torch.cat(slices), torch.randn(8, 3))
    assert not torch.equal(slices[0], slices[1])


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    torch.manual_seed(11)
    model = GAN(DEQUANTIZED, {"lr": 2e-4, "betas": [0.5, 0.999]}, objective="hinge", arch="conv", width=8,
                d_lr=4e-4, g_hidden=(16,), d_steps=2)
    assert dict(model.hparams) == {
        "data": DEQUANTIZED, "optim": {"lr": 2e-4, "betas": [0.5, 0.999]}, "objective": "hinge", "arch": "conv",
        "latent_dim": 8, "g_hidden": [16], "d_hidden": [128, 128], "width": 8, "d_steps": 2, "d_lr": 4e-4,
        "spectral_norm": None, "gp_weight": 10.0,
    }
    _fit(model, [torch.rand(16, 1, 8, 8) for _ in range(3)])
    path = tmp_path / "gan.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": pl.__version__}, path)
    loaded = GAN.load_from_checkpoint(path, weights_only=True)
    model.eval(), loaded.eval()
    assert int(loaded.d_step_count) == 3
    x = torch.rand(6, 1, 8, 8)
    torch.manual_seed(12)
    expected = model.loss(x)
    torch.manual_seed(12)
    torch.testing.assert_close(loaded.loss(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("entry,overrides", [
    ("gan-moons", []),  # the default entry: MLPs, no buffers but the schedule counter
    # conv nets: BatchNorm running statistics in G, spectral norm's u and v in D (hinge), k = 2
    ("gan-digits", ["model.objective=hinge", "model.width=8", "model.d_steps=2"]),
])
def test_two_process_ddp_keeps_weights_and_buffers_identical(tmp_path, entry, overrides):
    """Two CPU processes (gloo): every rank ends with the same state_dict digest, buffers included."""
    sets = [arg for item in overrides for arg in ("--set", item)]
    result = run_zoo("train", entry, "--accelerator", "cpu", "--devices", "2", "--max-steps", "12", *sets,
                     "--runs-dir", tmp_path, "--no-progress", env=zoo_env(OMP_NUM_THREADS=1))
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / entry / "version_0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ddp = metrics["ddp"]
    assert ddp["world_size"] == 2 and ddp["identical"], ddp
    assert metrics["steps"] == 12 and metrics["likelihood"] == "none"
    assert (run_dir / "samples.png").is_file()
