"""float64 vs float32 evaluation of the exact families.

The same model is evaluated in float32 and, after ``model.double()``, on float64 data. The float64
result must really be float64 (no float32 constant or buffer left on the way) and the two must
agree within a per-family relative tolerance, which bounds the float32 round-off: float32 has
eps = 1.2e-7, and a log-density is a sum over D = 2 or 64 dimensions of terms of order one, so
|lp32 - lp64| / max(|lp64|, 1) is expected around 1e-6. A log-sum-exp written without the max
trick, a variance computed as E[x^2] - E[x]^2, or a Jacobian accumulated in the wrong order would
be orders of magnitude off.

Models: initialised from data (k-means, ActNorm) and trained for 30 Adam steps on moons and on
the 8x8 digits, evaluated on 500 test examples.
"""
from __future__ import annotations

import copy

import pytest
import torch

from zoo_core.api import default_zoo
from zoo_core.runner import build_datamodule, build_model

# entry -> (overrides that make it small, relative tolerance, the reason for that tolerance).
# Measured on this CPU (max over 500 test examples): gmm-moons 6e-7, gmm-digits 2.1e-6,
# flow-moons 5e-7, flow-digits 8e-7, MADE moons 7e-7, MADE digits 2e-7, PixelCNN digits 2e-7.
CASES = {
    "gmm-moons": ([], 1e-5, "a 2x2 Cholesky and a logsumexp over 16 components"),
    "gmm-digits": ([], 3e-5, "the log-determinant and the triangular solve of 64x64 covariances amplify "
                             "round-off by their condition number (reg_covar 1e-3)"),
    "flow-moons": (["model.hidden=[64, 64]", "model.n_couplings=6"], 1e-5,
                   "12 layers' log|det| terms summed; each layer rounds its output once"),
    "flow-digits": (["model.hidden=[64]", "model.n_couplings=6"], 1e-5,
                    "the logit pre-processing of 64 pixels adds a log|det| of order 100"),
    "autoregressive-moons": (["model.hidden=[64, 64]"], 1e-5, "a 20-component mixture's logsumexp per dimension"),
    "autoregressive-digits": (["model.hidden=[128]"], 1e-5, "a sum of 64 Bernoulli log-probabilities"),
    "autoregressive-pixelcnn-digits": (["model.channels=16", "model.n_layers=2"], 1e-5,
                                       "a sum of 64 Bernoulli log-probabilities after 4 masked convolutions"),
}


def _trained(entry: str, overrides: list[str]):
    zoo = default_zoo()
    config = zoo.resolve(entry, [*overrides, "train.batch_size=128"])
    torch.manual_seed(0)
    datamodule = build_datamodule(zoo, config)
    model = build_model(zoo, config, datamodule)
    model.init_from_data(datamodule.init_batch())
    optimiser = torch.optim.Adam(model.parameters(), lr=float(config["optim"]["lr"]))
    train, noise = datamodule.raw["train"], datamodule._noise()
    for _ in range(30):
        batch = train[torch.randint(0, len(train), (128,))]  # (128, *event_shape)
        loss = model.loss(noise(batch) if noise else batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval(), datamodule.eval_data("test")[:500]


@pytest.mark.parametrize("entry", list(CASES))
def test_float64_and_float32_agree(entry):
    overrides, rtol, reason = CASES[entry]
    model, x = _trained(entry, overrides)
    assert model.likelihood == "exact"
    with torch.no_grad():
        lp32 = model.log_prob(x)                                       # (500,)
        lp64 = copy.deepcopy(model).double().log_prob(x.double())      # (500,)
    assert lp32.dtype == torch.float32 and lp64.dtype == torch.float64
    assert torch.isfinite(lp64).all() and torch.isfinite(lp32).all()
    error = (lp32.double() - lp64).abs() / lp64.abs().clamp_min(1.0)   # (500,)
    assert float(error.max()) < rtol, (f"{entry}: float32 differs from float64 by {float(error.max()):.2e} "
                                       f"(relative), above {rtol:g} ({reason})")
    # and not trivially: float64 is more than float32 cast up (it differs somewhere beyond float32 eps)
    assert float((lp32.double() - lp64).abs().max()) > 0
