"""The zoo CLI end to end, as a user runs it: outputs, and one-line errors for every bad input."""
import json
from pathlib import Path

import pytest
import torch

from conftest import run_zoo


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsys):
    """Run the CLI in this process (no interpreter start-up): returns a Result like subprocess.run."""
    from zoo_core.cli import main

    def run(*args):
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


def assert_one_line_error(result, *fragments, code=1):
    assert result.returncode == code, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    err = result.stderr.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, f"expected one line on stderr, got:\n{err}"
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in: {err}"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One short real training run of the default toy entry, shared by the tests below."""
    runs = tmp_path_factory.mktemp("runs")
    # gradient fit with 40 batches per epoch (the entry fits by EM, one batch per epoch)
    result = run_zoo("train", "gmm-moons", "--max-epochs", "2", "--runs-dir", runs, "--no-progress",
                     "--accelerator", "cpu", "--set", "model.fit=gradient", "--set", "train.batch_size=500")
    assert result.returncode == 0, result.stderr[-3000:]
    return runs / "gmm-moons" / "version_0"


def test_list_shows_families_with_likelihood_and_entries(cli):
    result = cli("list")
    assert result.returncode == 0, result.stderr
    assert "gmm" in result.stdout and "likelihood=exact" in result.stdout
    assert "vae" in result.stdout and "likelihood=bound" in result.stdout
    for entry in ("gmm-moons", "gmm-digits", "gmm-mnist", "vae-moons", "vae-digits", "vae-mnist"):
        assert entry in result.stdout


def test_plugins_lists_name_version_and_hooks(cli):
    result = cli("plugins")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line and not line.startswith(" ")}
    assert {"core", "gmm", "vae"} <= set(lines)
    assert "0.1.0" in lines["gmm"] and "register_families" in lines["gmm"]
    assert "register_datasets" in lines["core"] and "register_metrics" in lines["core"]


def test_train_writes_the_run_directory(trained_run):
    for name in ("config.yaml", "metrics.json", "samples.png", "checkpoints/last.ckpt", "logs/metrics.csv"):
        assert (trained_run / name).is_file(), name
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["wall_time_s"] > 0
    test = metrics["test"]
    assert test["num_examples"] == 5000 and 0 < test["nll_nats"] < 3
    assert test["bits_per_dim"] == pytest.approx(test["nll_nats"] / (2 * torch.log(torch.tensor(2.0)).item()))
    import yaml

    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["train"]["max_epochs"] == 2 and config["model"]["n_components"] == 16
    assert config["optim"]["name"] == "adam" and config["data"]["representation"] == "continuous"


def test_eval_reproduces_training_metrics(cli, trained_run):
    result = cli("eval", trained_run, "--no-progress", "--accelerator", "cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout[result.stdout.index("{"):])
    trained = json.loads((trained_run / "metrics.json").read_text())
    assert out["test"]["nll_nats"] == pytest.approx(trained["test"]["nll_nats"], rel=1e-9)
    assert (trained_run / "eval_test.json").is_file()


@pytest.mark.parametrize("suffix", [".png", ".pt", ".npy"])
def test_sample_writes_each_format(cli, trained_run, tmp_path, suffix):
    out = tmp_path / f"s{suffix}"
    result = cli("sample", trained_run, "-n", "100", "-o", out)
    assert result.returncode == 0, result.stderr
    assert out.is_file() and out.stat().st_size > 0
    if suffix == ".pt":
        assert torch.load(out, weights_only=True).shape == (100, 2)
    if suffix == ".npy":
        import numpy as np

        assert np.load(out).shape == (100, 2)


def test_resume_continues_the_latest_run(trained_run):
    runs = trained_run.parent.parent
    first_log = (trained_run / "logs" / "metrics.csv").read_text()
    result = run_zoo("train", "gmm-moons", "--resume", "--max-epochs", "3", "--runs-dir", runs, "--no-progress",
                     "--accelerator", "cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["steps"] == 3 * 40
    assert metrics["train_time_total_s"] > metrics["wall_time_s"] > 0  # the first start's time is counted too
    assert not (runs / "gmm-moons" / "version_1").exists()
    # the first start's logs survive (Lightning's CSV logger would delete them); the resumption logs beside them
    assert (trained_run / "logs" / "metrics.csv").read_text() == first_log
    assert "train/loss" in (trained_run / "logs-resume1" / "metrics.csv").read_text()


# ---- bad input: one line on stderr, non-zero exit -------------------------------------------
def test_unknown_entry_suggests_nearest(cli):
    assert_one_line_error(cli("train", "gmm-mons"), "unknown registry entry 'gmm-mons'", "did you mean 'gmm-moons'")


def test_set_without_equals(cli):
    assert_one_line_error(cli("train", "gmm-moons", "--set", "train.max_epochs"), "KEY=VALUE")


def test_set_with_wrong_type_names_entry_key_and_expectation(cli):
    assert_one_line_error(cli("train", "gmm-moons", "--set", "train.max_epochs=ten"),
                          "registry.yaml", "entry 'gmm-moons'", "train.max_epochs", "positive integer", "'ten'")


def test_unknown_model_key_suggests_nearest(cli):
    assert_one_line_error(cli("train", "gmm-moons", "--set", "model.n_component=3"),
                          "unknown key 'model.n_component'", "did you mean 'n_components'")


def test_bad_registry_file_errors(cli, tmp_path):
    bad_family = tmp_path / "family.yaml"
    bad_family.write_text("mine:\n  family: gmn\n  data: {name: moons}\n")
    assert_one_line_error(cli("train", "mine", "--registry", bad_family),
                          str(bad_family), "entry 'mine'", "key 'family'", "unknown family 'gmn'", "did you mean 'gmm'")
    bad_yaml = tmp_path / "broken.yaml"
    bad_yaml.write_text("mine:\n  family: gmm\n  data: {name: moons\n")
    assert_one_line_error(cli("list", "--registry", bad_yaml), str(bad_yaml), "invalid YAML", "line")
    bad_data = tmp_path / "data.yaml"
    bad_data.write_text("mine:\n  family: gmm\n  data: {name: moons, representation: binarized}\n")
    assert_one_line_error(cli("train", "mine", "--registry", bad_data),
                          "data.representation", "supports continuous")
    missing = tmp_path / "missing.yaml"
    assert_one_line_error(cli("list", "--registry", missing), str(missing), "cannot read")


def test_usage_error_is_one_line(cli):
    assert_one_line_error(cli("train"), "the following arguments are required: entry", code=2)
    assert_one_line_error(cli("train", "gmm-moons", "--devices", "two"), "--devices", code=2)


def test_missing_mnist_says_where_to_put_files(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("ZOO_MNIST_MIRROR", "http://127.0.0.1:9/")
    result = cli("train", "vae-mnist", "--max-steps", "1", "--runs-dir", tmp_path / "runs")
    assert_one_line_error(result, "MNIST", str(tmp_path / "empty"), "--data-dir")


def test_eval_and_sample_errors(cli, tmp_path, trained_run):
    assert_one_line_error(cli("eval", tmp_path / "nope"), "no such run directory or checkpoint")
    empty = tmp_path / "emptyrun"
    empty.mkdir()
    assert_one_line_error(cli("eval", empty), "no checkpoint")
    truncated = tmp_path / "truncated.ckpt"
    data = (trained_run / "checkpoints" / "last.ckpt").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    assert_one_line_error(cli("eval", truncated), str(truncated), "truncated or corrupted")
    assert_one_line_error(cli("sample", trained_run, "-o", tmp_path / "x.gif"), ".png, .pt or .npy")


def test_unsafe_checkpoint_is_refused(cli, tmp_path, trained_run):
    """A checkpoint carrying a pickled callable is refused by the weights_only loader."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    payload = {"state_dict": {}, "zoo": {"family": "gmm"}, "x": Exploit(str(marker))}
    torch.save(payload, evil)
    assert_one_line_error(cli("eval", evil), str(evil), "refused")
    assert not marker.exists()


class Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_verbose_shows_traceback():
    result = run_zoo("--verbose", "train", "gmm-mons")
    assert result.returncode == 1 and "Traceback" in result.stderr


def test_wandb_logs_offline_without_prompting(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc credentials
    monkeypatch.setattr("sys.stdin", None)  # a prompt would fail
    result = cli("train", "gmm-moons", "--wandb", "--max-steps", "3", "--runs-dir", tmp_path / "runs",
                 "--no-progress", "--accelerator", "cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    offline = list((tmp_path / "runs" / "gmm-moons" / "version_0" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1


def test_bf16_mixed_precision_trains(cli, tmp_path):
    result = cli("train", "vae-digits", "--precision", "bf16-mixed", "--max-steps", "5", "--set",
                 "eval.iw_samples=2", "--runs-dir", tmp_path, "--no-progress", "--accelerator", "cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    config = (tmp_path / "vae-digits" / "version_0" / "config.yaml").read_text()
    assert "precision: bf16-mixed" in config


def test_exponent_without_dot_is_a_number(zoo):
    """PyYAML would read 1e-6 as text; the registry reads it as YAML 1.2 does."""
    config = zoo.resolve("gmm-moons", ["model.reg_covar=1e-6", "optim.lr=3e-3"])
    assert config["model"]["reg_covar"] == 1e-6 and config["optim"]["lr"] == 3e-3
