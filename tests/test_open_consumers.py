"""A plugin's metric and command reach the zoo without core edits; hook calls can be traced."""
import json
import types

import torch

from conftest import run_zoo, zoo_env
from zoo_core import cli
from zoo_core.hookspecs import hookimpl
from zoo_core.leaderboard import make_row, markdown_tables
from zoo_core.metrics.base import Metric
from zoo_core.zoo import Zoo


class MeanNorm(Metric):
    """Mean Euclidean norm of the test data (a plugin's metric, with its own summary keys)."""

    name = "mean_norm"
    summary = "mean Euclidean norm of the held-out examples"
    summary_keys = ("mean_norm", "mean_norm_examples")

    def reset(self):
        self.total, self.count = 0.0, 0

    def update(self, model, x, context=None):
        self.total += float(x.reshape(len(x), -1).norm(dim=1).sum())
        self.count += len(x)

    def compute(self, model):
        return {"mean_norm": self.total / self.count, "mean_norm_examples": self.count}


def _plugin():
    module = types.ModuleType("extras_plugin")

    @hookimpl
    def register_metrics(register):
        register("mean_norm", MeanNorm)

    @hookimpl
    def register_commands(register):
        def configure(parser):
            parser.add_argument("--who", default="world")
            parser.set_defaults(run=lambda args, zoo: print(f"hello {args.who}: {len(zoo.plugins.families)} families"))

        register("hello", configure, "say hello")

    module.register_metrics, module.register_commands = register_metrics, register_commands
    return module


def test_a_plugin_metric_reaches_metrics_json_eval_and_the_leaderboard(tmp_path, capsys):
    zoo = Zoo(extra_plugins={"extras_plugin": _plugin()})
    assert not zoo.problems()
    code = cli.main(["train", "gmm-moons", "--max-steps", "3", "--runs-dir", str(tmp_path), "--no-progress",
                     "--accelerator", "cpu", "--set", "eval.metrics=[nll,mean_norm]"], zoo=zoo)
    assert code == 0
    metrics = json.loads(next(tmp_path.glob("gmm-moons/version_0/metrics.json")).read_text())
    assert metrics["test"]["mean_norm_examples"] == metrics["test"]["num_examples"] and metrics["test"]["mean_norm"] > 0
    capsys.readouterr()
    assert cli.main(["eval", str(tmp_path / "gmm-moons" / "version_0"), "--no-progress", "--accelerator", "cpu",
                     "--set", "eval.metrics=[mean_norm]"], zoo=zoo) == 0
    assert json.loads(capsys.readouterr().out)["test"]["mean_norm"] == metrics["test"]["mean_norm"]
    config = zoo.resolve("gmm-moons", ["eval.metrics=[nll,mean_norm]"])
    row = make_row(zoo, "gmm-moons", config, metrics, "trained")
    assert row["other_metrics"] == {"mean_norm": metrics["test"]["mean_norm"]}
    assert "mean_norm" in markdown_tables({"rows": [row], "split_note": "", "machine_short": "cpu"})


def test_a_plugin_command(capsys):
    zoo = Zoo(extra_plugins={"extras_plugin": _plugin()})
    assert cli.main(["hello", "--who", "zoo"], zoo=zoo) == 0
    assert capsys.readouterr().out.strip() == f"hello zoo: {len(zoo.plugins.families)} families"


def test_hook_calls_are_traced_on_request():
    plain = run_zoo("plugins")
    traced = run_zoo("plugins", env=zoo_env(ZOO_TRACE_PLUGINS="1"))
    assert plain.returncode == traced.returncode == 0
    assert "trace" not in plain.stderr
    assert "zoo: trace: register_families -> gmm" in traced.stderr, traced.stderr[-2000:]
    assert "zoo: trace: register_datasets -> core" in traced.stderr
