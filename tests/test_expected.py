"""Expected results in the registry: validation, the pass/fail logic, and their report after train/eval."""
import json
import math

import pytest
import yaml

from zoo_core.errors import ConfigError
from zoo_core.api import default_zoo
from zoo_core.expected import check, check_one, describe, lookup, tally
from zoo_core.registry import Registry

TINY = {"family": "gmm", "data": {"name": "moons"}, "model": {"n_components": 4},
        "optim": {"lr": 1.0e-2}, "train": {"max_steps": 20, "batch_size": 256}, "eval": {"quality_samples": 200}}
GOOD = {"metric": "test.nll_nats", "value": 1.0, "tolerance": 0.1, "direction": "within", "source": "our run"}


def _resolve(tmp_path, body, name="tiny"):
    path = tmp_path / "reg.yaml"
    path.write_text(yaml.safe_dump({name: body}))
    return Registry([path], default_zoo().plugins, include_builtin=False).resolve(name)


# ---- validation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("expected, fragments", [
    ({"metric": "test.nll_nats"}, ["key 'expected': expected a list"]),
    ([["test.nll_nats", 1.0]], ["key 'expected[0]': expected a mapping"]),
    ([{k: v for k, v in GOOD.items() if k != "source"}], ["missing key 'expected[0].source'", "paper's table"]),
    ([{k: v for k, v in GOOD.items() if k != "value"}], ["missing key 'expected[0].value'"]),
    ([{**GOOD, "source": "  "}], ["key 'expected[0].source': expected non-empty text"]),
    ([{**GOOD, "direction": "below"}], ["key 'expected[0].direction': expected one of within, at_most, at_least",
                                        "'below'"]),
    ([{**GOOD, "kind": "paper"}], ["key 'expected[0].kind': expected one of published, target"]),
    ([{**GOOD, "tolerence": 0.1}], ["unknown key 'expected[0].tolerence'", "did you mean 'tolerance'"]),
    ([{**GOOD, "value": "lots"}], ["key 'expected[0].value': expected a number"]),
    ([{**GOOD, "value": float("nan")}], ["key 'expected[0].value': expected a finite number"]),
    ([{**GOOD, "tolerance": -0.5}], ["key 'expected[0].tolerance': expected a number >= 0"]),
    ([{**GOOD, "metric": "test..nll_nats"}], ["key 'expected[0].metric': expected a dotted path"]),
    ([GOOD, {**GOOD, "compute": 3}], ["key 'expected[1].compute': expected text"]),
])
def test_malformed_expected_is_one_line_naming_file_entry_and_key(tmp_path, expected, fragments):
    with pytest.raises(ConfigError) as info:
        _resolve(tmp_path, {**TINY, "expected": expected})
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    assert str(tmp_path / "reg.yaml") in message and "entry 'tiny'" in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("tier", ["fast", 3, ["quick"]])
def test_malformed_tier(tmp_path, tier):
    with pytest.raises(ConfigError, match=r"entry 'tiny': key 'tier': expected one of quick, full"):
        _resolve(tmp_path, {**TINY, "tier": tier})


def test_valid_expected_is_normalised_with_defaults(tmp_path):
    config = _resolve(tmp_path, {**TINY, "tier": "quick", "expected": [
        {"metric": "test.nll_nats", "value": 1, "source": "Somebody 2015, table 1"}]})
    assert config["tier"] == "quick"
    assert config["expected"] == [{"metric": "test.nll_nats", "value": 1.0, "tolerance": 0.0, "direction": "within",
                                   "kind": "target", "source": "Somebody 2015, table 1", "compute": ""}]
    assert _resolve(tmp_path, TINY)["expected"] == [] and _resolve(tmp_path, TINY)["tier"] is None


def test_builtin_registry_expectations_and_tiers(zoo):
    """Every family has a quick entry, full is MNIST only, and the published MNIST figures are pinned."""
    registry = zoo.registry
    configs = {n: registry.resolve(n) for n in registry.names()}
    quick = {c["family"] for c in configs.values() if c["tier"] == "quick"}
    assert {"gmm", "vae", "autoencoder", "gan", "diffusion", "flow", "autoregressive"} <= quick
    assert {c["data"]["name"] for c in configs.values() if c["tier"] == "full"} == {"mnist", "cifar10"}
    assert all(c["data"]["name"] not in ("mnist", "cifar10") for c in configs.values() if c["tier"] == "quick")
    published = {n: [e["value"] for e in c["expected"] if e["kind"] == "published"] for n, c in configs.items()}
    assert published["vae-mnist"] == [86.76]
    assert published["autoregressive-mnist"] == [88.04]
    assert published["autoregressive-pixelcnn-mnist"] == [81.30]
    assert published["flow-mnist"] == [1.06]
    targets = {n: [e["value"] for e in c["expected"] if e["kind"] == "target"] for n, c in configs.items()}
    assert targets["vae-mnist"] == [86.76] and targets["autoregressive-mnist"] == [86.5]
    assert targets["autoregressive-pixelcnn-mnist"] == targets["autoregressive-gated-mnist"] == [88.0]
    for name, config in configs.items():
        for e in config["expected"]:
            assert e["source"].strip(), name
    assert set(quick) <= set(zoo.plugins.families)


# ---- the logic -------------------------------------------------------------------------------------
METRICS = {"test": {"nll_nats": 0.912, "bits_per_dim": 1.5, "bad": float("nan")}, "wall_time_s": 3.0}


@pytest.mark.parametrize("expectation, status, shortfall", [
    ({"value": 0.882, "tolerance": 0.03, "direction": "within"}, "pass", 0.03),       # exactly on the boundary
    ({"value": 0.882, "tolerance": 0.029, "direction": "within"}, "fail", 0.03),
    ({"value": 0.95, "tolerance": 0.03, "direction": "within"}, "fail", 0.038),      # too good also fails
    ({"value": 0.95, "tolerance": 0.0, "direction": "at_most"}, "pass", 0.0),
    ({"value": 0.90, "tolerance": 0.0, "direction": "at_most"}, "fail", 0.012),
    ({"value": 0.90, "tolerance": 0.02, "direction": "at_most"}, "pass", 0.012),
    ({"value": 0.95, "tolerance": 0.0, "direction": "at_least"}, "fail", 0.038),
    ({"value": 0.95, "tolerance": 0.04, "direction": "at_least"}, "pass", 0.038),
    ({"value": 0.90, "tolerance": 0.0, "direction": "at_least"}, "pass", 0.0),
    ({"value": 0.862, "direction": "at_most", "kind": "reference"}, "reference", 0.05),  # never fails
])
def test_pass_fail_logic(expectation, status, shortfall):
    row = check_one({"metric": "test.nll_nats", "source": "s", **expectation}, METRICS)
    assert row["status"] == status
    assert row["passed"] is {"pass": True, "fail": False, "reference": None}[status]
    assert row["measured"] == 0.912
    assert math.isclose(row["shortfall"], shortfall, abs_tol=1e-12)
    assert math.isclose(row["difference"], 0.912 - expectation["value"])


@pytest.mark.parametrize("metric", ["test.fd", "val.nll_nats", "test.bad", "test", "wall_time_s.x"])
def test_missing_or_non_finite_metric_is_missing_never_a_pass(metric):
    row = check_one({"metric": metric, "value": 1e9, "direction": "at_most", "source": "s"}, METRICS)
    assert row["status"] == "missing" and row["passed"] is None and row["measured"] is None
    assert "\u2014" in describe(row)


def test_lookup_and_tally():
    assert lookup(METRICS, "wall_time_s") == 3.0 and lookup(METRICS, "test.bits_per_dim") == 1.5
    assert lookup({"a": {"b": True}}, "a.b") is None
    rows = check([{"metric": "test.nll_nats", "value": 0.9, "tolerance": 0.1, "source": "s"},
                  {"metric": "test.nll_nats", "value": 0.5, "source": "s"},
                  {"metric": "test.fd", "value": 1, "source": "s"},
                  {"metric": "test.nll_nats", "value": 0.8, "kind": "reference", "source": "s"}], METRICS)
    assert tally(rows) == {"pass": 1, "fail": 1, "missing": 1, "reference": 1, "not comparable": 0}
    assert "fail (short by 0.412)" in describe(rows[1])


# ---- reported by train and eval ----------------------------------------------------------------------
def test_train_and_eval_report_expectations(tmp_path, monkeypatch, zoo):
    """metrics.json and eval_test.json carry an "expected" list; the CLI summary prints one line each;
    eval checks the registry's expectations as they are now (they may be added after training)."""
    from zoo_core.cli import _summary
    from zoo_core.runner import RunOptions, evaluate, train

    monkeypatch.setenv("ZOO_REGISTRY", "")
    registry = tmp_path / "reg.yaml"
    body = {**TINY, "expected": [
        {"metric": "test.nll_nats", "value": 50.0, "direction": "at_most", "kind": "target", "source": "loose"},
        {"metric": "test.nll_nats", "value": -5.0, "direction": "at_most", "kind": "published", "source": "tight"},
        {"metric": "test.no_such_metric", "value": 1.0, "direction": "at_most", "source": "not computed"},
        {"metric": "test.nll_nats", "value": 0.862, "direction": "at_most", "kind": "reference", "source": "truth"}]}
    registry.write_text(yaml.safe_dump({"tiny-expect": body}))
    opts = RunOptions(registry_files=[str(registry)], runs_dir=str(tmp_path / "runs"), accelerator="cpu",
                      progress=False)
    metrics = train(zoo, "tiny-expect", opts)
    saved = json.loads((tmp_path / "runs" / "tiny-expect" / "version_0" / "metrics.json").read_text())
    assert [e["status"] for e in saved["expected"]] == ["pass", "fail", "missing", "reference"]
    nll = saved["test"]["nll_nats"]
    assert saved["expected"][0]["measured"] == nll and saved["expected"][1]["shortfall"] == pytest.approx(nll + 5)
    assert saved["expected"][0]["source"] == "loose" and saved["expected"][1]["kind"] == "published"
    summary = _summary(metrics).splitlines()
    assert len(summary) == 5 and "-> pass [loose]" in summary[1] and "-> fail (short by" in summary[2]
    assert "-> missing [not computed" in summary[3] and "-> reference" in summary[4]

    # an expectation added after training is checked by zoo eval
    body["expected"] = [{"metric": "test.nll_nats", "value": nll, "tolerance": 1e-6, "kind": "reproduction",
                         "source": "the run above"}]
    registry.write_text(yaml.safe_dump({"tiny-expect": body}))
    results = evaluate(zoo, str(tmp_path / "runs" / "tiny-expect" / "version_0"), opts)
    assert [e["status"] for e in results["expected"]] == ["pass"]
    written = json.loads((tmp_path / "runs" / "tiny-expect" / "version_0" / "eval_test.json").read_text())
    assert written["expected"] == results["expected"]
