"""``zoo export``: safetensors + YAML exports rebuild the exact model, never through pickle, and
damaged exports are refused with a one-line error naming the file."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from zoo_core import cli
from zoo_core.api import default_zoo
from zoo_core.errors import CheckpointError
from zoo_core.export import CONFIG, MANIFEST, WEIGHTS, export_model, load_export, sha256_file
from zoo_core.loading import load_model
from zoo_core.runner import RunOptions, train
from zoo_core.zoo import Zoo

ZOO = default_zoo()

SMALL_TOY = ["data.n_train=600", "data.n_val=200", "data.n_test=200"]
# Tiny, few-step runs. No evaluation metrics: only the checkpoint matters here.
ENTRIES = {
    "gmm-moons": SMALL_TOY,                                    # data-initialised (k-means) mixture
    "flow-moons": SMALL_TOY + ["model.n_couplings=4", "model.hidden=[16]"],  # ActNorm initialised from data
    "vae-digits": ["model.hidden=[32]", "model.latent_dim=4"],  # an image family on digits
    "autoregressive-pixelcnn-digits": ["model.channels=8", "model.n_layers=1"],  # non-persistent conv masks
    # non-persistent noise schedule and an EMA copy of the network; validate every epoch, so a
    # checkpoint is written before max_steps ends the run
    "diffusion-moons": SMALL_TOY + ["model.hidden=[16]", "model.timesteps=20", "train.check_val_every_n_epoch=1"],
    "autoencoder-moons": SMALL_TOY + ["model.hidden=[16]", "model.latent_components=3"],  # EM-fitted latent GMM
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for entry, overrides in ENTRIES.items():
        opts = RunOptions(runs_dir=str(root), progress=False, accelerator="cpu", max_steps=3,
                          overrides=[*overrides, "train.batch_size=64", "train.limit_train_batches=3",
                                     "eval.metrics=[]", "eval.num_samples=4"])
        out[entry] = train(ZOO, entry, opts)["run_dir"]
    return out


def _fixed_data(model) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    shape = (16, *model.event_shape)
    if model.data_spec.is_binary:
        return torch.bernoulli(torch.full(shape, 0.3), generator=gen)
    if model.data_spec.representation == "dequantized":
        return torch.rand(shape, generator=gen)
    return 2 * torch.randn(shape, generator=gen)


def _seeded(fn, seed=7):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.no_grad():
            return fn()


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_export_rebuilds_the_exact_model(runs, tmp_path, entry):
    reference, config, _ = load_model(runs[entry], ZOO)
    out = export_model(ZOO, runs[entry], tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == sorted([WEIGHTS, CONFIG, MANIFEST])
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["family"] == reference.family and manifest["entry"] == entry
    assert manifest["weights"]["sha256"] == sha256_file(out / WEIGHTS)
    assert manifest["plugin"]["plugin"] == reference.family and manifest["zoo_version"]

    model, exported_config, _ = load_export(out, ZOO)
    assert type(model) is type(reference) and exported_config == config
    assert model.data_spec == reference.data_spec
    # every buffer, including non-persistent ones rebuilt by the constructor, and every parameter
    for kind in ("named_buffers", "named_parameters"):
        ref, got = dict(getattr(reference, kind)()), dict(getattr(model, kind)())
        assert ref.keys() == got.keys(), kind
        for name in ref:
            assert ref[name].dtype == got[name].dtype and torch.equal(ref[name], got[name]), name
    assert bool(model._zoo_data_initialised)
    x = _fixed_data(model)
    if reference.likelihood != "none":
        assert torch.equal(_seeded(lambda: model.log_prob(x)), _seeded(lambda: reference.log_prob(x)))
    assert torch.equal(_seeded(lambda: model.sample((5,))), _seeded(lambda: reference.sample((5,))))


def test_export_loading_never_unpickles(runs, tmp_path, monkeypatch):
    out = export_model(ZOO, runs["flow-moons"], tmp_path / "export", loaded=load_model(runs["flow-moons"], ZOO))

    def refuse(*args, **kwargs):
        raise AssertionError("an export must load without pickle or torch.load")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    model, _, _ = load_model(out, ZOO)  # load_model dispatches to the export reader
    assert model.family == "flow"


def test_cli_export_then_sample_and_eval(runs, tmp_path, capsys):
    run_dir = runs["gmm-moons"]
    assert cli.main(["export", run_dir]) == 0
    assert (Path(run_dir) / "export" / WEIGHTS).is_file()  # the default: RUN_DIR/export
    assert cli.main(["export", run_dir, "-o", str(tmp_path / "exp")]) == 0
    png = tmp_path / "x.png"
    assert cli.main(["sample", str(tmp_path / "exp"), "-n", "16", "-o", str(png)]) == 0 and png.stat().st_size > 0
    pt = tmp_path / "x.pt"
    assert cli.main(["sample", str(tmp_path / "exp"), "-n", "16", "-o", str(pt), "--seed", "3"]) == 0
    assert cli.main(["sample", run_dir, "-n", "16", "-o", str(tmp_path / "y.pt"), "--seed", "3"]) == 0
    assert torch.equal(torch.load(pt), torch.load(tmp_path / "y.pt"))
    capsys.readouterr()
    assert cli.main(["eval", str(tmp_path / "exp"), "--set", "eval.metrics=[nll]", "--accelerator", "cpu",
                     "--no-progress"]) == 0
    from_export = json.loads(capsys.readouterr().out)
    assert cli.main(["eval", run_dir, "--set", "eval.metrics=[nll]", "--accelerator", "cpu", "--no-progress"]) == 0
    from_run = json.loads(capsys.readouterr().out)
    assert from_export["test"]["nll_nats"] == from_run["test"]["nll_nats"]
    assert from_export["test"]["num_examples"] == 200
    # an export is weights only: resuming from it is refused on one line
    assert cli.main(["train", "gmm-moons", "--resume", str(tmp_path / "exp")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot be resumed" in err and WEIGHTS in err
    # a non-empty directory that is not an export is never overwritten
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert cli.main(["export", run_dir, "-o", str(tmp_path / "busy")]) == 1
    assert "not empty and is not a zoo export" in capsys.readouterr().err


# ---- damaged exports -------------------------------------------------------------------------------
@pytest.fixture
def exported(runs, tmp_path):
    return export_model(ZOO, runs["flow-moons"], tmp_path / "export")


def _resign(export_dir):
    """Update the manifest's digest, as someone re-packing a damaged export would."""
    manifest = json.loads((export_dir / MANIFEST).read_text())
    manifest["weights"]["sha256"] = sha256_file(export_dir / WEIGHTS)
    (export_dir / MANIFEST).write_text(json.dumps(manifest))


def _error(export_dir) -> str:
    with pytest.raises(CheckpointError) as info:
        load_model(export_dir, ZOO)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_changed_weights_fail_the_digest(exported):
    data = bytearray((exported / WEIGHTS).read_bytes())
    data[-1] ^= 0xFF
    (exported / WEIGHTS).write_bytes(bytes(data))
    message = _error(exported)
    assert str(exported / WEIGHTS) in message and "sha256" in message and "changed or damaged" in message


def test_changed_config_fails_the_digest(exported):
    path = exported / CONFIG
    path.write_text(path.read_text().replace("n_couplings: 4", "n_couplings: 6"))
    message = _error(exported)
    assert str(path) in message and "sha256" in message


def test_truncated_weights(exported):
    data = (exported / WEIGHTS).read_bytes()
    (exported / WEIGHTS).write_bytes(data[: len(data) // 2])
    _resign(exported)
    message = _error(exported)
    assert message.startswith(f"{exported / WEIGHTS}: not a readable safetensors file")


def test_wrong_shape_and_missing_tensor(exported):
    tensors = load_file(str(exported / WEIGHTS))
    name = "actnorms.0.bias"
    tensors[name] = torch.zeros(3)
    save_file(tensors, str(exported / WEIGHTS))
    _resign(exported)
    message = _error(exported)
    assert str(exported / WEIGHTS) in message and f"tensor '{name}' has shape (3,)" in message and "(2,)" in message
    del tensors[name]
    save_file(tensors, str(exported / WEIGHTS))
    _resign(exported)
    message = _error(exported)
    assert str(exported / WEIGHTS) in message and f"missing tensor(s) {name}" in message


def test_missing_weights_file_and_bad_manifest(exported):
    (exported / WEIGHTS).unlink()
    assert str(exported / WEIGHTS) in _error(exported)
    (exported / MANIFEST).write_text("{not json")
    message = _error(exported)
    assert str(exported / MANIFEST) in message and "manifest" in message


def test_unknown_family_names_the_plugin(exported):
    zoo = Zoo()  # a fresh catalogue, without the flow family
    del zoo.plugins.families["flow"]
    for load in (load_export, load_model):
        with pytest.raises(CheckpointError, match=r"family 'flow' is not installed; it was provided by plugin "
                                                  r"'flow' \(distribution generative-zoo"):
            load(exported, zoo)
