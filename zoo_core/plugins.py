"""The pluggy PluginManager: entry-point loading, per-plugin isolation, and the catalogues.

Every plugin (built-ins included) is found through the ``zoo`` entry-point group. A plugin
that fails to import, or whose hook raises, is recorded by name with its error; the others
keep working. A name registered twice is refused and reported; the first registration wins,
and the zoo's own plugins always register first, so a third-party plugin can never silently
replace a built-in family. ``ZOO_BLOCK_PLUGINS=name1,name2`` blocks plugins by name.
"""
from __future__ import annotations

import importlib.metadata as md
import inspect
import os
from dataclasses import dataclass, field
from typing import Any

import pluggy

from zoo_core import hookspecs
from zoo_core.errors import PluginError

ENTRY_POINT_GROUP = "zoo"
BLOCK_ENV = "ZOO_BLOCK_PLUGINS"
OWN_DISTRIBUTION = "generative-zoo"
HOOKS = ("register_families", "register_datasets", "register_metrics", "register_entries")


@dataclass
class PluginInfo:
    name: str
    version: str
    module: str
    distribution: str
    hooks: list[str] = field(default_factory=list)
    status: str = "ok"  # ok | blocked | failed
    errors: list[str] = field(default_factory=list)


@dataclass
class Registration:
    obj: Any
    plugin: str


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

    def _collect(self) -> None:
        """Call each plugin's hooks one at a time, attributing every registration (and error)."""
        from zoo_core.data.base import ZooDataModule
        from zoo_core.metrics.base import Metric
        from zoo_core.model import LIKELIHOOD_KINDS, GenerativeModel

        def check_family(cls):
            if not (inspect.isclass(cls) and issubclass(cls, GenerativeModel)):
                return None, f"is not a GenerativeModel subclass: {cls!r}"
            if not isinstance(cls.family, str) or not cls.family:
                return None, f"{cls.__name__}.family must be a non-empty string"
            if cls.likelihood not in LIKELIHOOD_KINDS:
                return None, f"{cls.__name__}.likelihood must be one of {LIKELIHOOD_KINDS}, got {cls.likelihood!r}"
            if inspect.isabstract(cls):
                return None, f"{cls.__name__} does not implement {sorted(cls.__abstractmethods__)}"
            return cls.family, None

        def check_named(base, kind):
            def check(name, obj):
                if not isinstance(name, str) or not name:
                    return None, f"{kind} name must be a non-empty string, got {name!r}"
                if base is not None and not (inspect.isclass(obj) and issubclass(obj, base)):
                    return None, f"{kind} '{name}' is not a {base.__name__} subclass: {obj!r}"
                if base is None and not isinstance(obj, dict):
                    return None, f"{kind} '{name}' must be a mapping, got {type(obj).__name__}"
                return name, None
            return check

        tables = {
            "register_families": ("family", self.families, lambda cls: check_family(cls)),
            "register_datasets": ("dataset", self.datasets, check_named(ZooDataModule, "dataset")),
            "register_metrics": ("metric", self.metrics, check_named(Metric, "metric")),
            "register_entries": ("registry entry", self.entries, check_named(None, "registry entry")),
        }
        for plugin_name, info in self.plugins.items():
            plugin = self.pm.get_plugin(plugin_name)
            if plugin is None or info.status != "ok":
                continue
            for hook_name, (kind, table, check) in tables.items():
                impls = [i for i in getattr(self.pm.hook, hook_name).get_hookimpls() if i.plugin_name == plugin_name]
                for impl in impls:
                    def register(*args, _kind=kind, _table=table, _check=check, _plugin=plugin_name):
                        key, problem = _check(*args)
                        if problem:
                            self.plugins[_plugin].errors.append(f"{hook_name}: {problem}")
                        elif key in _table:
                            self.plugins[_plugin].errors.append(
                                f"{hook_name}: {_kind} '{key}' is already registered by plugin "
                                f"'{_table[key].plugin}'; this registration was ignored")
                        else:
                            _table[key] = Registration(args[-1], _plugin)
                    try:
                        impl.function(register=register)
                    except Exception as exc:
                        info.errors.append(f"{hook_name} raised {type(exc).__name__}: {exc}")

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
                "version": info.version if info else "-", "module": getattr(reg.obj, "__module__", "-")}

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


def _lookup(table: dict[str, Registration], name: str, kind: str) -> Registration:
    if name not in table:
        from zoo_core.registry import suggest

        raise PluginError(f"unknown {kind} '{name}'{suggest(name, table)}; known: {', '.join(sorted(table)) or 'none'}")
    return table[name]


def _dist_name(ep: md.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "-"


def _dist_version(ep: md.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.version if dist is not None else "-"


_PLUGINS: ZooPlugins | None = None


def get_plugins() -> ZooPlugins:
    """The process-wide plugin catalogue, loaded on first use."""
    global _PLUGINS
    if _PLUGINS is None:
        _PLUGINS = ZooPlugins()
    return _PLUGINS


def reset_plugins() -> None:
    """Forget the loaded catalogue (tests; after installing a plugin in-process)."""
    global _PLUGINS
    _PLUGINS = None


