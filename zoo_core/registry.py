"""registry.yaml: named, reproducible experiments. Loading, validation, overrides, resolution.

An entry::

    vae-mnist:
      family: vae                                   # a registered family
      description: ...                              # optional
      data: {name: mnist, representation: binarized}  # + the dataset's own parameters
      model: {latent_dim: 50, hidden: [500, 500]}   # the family's constructor arguments
      optim: {name: adam, lr: 1.0e-3}
      train: {max_epochs: 10, batch_size: 128, seed: 0}
      eval: {metrics: [nll], iw_samples: 500}

Sources, later ones overriding earlier ones by entry name: the zoo's registry.yaml, entries
contributed by plugins (``register_entries``), then user files (``--registry FILE`` or
``ZOO_REGISTRY=file1:file2``). Every error names the file, the entry, the key and what was
expected. ``resolve`` fills every default, so the saved config repeats a run exactly.
"""
from __future__ import annotations

import copy
import difflib
import inspect
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from zoo_core.data.spec import REPRESENTATIONS
from zoo_core.errors import ConfigError, one_line
from zoo_core.expected import DEFAULT_EXPECTATION, DIRECTIONS, EXPECTATION_KEYS, KINDS
from zoo_core.optim import DEFAULT_OPTIM, OPTIMIZER_NAMES
from zoo_core.plugins import name_problem

REGISTRY_ENV = "ZOO_REGISTRY"
TOP_LEVEL_KEYS = ("family", "description", "data", "model", "optim", "train", "eval", "tier", "expected")
TIERS = ("quick", "full")  # zoo bench --tier: quick = toy 2-D and digits entries, full = MNIST
TRAIN_DEFAULTS: dict[str, Any] = {
    "max_epochs": 10, "max_steps": -1, "batch_size": 128, "eval_batch_size": None, "seed": 0,
    "precision": "32-true", "gradient_clip_val": None, "log_every_n_steps": 50,
    "check_val_every_n_epoch": 1, "limit_train_batches": None,
    # null: last.ckpt at epoch ends only; N: also every N optimiser steps, mid-epoch (resumes at that batch)
    "checkpoint_every_n_steps": None,
    # optimiser steps per Lightning step, on that many batches handed over at once (zoo_core/fused.py)
    "fused_steps": 1,
}
EVAL_DEFAULTS: dict[str, Any] = {"metrics": ["nll", "sample_quality", "frechet", "kid", "precision_recall", "reconstruction",
                                             "generative_classifier", "conditional_samples"],
                                 "splits": ["test"], "iw_samples": None, "num_samples": 64, "quality_samples": 2000,
                                 # null = every example of each split; N = N evenly spaced examples of it
                                 "examples": None,
                                 # ODE likelihoods (flow_matching, diffusion's ode_nll; zoo_core/ode.py): null = the
                                 # model's own setting
                                 "ode_trace": None, "ode_probes": None, "ode_probe_noise": None, "ode_method": None,
                                 "ode_rtol": None, "ode_atol": None, "ode_steps": None}
EVAL_SPLITS = ("train", "val", "test")
# Caps on sizes read from untrusted registry files and --set overrides: each bounds memory and time
# (a dataset of n_* examples, K importance samples per example, samples drawn for metrics and pictures).
MAX_EXAMPLES = 10 ** 6  # data keys named n_* (n_train, n_val, n_test, ...), eval.quality_samples
MAX_IW_SAMPLES = 10 ** 5  # eval.iw_samples
MAX_NUM_SAMPLES = 10 ** 5  # eval.num_samples (the run's picture); zoo sample -n has the same limit
MAX_LR = 1e6  # optim.lr: larger rates overflow float32 in the optimiser step
PRECISIONS = ("32-true", "32", "64-true", "64", "16-mixed", "bf16-mixed", "bf16-true", "16-true")


class YamlLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """PyYAML's safe loader, reading 1e-3 (no dot) as a number, as YAML 1.2 and users expect.

    The libyaml parser where PyYAML was built with it (about 6x faster on ``registry.yaml``), the
    pure-Python one otherwise; both resolve and construct alike."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)$"),
    list("-+0123456789."))


MAX_REGISTRY_BYTES = 4 << 20  # a registry file larger than this is refused unread
MAX_YAML_NODES = 200_000  # aliases expanded ("billion laughs") count too
MAX_YAML_DEPTH = 100  # nesting of sequences and mappings; a registry entry needs a handful


def load_yaml(text: str):
    """Parse YAML safely, refusing documents whose alias expansion would exceed ``MAX_YAML_NODES`` nodes."""
    loader = YamlLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _count_nodes(node)
        return loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()


def _count_nodes(root) -> None:
    """Count the nodes of the expanded document (shared aliases counted at every use) and check its
    nesting depth, without recursion."""
    stack: list = [(root, 1)]
    sizes: dict[int, int] = {}
    # size(node) = 1 + sum of children sizes; computed iteratively with memoisation (aliases share nodes)
    order, seen = [], set()
    while stack:
        node, depth = stack.pop()
        if depth > MAX_YAML_DEPTH:
            raise yaml.YAMLError(f"nested more than {MAX_YAML_DEPTH} levels deep")
        if id(node) in seen:
            continue
        seen.add(id(node))
        order.append(node)
        if isinstance(node, yaml.SequenceNode):
            stack.extend((c, depth + 1) for c in node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend((c, depth + 1) for kv in node.value for c in kv)
    for node in reversed(order):
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [c for kv in node.value for c in kv]
        else:
            children = []
        sizes[id(node)] = 1 + sum(sizes.get(id(c), 1) for c in children)
        if sizes[id(node)] > MAX_YAML_NODES:
            raise yaml.YAMLError(f"the document expands to more than {MAX_YAML_NODES} nodes (YAML aliases)")


def short(value: Any, limit: int = 80) -> str:
    """A value for an error message: repr abbreviated (``reprlib``), control characters escaped."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxdict, r.maxlevel = limit, limit, 6, 6, 3
    return one_line(r.repr(value))[: limit + 20]


def suggest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(name), list(candidates), n=3, cutoff=0.5)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def builtin_registry_path() -> Path:
    """registry.yaml shipped inside the package (non-editable install) or at the repo root."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "registry.yaml", here.parent / "registry.yaml"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"the zoo's registry.yaml is missing (looked in {here} and {here.parent})")


# ---- small typed checkers: each returns the normalised value or raises _Bad(expected) ---------
class _Bad(Exception):
    pass


def _pos_int(v, allow_none=False, maximum=None):
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or (maximum is not None and v > maximum):
        raise _Bad("a positive integer" + (f" at most {maximum:_}".replace("_", ",") if maximum is not None else "")
                   + (" or null" if allow_none else ""))
    return v


def _int(v):
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad("an integer")
    return v


def _number(v, minimum=None, allow_none=False, exclusive=False):
    if v is None and allow_none:
        return None
    if isinstance(v, str):  # YAML 1.1 reads 1e-3 (no dot) as text
        try:
            v = float(v)
        except ValueError:
            raise _Bad("a number" + (" or null" if allow_none else "")) from None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Bad("a number" + (" or null" if allow_none else ""))
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):  # .nan, .inf
        raise _Bad("a finite number" + (" or null" if allow_none else ""))
    if minimum is not None and (v < minimum or (exclusive and v == minimum)):
        raise _Bad(f"a number {'>' if exclusive else '>='} {minimum}")
    return v


def _choice(options, allow_none=False):
    def check(v):
        if v is None and allow_none:
            return None
        if not isinstance(v, (str, int)) or str(v) not in options:
            raise _Bad("one of " + ", ".join(options) + (" or null" if allow_none else ""))
        return str(v)
    return check


def _str_list(options=None):
    def check(v):
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            raise _Bad("a list of names")
        if options is not None:
            for s in v:
                if s not in options:
                    raise _Bad("names from " + ", ".join(options) + f" (got '{s}')")
        return v
    return check


def _max_steps(v):
    if isinstance(v, bool) or not isinstance(v, int) or (v <= 0 and v != -1):
        raise _Bad("a positive integer, or -1 for no limit")
    return v


def _limit(v):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or (isinstance(v, float) and not v <= 1):
        raise _Bad("a fraction in (0, 1], a positive number of batches, or null")
    return v


TRAIN_CHECKS: dict[str, Callable] = {
    "max_epochs": lambda v: _pos_int(v, allow_none=True), "max_steps": _max_steps,
    "batch_size": _pos_int, "eval_batch_size": lambda v: _pos_int(v, allow_none=True), "seed": _int,
    "precision": _choice(PRECISIONS), "gradient_clip_val": lambda v: _number(v, 0, allow_none=True),
    "log_every_n_steps": _pos_int, "check_val_every_n_epoch": _pos_int, "limit_train_batches": _limit,
    "checkpoint_every_n_steps": lambda v: _pos_int(v, allow_none=True),
    "fused_steps": lambda v: _pos_int(v, maximum=10_000),
}
EVAL_CHECKS: dict[str, Callable] = {
    "metrics": _str_list(), "splits": _str_list(EVAL_SPLITS),
    "iw_samples": lambda v: _pos_int(v, allow_none=True, maximum=MAX_IW_SAMPLES),
    "num_samples": lambda v: _pos_int(v, maximum=MAX_NUM_SAMPLES),
    "quality_samples": lambda v: _pos_int(v, maximum=MAX_EXAMPLES),
    "examples": lambda v: _pos_int(v, allow_none=True, maximum=MAX_EXAMPLES),
    "ode_trace": _choice(("auto", "exact", "hutchinson"), allow_none=True),
    "ode_probes": lambda v: _pos_int(v, allow_none=True, maximum=1000),
    "ode_probe_noise": _choice(("rademacher", "gaussian"), allow_none=True),
    "ode_method": _choice(("euler", "midpoint", "rk4", "dopri5"), allow_none=True),
    "ode_rtol": lambda v: _number(v, 0, allow_none=True, exclusive=True),
    "ode_atol": lambda v: _number(v, 0, allow_none=True, exclusive=True),
    "ode_steps": lambda v: _pos_int(v, allow_none=True, maximum=100_000),
}


def _betas(v):
    if not isinstance(v, (list, tuple)) or len(v) != 2 or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in v):
        raise _Bad("two numbers in [0, 1)")
    return list(v)


def _lr(v):
    v = _number(v, 0, exclusive=True)
    if v > MAX_LR:
        raise _Bad(f"a learning rate in (0, {MAX_LR:g}]")
    return v


OPTIM_CHECKS: dict[str, Callable] = {
    "name": _choice(OPTIMIZER_NAMES), "lr": lambda v: _lr(v),
    "weight_decay": lambda v: _number(v, 0), "betas": _betas, "scheduler": _choice(("cosine", "none"), allow_none=True),
}


def validate_expected(items, where: str) -> list[dict]:
    """The ``expected`` key: a list of expected results (zoo_core/expected.py), normalised."""

    if items is None:
        return []
    if not isinstance(items, list):
        raise ConfigError(f"{where}: key 'expected': expected a list of {{metric, value, tolerance, direction, "
                          f"source}} mappings, got {type(items).__name__}")
    out = []
    for i, item in enumerate(items):
        key = f"expected[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: key '{key}': expected a mapping with keys metric, value, source, ..., "
                              f"got {type(item).__name__}")
        for k in item:
            if k not in EXPECTATION_KEYS:
                raise ConfigError(f"{where}: unknown key '{key}.{k}'{suggest(k, EXPECTATION_KEYS)}; "
                                  f"expected one of {', '.join(EXPECTATION_KEYS)}")
        for k in ("metric", "value", "source"):
            if k not in item:
                raise ConfigError(f"{where}: missing key '{key}.{k}'" + (
                    " (a paper's table, or 'our run DATE, COMMAND, MACHINE')" if k == "source" else ""))
        e = {**DEFAULT_EXPECTATION, **item}
        metric = e["metric"]
        if not isinstance(metric, str) or not all(re.fullmatch(r"[A-Za-z0-9_\-/]+", p) for p in metric.split(".")):
            raise ConfigError(f"{where}: key '{key}.metric': expected a dotted path into metrics.json such as "
                              f"test.nll_nats, got {metric!r}")
        for k, check in (("value", lambda v: _number(v)), ("tolerance", lambda v: _number(v, 0)),
                         ("direction", _choice(DIRECTIONS)), ("kind", _choice(KINDS))):
            try:
                e[k] = check(e[k])
            except _Bad as bad:
                raise ConfigError(f"{where}: key '{key}.{k}': expected {bad}, got {e[k]!r}") from None
        for k in ("source", "compute"):
            if not isinstance(e[k], str) or (k == "source" and not e[k].strip()):
                raise ConfigError(f"{where}: key '{key}.{k}': expected " +
                                  ("non-empty text naming a paper's table or our run" if k == "source" else "text") +
                                  f", got {e[k]!r}")
        e["value"], e["tolerance"] = float(e["value"]), float(e["tolerance"])
        for k in ("value", "tolerance"):
            if e[k] != e[k] or abs(e[k]) == float("inf"):
                raise ConfigError(f"{where}: key '{key}.{k}': expected a finite number, got {item.get(k)!r}")
        out.append({k: e[k] for k in EXPECTATION_KEYS})
    return out


@dataclass
class RawEntry:
    name: str
    body: Any
    source: str


class Registry:
    """All registry entries from every source; ``resolve(name, overrides)`` validates one."""

    def __init__(self, files: Iterable[str | Path], plugins, include_builtin: bool = True):
        self.plugins = plugins
        self.entries: dict[str, RawEntry] = {}
        if include_builtin:
            self._load_file(builtin_registry_path())
        for name, reg in sorted(self.plugins.entries.items()):
            if name in self.entries:
                self.plugins.plugins[reg.plugin].errors.append(
                    f"register_entries: entry '{name}' already exists in {self.entries[name].source}; ignored")
                continue
            self.entries[name] = RawEntry(name, copy.deepcopy(reg.obj), f"plugin '{reg.plugin}'")
        env_files = [f for f in os.environ.get(REGISTRY_ENV, "").split(os.pathsep) if f]
        for f in [*env_files, *files]:
            self._load_file(Path(f))

    def _load_file(self, path: Path) -> None:
        try:
            if path.stat().st_size > MAX_REGISTRY_BYTES:
                raise ConfigError(f"{path}: registry file larger than {MAX_REGISTRY_BYTES >> 20} MiB; "
                                  f"expected a YAML mapping of entries")
            text = path.read_bytes().decode("utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read registry file ({exc.strerror or exc})") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start}: {exc.reason}); expected a YAML "
                              f"registry") from None
        try:
            doc = load_yaml(text)
        except RecursionError:
            raise ConfigError(f"{path}: YAML nested too deeply; expected a registry of entries") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{path}: invalid YAML{where}: {short(problem, 200)}") from None
        if doc is None:
            return
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: expected a mapping of entry names to entries, got {type(doc).__name__}")
        for name, body in doc.items():
            problem = name_problem("entry", name)
            if problem:
                raise ConfigError(f"{path}: {problem}")
            self.entries[str(name)] = RawEntry(str(name), body, str(path))

    def expectations_for(self, config: dict) -> list[dict]:
        """The entry's expectations as the registry states them now (they may have been added after the
        run was trained); the run's own saved ones when the entry is no longer in the registry."""
        entry = config.get("entry")
        if entry not in self.entries:
            return list(config.get("expected") or [])
        raw = self.entries[entry]
        body = raw.body if isinstance(raw.body, dict) else {}
        return validate_expected(body.get("expected"), f"{raw.source}: entry '{entry}'")

    def names(self) -> list[str]:
        return sorted(self.entries)

    def raw(self, name: str) -> RawEntry:
        if name not in self.entries:
            raise ConfigError(f"unknown registry entry '{name}'{suggest(name, self.entries)}; "
                              f"'zoo list' shows the entries")
        return self.entries[name]

    def resolve(self, name: str, overrides: Iterable[str] = ()) -> dict:
        raw = self.raw(name)
        body = copy.deepcopy(raw.body)
        where = f"{raw.source}: entry '{name}'"
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: expected a mapping with keys {', '.join(TOP_LEVEL_KEYS)}, "
                              f"got {type(body).__name__}")
        overrides = list(overrides)
        for item in overrides:
            apply_override(body, item)
        if overrides:
            where += " (with --set " + " ".join(overrides) + ")"
        return resolve_entry(name, body, where, raw.source, self.plugins)


def _conditional_families(plugins) -> list[str]:
    return sorted(n for n, r in plugins.families.items() if r.meta("conditional", False))


def entry_problems(zoo, name: str) -> list[str]:
    """What keeps an entry from running, found without building anything (for ``zoo list``):
    an unknown family or dataset, or an expectation naming a metric key no metric writes."""
    raw = zoo.registry.entries[name]
    body = raw.body if isinstance(raw.body, dict) else None
    if body is None:
        return ["not a mapping"]
    plugins, out = zoo.plugins, []
    family = body.get("family")
    if family not in plugins.families:
        out.append(f"unknown family {short(family)}{suggest(str(family), plugins.families)}")
    data = body.get("data") if isinstance(body.get("data"), dict) else {}
    if data.get("name") not in plugins.datasets:
        out.append(f"unknown dataset {short(data.get('name'))}{suggest(str(data.get('name')), plugins.datasets)}")
    keys = metric_keys(plugins)
    for i, item in enumerate(body.get("expected") or []):
        if not isinstance(item, dict) or not isinstance(item.get("metric"), str):
            continue
        metric = item["metric"]
        leaf = metric.split(".")[-1]
        if keys and metric.split(".")[0] in ("train", "val", "test") and leaf not in keys:
            out.append(f"expected[{i}].metric '{short(metric)}': no metric writes '{leaf}'"
                       f"{suggest(leaf, keys)}")
        direction = item.get("direction")
        if direction is not None and direction not in DIRECTIONS:
            out.append(f"expected[{i}].direction {short(direction)}{suggest(str(direction), DIRECTIONS)}")
    return out


def metric_keys(plugins) -> set[str]:
    """Every result key the registered metrics declare (``summary_keys``), without importing lazy ones
    that declare theirs in ``Lazy(..., keys=[...])``; empty when a metric declares none."""
    keys: set[str] = set()
    for reg in plugins.metrics.values():
        declared = reg.meta("keys")
        if declared is None:
            try:
                declared = getattr(reg.obj, "summary_keys", None)
            except Exception:
                declared = None
        if not declared:
            return set()
        keys.update(declared)
    return keys


def apply_override(body: dict, item: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to ``body`` in place."""
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. train.max_epochs=3), got {item!r}")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {item}: '{key}' is not a dotted key such as train.max_epochs")
    try:
        value = load_yaml(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    node = body
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item}: '{'.'.join(parts[:i + 1])}' is not a section")
        node = child
    node[parts[-1]] = value


def _section(body: dict, key: str, where: str) -> dict:
    value = body.get(key, {})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: key '{key}': expected a mapping, got {type(value).__name__}")
    return value


def _check_section(section: dict, checks: dict[str, Callable], defaults: dict, prefix: str, where: str) -> dict:
    out = dict(defaults)
    for key, value in section.items():
        if key not in checks:
            raise ConfigError(f"{where}: unknown key '{prefix}.{key}'{suggest(key, checks)}; "
                              f"expected one of {', '.join(checks)}")
        try:
            out[key] = checks[key](value)
        except _Bad as bad:
            raise ConfigError(f"{where}: key '{prefix}.{key}': expected {bad}, got {short(value)}") from None
    return out


def _init_params(cls, skip: tuple[str, ...]) -> dict[str, inspect.Parameter]:
    params = inspect.signature(cls.__init__).parameters
    return {n: p for n, p in params.items() if n not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _plain(value):
    """YAML-friendly defaults: tuples become lists."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _check_params(given: dict, params: dict[str, inspect.Parameter], prefix: str, owner: str, where: str) -> dict:
    out = {}
    for key in given:
        if key not in params:
            raise ConfigError(f"{where}: unknown key '{prefix}.{key}' for {owner}{suggest(key, params)}; "
                              f"expected one of {', '.join(params) or 'none'}")
    for key, p in params.items():
        if key in given:
            out[key] = given[key]
        elif p.default is inspect.Parameter.empty:
            raise ConfigError(f"{where}: missing key '{prefix}.{key}' required by {owner}")
        else:
            out[key] = _plain(p.default)
    return out


def _check_counts(params: dict, prefix: str, owner: str, where: str) -> None:
    """Keys named ``n_*`` (numbers of examples: n_train, n_val, n_test, ...) are integers in [1, MAX_EXAMPLES]."""
    for key, value in params.items():
        if not key.startswith("n_"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_EXAMPLES:
            raise ConfigError(f"{where}: key '{prefix}.{key}' for {owner}: expected an integer in "
                              f"[1, {MAX_EXAMPLES:,}], got {short(value)}")


def resolve_entry(name: str, body: dict, where: str, source: str, plugins) -> dict:
    """Validate an entry body and return the fully resolved configuration."""
    for key in body:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(f"{where}: unknown key '{key}'{suggest(key, TOP_LEVEL_KEYS)}; "
                              f"expected one of {', '.join(TOP_LEVEL_KEYS)}")
    family_name = body.get("family")
    if not isinstance(family_name, str) or not family_name:
        raise ConfigError(f"{where}: key 'family': expected a family name ({', '.join(sorted(plugins.families))}), "
                          f"got {family_name!r}")
    if family_name not in plugins.families:
        raise ConfigError(f"{where}: key 'family': unknown family '{family_name}'"
                          f"{suggest(family_name, plugins.families)}; known: {', '.join(sorted(plugins.families))}")
    family_cls = plugins.families[family_name].obj

    data = dict(_section(body, "data", where))
    conditional = data.pop("conditional", False)
    if not isinstance(conditional, bool):
        raise ConfigError(f"{where}: key 'data.conditional': expected true or false, got {short(conditional)}")
    if conditional and not getattr(family_cls, "conditional", False):
        raise ConfigError(f"{where}: key 'data.conditional': family '{family_name}' is not conditional; "
                          f"conditional families: {', '.join(_conditional_families(plugins)) or 'none'}")
    ds_name = data.get("name")
    if not isinstance(ds_name, str) or ds_name not in plugins.datasets:
        raise ConfigError(f"{where}: key 'data.name': expected one of {', '.join(sorted(plugins.datasets))}, "
                          f"got {ds_name!r}{suggest(str(ds_name), plugins.datasets)}")
    ds_cls = plugins.datasets[ds_name].obj
    representation = data.get("representation", ds_cls.representations[0])
    if representation not in ds_cls.representations:
        raise ConfigError(f"{where}: key 'data.representation': dataset '{ds_name}' supports "
                          f"{', '.join(ds_cls.representations)}, got {short(representation)}")
    modelled = getattr(family_cls, "representations", REPRESENTATIONS)
    if representation not in modelled:
        raise ConfigError(f"{where}: family '{family_name}' models {' or '.join(modelled)} data, not "
                          f"{representation} (dataset '{ds_name}'); choose data.representation: {modelled[0]}")
    ds_params = _check_params({k: v for k, v in data.items() if k not in ("name", "representation")},
                              _init_params(ds_cls, ("self", "representation", "batch_size", "eval_batch_size",
                                                    "seed", "data_dir", "kwargs", "base_kwargs")),
                              "data", f"dataset '{ds_name}'", where)
    _check_counts(ds_params, "data", f"dataset '{ds_name}'", where)

    model = _check_params(_section(body, "model", where), _init_params(family_cls, ("self", "data", "optim")),
                          "model", f"family '{family_name}'", where)
    optim = _check_section(_section(body, "optim", where), OPTIM_CHECKS, DEFAULT_OPTIM, "optim", where)
    train = _check_section(_section(body, "train", where), TRAIN_CHECKS, TRAIN_DEFAULTS, "train", where)
    evaluation = _check_section(_section(body, "eval", where), EVAL_CHECKS, EVAL_DEFAULTS, "eval", where)
    for metric in evaluation["metrics"]:
        if metric not in plugins.metrics:
            raise ConfigError(f"{where}: key 'eval.metrics': unknown metric '{metric}'"
                              f"{suggest(metric, plugins.metrics)}; known: {', '.join(sorted(plugins.metrics))}")
    tier = body.get("tier")
    if tier is not None and tier not in TIERS:
        raise ConfigError(f"{where}: key 'tier': expected one of {', '.join(TIERS)} (or leave it out), got {tier!r}"
                          f"{suggest(str(tier), TIERS)}")
    expected = validate_expected(body.get("expected"), where)
    description = body.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{where}: key 'description': expected text, got {type(description).__name__}")
    assert representation in REPRESENTATIONS
    return {
        "entry": name, "source": source, "description": description, "family": family_name,
        "data": {"name": ds_name, "representation": representation, **ds_params,
                 **({"conditional": True} if conditional else {})},
        "model": model, "optim": optim, "train": train, "eval": evaluation, "tier": tier, "expected": expected,
    }


