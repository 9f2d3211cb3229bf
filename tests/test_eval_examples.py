"""eval.examples: every metric on N evenly spaced examples of a split, for bounds too costly to
evaluate on a whole split on a CPU."""
import math

import pytest
import torch

import zoo_core
from zoo_core.errors import ConfigError
from zoo_core.runner.build import build_datamodule


@pytest.fixture(scope="module")
def gmm_run(tmp_path_factory):
    return zoo_core.train("gmm-moons", max_steps=3, runs_dir=str(tmp_path_factory.mktemp("runs")))


def _test_batches(datamodule) -> torch.Tensor:
    return torch.cat([batch if isinstance(batch, torch.Tensor) else batch[0] for batch in datamodule.test_dataloader()])


def test_a_subset_is_evenly_spaced_over_the_split_and_the_whole_split_when_larger(gmm_run):
    datamodule = build_datamodule(zoo_core.default_zoo(), gmm_run.model.zoo_config)
    datamodule.setup("test")
    whole = datamodule.eval_data("test")  # (N, 2)
    datamodule.test_examples = 7
    subset = _test_batches(datamodule)
    step = len(whole) / 7
    assert torch.equal(subset, whole[[math.floor(i * step) for i in range(7)]])
    datamodule.test_examples = len(whole) + 5
    assert torch.equal(_test_batches(datamodule), whole)


def test_the_nll_of_a_subset_is_the_mean_over_exactly_those_examples(gmm_run):
    model = gmm_run.model
    datamodule = build_datamodule(zoo_core.default_zoo(), model.zoo_config)
    datamodule.setup("test")
    datamodule.test_examples = 101
    chosen = _test_batches(datamodule)  # (101, 2)
    results = zoo_core.evaluate(model, metrics=["nll"], examples=101)["test"]
    with torch.no_grad():
        nll = -model.log_prob(chosen).double()  # (101,)
    assert results["num_examples"] == 101
    assert results["nll_nats"] == pytest.approx(nll.mean().item(), rel=1e-6)
    assert results["nll_nats_stderr"] == pytest.approx(nll.std(unbiased=False).item() / math.sqrt(101), rel=1e-5)
    full = zoo_core.evaluate(model, metrics=["nll"])["test"]
    assert full["num_examples"] == len(datamodule.eval_data("test"))


@pytest.mark.parametrize("value", [0, -3, 1.5, "all"])
def test_bad_examples_are_refused_naming_the_key(gmm_run, value):
    with pytest.raises(ConfigError, match="eval.examples"):
        zoo_core.evaluate(gmm_run.model, metrics=["nll"], examples=value)


def test_evaluating_with_other_settings_leaves_the_models_own_settings_alone(gmm_run):
    model = gmm_run.model
    before = {k: (dict(v) if isinstance(v, dict) else v) for k, v in model.zoo_config.items()}
    zoo_core.evaluate(model, metrics=["nll"], examples=50, quality_samples=10)
    assert model.zoo_config == before
