"""The pluggy PluginManager: entry-point loading, per-plugin isolation, and the catalogues.

Every plugin (built-ins included) is found through the ``zoo`` entry-point group. A plugin
that fails to import, or whose hook raises, is recorded by name with its error; the others
keep working. A name registered twice is refused and reported; the first registration wins,
and the zoo's own plugins always register first, so a third-party plugin can never silently
replace a built-in family. ``ZOO_BLOCK_PLUGINS=name1,name2`` blocks plugins by name.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import inspect
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from zoo_core import hookspecs
from zoo_core.errors import PluginError, one_line

ENTRY_POINT_GROUP = "zoo"
BLOCK_ENV = "ZOO_BLOCK_PLUGINS"
TRACE_ENV = "ZOO_TRACE_PLUGINS"  # 1: log every hook call and its result on stderr
OWN_DISTRIBUTION = "generative-zoo"
HOOKS = ("register_families", "register_datasets", "register_metrics", "register_entries", "register_commands")


@dataclass
class PluginInfo:
    name: str
    version: str
    module: str
    distribution: str
    hooks: list[str] = field(default_factory=list)
    status: str = "ok"  # ok | blocked | failed
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Lazy:
    """A registration that imports nothing until used: ``Lazy("package.module:Class", likelihood="exact",
    summary="...")``. ``zoo list``, ``zoo plugins`` and ``zoo --help`` then run without importing torch;
    the class is imported (and checked) the first time a run, a metric or a test needs it.

    ``meta`` holds what listings show without importing: for a family ``likelihood``, ``summary``
    (one line) and optionally ``conditional``; for a metric ``summary``."""

    target: str
    meta: dict = field(default_factory=dict)

    def __init__(self, target: str, **meta: Any):
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "meta", dict(meta))

    def load(self) -> Any:
        module_name, _, attr = self.target.partition(":")
        module = importlib.import_module(module_name)
        return getattr(module, attr) if attr else module


def family_plugin(family: Lazy, exports: dict[str, str]):
    """The two module attributes of a plugin that registers one lazily imported family:
    ``register_families, __getattr__ = family_plugin(FAMILY, {"GMM": "zoo_gmm.model:GMM"})``.
    The hook registers ``family``; ``__getattr__`` imports the exported names on first use, so the
    plugin module itself imports no torch."""
    from zoo_core.hookspecs import hookimpl

    @hookimpl
    def register_families(register):
        register(family)

    def __getattr__(name: str):
        if name in exports:
            return Lazy(exports[name]).load()
        raise AttributeError(f"module {family.target.partition('.')[0]!r} has no attribute {name!r}")

    return register_families, __getattr__


class Registration:
    """What one plugin registered under one name: a class, or a :class:`Lazy` reference to it
    (imported and checked on first use of ``obj``)."""

    def __init__(self, target: Any, plugin: str, check: Callable[[Any], str | None] | None = None):
        self.target = target
        self.plugin = plugin
        self._check = check
        self._obj = None if isinstance(target, Lazy) else target

    @property
    def is_loaded(self) -> bool:
        return self._obj is not None

    @property
    def obj(self) -> Any:
        if self._obj is None:
            try:
                obj = self.target.load()
            except Exception as exc:
                raise PluginError(f"plugin '{self.plugin}': cannot import {self.target.target} "
                                  f"({type(exc).__name__}: {exc})") from None
            problem = self._check(obj) if self._check else None
            if problem:
                raise PluginError(f"plugin '{self.plugin}': {self.target.target} {problem}")
            self._obj = obj
        return self._obj

    def meta(self, key: str, default: Any = None) -> Any:
        """A listing attribute (likelihood, summary, ...) without importing a lazy registration."""
        if isinstance(self.target, Lazy) and key in self.target.meta:
            return self.target.meta[key]
        if self._obj is None:
            return default
        if key == "summary":
            doc = (getattr(self._obj, "__doc__", None) or "").strip().splitlines()
            return getattr(self._obj, "summary", "") or (doc[0] if doc else default)
        return getattr(self._obj, key, default)


class ZooPlugins:
    """Loads every plugin once and holds what they registered."""

    def __init__(self, extra_plugins: dict[str, Any] | None = None):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.families: dict[str, Registration] = {}
        self.datasets: dict[str, Registration] = {}
        self.metrics: dict[str, Registration] = {}
        self.entries: dict[str, Registration] = {}
        blocked = {n.strip() for n in os.environ.get(BLOCK_ENV, "").split(",") if n.strip()}
        for name in sorted(blocked):
            self.pm.set_blocked(name)
        if os.environ.get(TRACE_ENV, "").strip() not in ("", "0"):
            _trace_hook_calls(self.pm)
        self._load_entry_points(blocked)
        for name, obj in (extra_plugins or {}).items():
            self._register_plugin(name, obj, PluginInfo(name, "-", getattr(obj, "__name__", repr(obj)), "-"))
        self._collect()

    # ---- loading ------------------------------------------------------------------------------
    def _load_entry_points(self, blocked: set[str]) -> None:
        eps = md.entry_points(group=ENTRY_POINT_GROUP)
        # the zoo's own plugins first, then third parties alphabetically
        ordered = sorted(eps, key=lambda ep: (_dist_name(ep) != OWN_DISTRIBUTION, ep.name))
        for ep in ordered:
            if ep.name in self.plugins:
                first = self.plugins[ep.name]
                if (first.distribution, first.module) != (_dist_name(ep), ep.value):
                    first.errors.append(f"a plugin of the same name from distribution {_dist_name(ep)} "
                                        f"{_dist_version(ep)} ({ep.value}) was not loaded; plugin names are unique "
                                        f"and the first one found is kept")
                continue  # the same plugin seen twice (e.g. two installs); keep the first
            info = PluginInfo(ep.name, _dist_version(ep), ep.value, _dist_name(ep))
            self.plugins[ep.name] = info
            if ep.name in blocked:
                info.status = "blocked"
                continue
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must not take the zoo down
                info.status = "failed"
                info.errors.append(f"failed to import {ep.value}: {type(exc).__name__}: {exc}")
                continue
            self._register_plugin(ep.name, module, info)

    def _register_plugin(self, name: str, obj: Any, info: PluginInfo) -> None:
        self.plugins[name] = info
        try:
            self.pm.register(obj, name=name)
        except Exception as exc:
            info.status = "failed"
            info.errors.append(f"rejected by pluggy: {type(exc).__name__}: {exc}")
            return
        info.hooks = sorted(h.name for h in self.pm.get_hookcallers(obj) or [])
        if not info.version or info.version == "-":
            info.version = str(getattr(obj, "__version__", "-"))
        info.errors.extend(_hook_problems(obj))

    def _collect(self) -> None:
        """Call each plugin's hooks one at a time, attributing every registration (and error)."""
        tables = {
            "register_families": ("family", self.families, _check_family_registration),
            "register_datasets": ("dataset", self.datasets, _check_named("dataset", _datamodule_problem)),
            "register_metrics": ("metric", self.metrics, _check_named("metric", _metric_problem)),
            "register_entries": ("registry entry", self.entries, _check_named("registry entry", None)),
        }
        for plugin_name, info in self.plugins.items():
            plugin = self.pm.get_plugin(plugin_name)
            if plugin is None or info.status != "ok":
                continue
            others = [p for name, p in self.pm.list_name_plugin() if name != plugin_name and p is not None]
            for hook_name, (kind, table, check) in tables.items():
                if hook_name not in info.hooks:
                    continue

                def register(*args, _kind=kind, _table=table, _check=check, _plugin=plugin_name, _hook=hook_name):
                    key, problem, later = _check(*args)
                    if problem:
                        self.plugins[_plugin].errors.append(f"{_hook}: {problem}")
                    elif key in _table:
                        self.plugins[_plugin].errors.append(
                            f"{_hook}: {_kind} '{key}' is already registered by plugin "
                            f"'{_table[key].plugin}'; this registration was ignored")
                    else:
                        _table[key] = Registration(args[-1], _plugin, later)
                # one plugin at a time, through pluggy (so ZOO_TRACE_PLUGINS sees the call)
                caller = self.pm.subset_hook_caller(hook_name, remove_plugins=others)
                try:
                    returned = [r for r in caller(register=register) if r is not None]
                except Exception as exc:
                    info.errors.append(f"{hook_name} raised {type(exc).__name__}: {exc}")
                    continue
                if returned:
                    info.errors.append(f"{hook_name} returned a {type(returned[0]).__name__} instead of calling "
                                       f"register(...); the returned value was ignored")
        for info in self.plugins.values():
            if info.errors and info.status == "ok":
                info.status = "problem"

    # ---- lookups ------------------------------------------------------------------------------
    def family(self, name: str):
        return _lookup(self.families, name, "family").obj

    def dataset(self, name: str):
        return _lookup(self.datasets, name, "dataset").obj

    def metric(self, name: str):
        return _lookup(self.metrics, name, "metric").obj

    def family_provider(self, name: str) -> dict:
        """Which plugin registered family ``name``: {plugin, distribution, version, module}."""
        reg = _lookup(self.families, name, "family")
        info = self.plugins.get(reg.plugin)
        return {"plugin": reg.plugin, "distribution": info.distribution if info else "-",
                "version": info.version if info else "-", "module": (reg.target.target.partition(":")[0] if isinstance(reg.target, Lazy)
                           else getattr(reg.obj, "__module__", "-"))}

    def describe_family(self, family: str) -> str:
        """"plugin 'x' (distribution d 1.0)" for error messages; works for unregistered classes too."""
        if family not in self.families:
            return f"an unregistered class of family '{family}'"
        provider = self.family_provider(family)
        dist = (f" (distribution {provider['distribution']} {provider['version']})"
                if provider["distribution"] != "-" else "")
        return f"plugin '{provider['plugin']}'{dist}"

    def problems(self) -> list[str]:
        """One line per plugin problem, naming the plugin."""
        return [f"plugin '{p.name}': {e}" for p in self.plugins.values() for e in p.errors]


# ---- registration checks: a name, and (at once for a class, on first use for a Lazy) what it is ------
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def name_problem(kind: str, name: Any) -> str | None:
    """Names of families, datasets, metrics and entries: letters, digits, '-', '_', '.' (not first).
    They become directory names (``runs/ENTRY/``), so nothing that could leave a directory."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > 100:
        return (f"{kind} name must be letters, digits, '-', '_' or '.' (not first), at most 100 characters; "
                f"got {one_line(repr(name))[:80]}")
    return None


def _family_problem(cls) -> str | None:
    from zoo_core.model import LIKELIHOOD_KINDS, GenerativeModel

    if not (inspect.isclass(cls) and issubclass(cls, GenerativeModel)):
        return f"is not a GenerativeModel subclass: {cls!r}"
    if cls.likelihood not in LIKELIHOOD_KINDS:
        return f"{cls.__name__}.likelihood must be one of {LIKELIHOOD_KINDS}, got {cls.likelihood!r}"
    if inspect.isabstract(cls):
        return f"{cls.__name__} does not implement {sorted(cls.__abstractmethods__)}"
    return None


def _check_family_registration(cls):
    """-> (name, problem now, check on first use)."""
    if isinstance(cls, Lazy):
        name = cls.meta.get("family")
        problem = name_problem("family", name)
        if problem:
            return None, f"Lazy({cls.target!r}) needs family='NAME': {problem}", None
        return name, None, lambda obj: _family_problem(obj) or (
            None if obj.family == name else f"has family '{obj.family}', registered as '{name}'")
    problem = _family_problem(cls)
    if problem:
        return None, problem, None
    problem = name_problem("family", cls.family)
    if problem:
        return None, f"{cls.__name__}.family: {problem}", None
    return cls.family, None, None


def _datamodule_problem(obj) -> str | None:
    from zoo_core.data.base import ZooDataModule

    if not (inspect.isclass(obj) and issubclass(obj, ZooDataModule)):
        return f"is not a ZooDataModule subclass: {obj!r}"
    return None


def _metric_problem(obj) -> str | None:
    from zoo_core.metrics.base import Metric

    if not (inspect.isclass(obj) and issubclass(obj, Metric)):
        return f"is not a Metric subclass: {obj!r}"
    return None


def _check_named(kind: str, what_problem: Callable[[Any], str | None] | None):
    def check(name, obj):
        problem = name_problem(kind, name)
        if problem:
            return None, problem, None
        if what_problem is None:  # registry entries: a mapping
            if not isinstance(obj, dict):
                return None, f"{kind} '{name}' must be a mapping, got {type(obj).__name__}", None
            return name, None, None
        if isinstance(obj, Lazy):
            return name, None, what_problem
        problem = what_problem(obj)
        return (None, f"{kind} '{name}' {problem}", None) if problem else (name, None, None)
    return check


def _hook_problems(plugin: Any) -> list[str]:
    """Functions that look like hooks but are not (pytest's rule): a ``register_*`` name that no hook
    specifies (a misspelling), or a hook name without ``@hookimpl`` (pluggy would skip it silently)."""
    problems = []
    known = set(HOOKS) | {"register_commands"}
    marker = f"{hookspecs.PROJECT_NAME}_impl"
    for attr in sorted(dir(plugin)):
        if not attr.startswith("register_"):
            continue
        fn = getattr(plugin, attr, None)
        if not callable(fn):
            continue
        if attr not in known:
            problems.append(f"'{attr}' is not a zoo hook{_suggest(attr, known)}; it is never called")
        elif not hasattr(fn, marker):
            problems.append(f"'{attr}' is not marked @hookimpl, so the zoo never calls it "
                            f"(from zoo_core.hookspecs import hookimpl)")
    return problems


def _suggest(name: str, candidates) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(candidates), n=3, cutoff=0.5)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _lookup(table: dict[str, Registration], name: str, kind: str) -> Registration:
    if name not in table:
        raise PluginError(f"unknown {kind} '{one_line(str(name))}'{_suggest(str(name), table)}; "
                          f"known: {', '.join(sorted(table)) or 'none'}")
    return table[name]


def _trace_hook_calls(pm: pluggy.PluginManager) -> None:
    """Log each hook call (its implementations and what they returned) through pluggy's monitoring."""
    import sys

    def before(hook_name, hook_impls, kwargs):
        names = ", ".join(i.plugin_name for i in hook_impls)
        print(f"zoo: trace: {hook_name} -> {names or 'no implementation'}", file=sys.stderr)

    def after(outcome, hook_name, hook_impls, kwargs):
        exc = outcome.exception
        print(f"zoo: trace: {hook_name} done" + (f", raised {type(exc).__name__}: {exc}" if exc else ""),
              file=sys.stderr)

    pm.add_hookcall_monitoring(before, after)


def _dist_name(ep: md.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "-"


def _dist_version(ep: md.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.version if dist is not None else "-"
