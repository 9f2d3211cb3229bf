"""Property-based tests of the registry validator (zoo_core/registry.py).

Whatever a registry file or a ``--set KEY=VALUE`` contains, validation either accepts it or raises
the zoo's own one-line ConfigError (a ZooError): never a TypeError, KeyError, RecursionError, ...
An accepted configuration can be written with ``yaml.safe_dump`` (as ``config.yaml`` is) and
validates again to itself (``zoo eval`` and ``--resume`` re-validate the saved configuration).

Bounded and deterministic: ``derandomize=True`` (the examples are derived from the test's name),
at most 200 examples each, no deadline.
"""
from __future__ import annotations

import copy

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zoo_core.api import default_zoo
from zoo_core.errors import ZooError
from zoo_core.registry import Registry, apply_override, load_yaml, resolve_entry

ZOO = default_zoo()

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# ---- building blocks ---------------------------------------------------------------------------------
WEIRD_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12) | st.sampled_from(
    ["", " ", "\n", "a\nb", ":", "- x", "{", "[1, 2", "'", '"', "!!python/object:os.system", "&a", "*a", "~",
     "null", "yes", "1e-3", "1.0e-3", ".nan", ".inf", "-.inf", "0x10", "1_000", "2001-12-14", "=", "a=b",
     "moons", "gmm", "binarized", "dequantized", "adam", "cosine", "32-true", "nll", "test", "\t", "\x00", "é"])
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | WEIRD_TEXT)
KEYS = WEIRD_TEXT | st.integers(-3, 3) | st.sampled_from(
    ["family", "description", "data", "model", "optim", "train", "eval", "name", "representation", "lr",
     "betas", "scheduler", "max_epochs", "max_steps", "batch_size", "seed", "precision", "metrics", "splits",
     "iw_samples", "n_components", "hidden", "limit_train_batches", "gradient_clip_val", "tier", "expected"])
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(KEYS, inner, max_size=4), max_leaves=12)

# A valid entry of every section, mutated at one or more dotted paths
BASE = {
    "family": "gmm", "description": "fuzz",
    "data": {"name": "moons", "representation": "continuous", "n_train": 100},
    "model": {"n_components": 2, "covariance": "full"},
    "optim": {"name": "adam", "lr": 1.0e-2, "weight_decay": 0.0, "betas": [0.9, 0.999], "scheduler": None},
    "train": {"max_epochs": 1, "max_steps": -1, "batch_size": 8, "eval_batch_size": None, "seed": 0,
              "precision": "32-true", "gradient_clip_val": None, "log_every_n_steps": 5,
              "check_val_every_n_epoch": 1, "limit_train_batches": None},
    "eval": {"metrics": ["nll"], "splits": ["test"], "iw_samples": None, "num_samples": 4, "quality_samples": 10},
}
PATHS = sorted({(k,) for k in BASE} | {(k, s) for k, v in BASE.items() if isinstance(v, dict) for s in v}
               | {("data", "unknown"), ("model", "nope"), ("train", "epochs"), ("eval", "k"), ("bogus",)})
DOTTED = [".".join(p) for p in PATHS] + ["data", "train.seed.x", "a..b", ".", "..", "train.", "x" * 40]


def _set(body: dict, path: tuple, value) -> None:
    node = body
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value


@st.composite
def mutated_entries(draw):
    body = copy.deepcopy(BASE)
    for path in draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=3)):
        if draw(st.booleans()) and len(path) == 1:
            body.pop(path[0], None)  # a missing section or key
        else:
            _set(body, path, draw(VALUES))
    return body


VALID_OVERRIDES = ["train.seed=3", "optim.lr=1e-3", "optim.betas=[0.5, 0.9]", "eval.splits=[val, test]",
                   "train.max_steps=7", "model.n_components=3", "data.n_train=50", "optim.scheduler=cosine",
                   "train.limit_train_batches=0.5", "description=hello", "eval.metrics=nll"]
OVERRIDES = st.lists(st.sampled_from(VALID_OVERRIDES) | st.builds(
    lambda k, v: f"{k}={v}", st.sampled_from(DOTTED) | WEIRD_TEXT,
    WEIRD_TEXT | VALUES.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip())) | WEIRD_TEXT, max_size=4)


@pytest.fixture(scope="module")
def registry_file(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "fuzz.yaml"


def _one_line(exc: BaseException) -> None:
    assert "\n" not in str(exc) and "\r" not in str(exc), f"a user error must be one line: {str(exc)!r}"


def _accepted_is_stable(name: str, config: dict) -> None:
    """config.yaml round trip, and validating the saved configuration gives it back unchanged."""
    text = yaml.safe_dump(config, sort_keys=False)
    saved = load_yaml(text)
    body = {k: v for k, v in saved.items() if k not in ("entry", "source")}
    again = resolve_entry(name, body, f"{config['source']}: entry '{name}'", config["source"], ZOO.plugins)
    assert again == saved


def _resolve_all(path, text: str, overrides=()) -> None:
    path.write_text(text)
    try:
        registry = Registry([path], ZOO.plugins, include_builtin=False)  # the built-in file is not under test (and slow to parse)
    except ZooError as exc:
        _one_line(exc)
        return
    names = [n for n, raw in registry.entries.items() if raw.source == str(path)]
    for name in names:
        try:
            config = registry.resolve(name, overrides)
        except ZooError as exc:
            _one_line(exc)
            continue
        _accepted_is_stable(name, config)


# ---- the properties ------------------------------------------------------------------------------
@FUZZ
@given(doc=VALUES)
def test_random_documents(registry_file, doc):
    _resolve_all(registry_file, yaml.safe_dump(doc, allow_unicode=True))


@FUZZ
@given(text=st.text(max_size=80) | st.lists(st.sampled_from(
    ["a:", " b: 1", "- c", "  - d", "family: gmm", "data: {name: moons", "x: &a [1]", "y: *a", "z: *missing",
     "? [k]\n: v", "!!binary zz", "\t", "e: !!set {1, 2}", "f: |", "g: 'unterminated", "%YAML 1.1", "---"]),
    max_size=8).map("\n".join))
def test_malformed_yaml_text(registry_file, text):
    _resolve_all(registry_file, text)


@FUZZ
@given(body=mutated_entries())
def test_mutated_entries(registry_file, body):
    _resolve_all(registry_file, yaml.safe_dump({"fuzz-entry": body}, allow_unicode=True))


@FUZZ
@given(body=st.one_of(st.just(BASE), mutated_entries()), overrides=OVERRIDES)
def test_random_overrides(registry_file, body, overrides):
    _resolve_all(registry_file, yaml.safe_dump({"fuzz-entry": body}, allow_unicode=True), overrides)


@FUZZ
@given(body=mutated_entries(), item=st.builds(lambda k, v: f"{k}={v}", st.sampled_from(DOTTED), WEIRD_TEXT))
def test_apply_override_alone(body, item):
    try:
        apply_override(body, item)
    except ZooError as exc:
        _one_line(exc)


def test_the_base_entry_is_valid(registry_file):
    """The properties above must exercise acceptance too, not only rejection."""
    registry_file.write_text(yaml.safe_dump({"fuzz-entry": BASE}))
    config = ZOO.with_registry([registry_file]).resolve("fuzz-entry", ["train.seed=3", "optim.lr=1e-3"])
    assert config["train"]["seed"] == 3 and config["optim"]["lr"] == 1e-3
    _accepted_is_stable("fuzz-entry", config)


# ---- what the fuzzing found (kept as plain regression tests) -------------------------------------------
@pytest.mark.parametrize("override", ["optim.lr=.nan", "optim.lr=inf", "optim.weight_decay=.inf",
                                      "train.gradient_clip_val=.nan", "train.limit_train_batches=.nan"])
def test_non_finite_numbers_are_refused(override):
    """NaN passed every 'v < minimum' test (all comparisons with NaN are false) and was accepted."""
    with pytest.raises(ZooError, match=r"expected a (finite number|fraction)"):
        ZOO.resolve("gmm-moons", [override])


def test_control_characters_never_break_the_line(registry_file):
    """A newline in a --set value or a carriage return in an entry name used to split the error."""
    registry_file.write_text(yaml.safe_dump({"bad\rname": {"family": "gmm"}, "ok": BASE}))
    # an entry name that is not a valid name refuses the whole file, on one line
    with pytest.raises(ZooError, match=r"entry name must be") as info:
        ZOO.with_registry([registry_file]).registry
    _one_line(info.value)
    assert "\\r" in str(info.value)
    registry_file.write_text(yaml.safe_dump({"ok": BASE}))
    registry = ZOO.with_registry([registry_file]).registry
    for name, overrides in (("bad\rname", []), ("ok", ["bogus=null\n..."]), ("ok", ["train.seed=\n\n1.5"])):
        with pytest.raises(ZooError) as info:
            registry.resolve(name, overrides)
        _one_line(info.value)
        assert "\\r" in str(info.value) or "\\n" in str(info.value)
