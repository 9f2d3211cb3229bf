"""The Zoo: the plugin catalogue and the registry, built once and passed to whatever needs them.

``cli.main`` builds one per command, the public API one per process (``zoo_core.api.default_zoo``,
or pass your own), tests one per fixture with the plugins they inject. Nothing in the zoo reaches
for a global catalogue: the runner, evaluation, export, bench, leaderboard and the conformance kit
receive a ``Zoo``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from zoo_core.plugins import ZooPlugins


class Zoo:
    """Plugins (families, datasets, metrics, entries, commands) and registry entries.

    ``registry_files`` are read after the zoo's registry.yaml, plugin entries and ``$ZOO_REGISTRY``;
    ``extra_plugins`` maps names to plugin modules/objects registered beside the installed ones
    (tests, notebooks); ``plugins`` reuses an already loaded catalogue."""

    def __init__(self, registry_files: Iterable[str | Path] = (), *, plugins: ZooPlugins | None = None,
                 extra_plugins: dict[str, Any] | None = None, include_builtin_registry: bool = True):
        self.plugins = plugins if plugins is not None else ZooPlugins(extra_plugins)
        self.registry_files = [str(f) for f in registry_files]
        self.include_builtin_registry = include_builtin_registry
        self._registry = None

    @property
    def registry(self):
        """Every registry entry, read once (on first use)."""
        if self._registry is None:
            from zoo_core.registry import Registry

            self._registry = Registry(self.registry_files, self.plugins, include_builtin=self.include_builtin_registry)
        return self._registry

    def with_registry(self, files: Iterable[str | Path]) -> "Zoo":
        """This zoo with more registry files (the same plugins); itself when there are none."""
        files = [str(f) for f in files]
        if not files:
            return self
        return Zoo([*self.registry_files, *files], plugins=self.plugins,
                   include_builtin_registry=self.include_builtin_registry)

    # ---- lookups: imported on first use --------------------------------------------------------
    def family(self, name: str) -> type:
        return self.plugins.family(name)

    def dataset(self, name: str) -> type:
        return self.plugins.dataset(name)

    def metric(self, name: str) -> type:
        return self.plugins.metric(name)

    def describe_family(self, family: str) -> str:
        """"plugin 'x' (distribution d 1.0)", for messages."""
        return self.plugins.describe_family(family)

    def resolve(self, entry: str, overrides: Iterable[str] = ()) -> dict:
        """The fully resolved configuration of ``entry`` with ``--set``-style overrides."""
        return self.registry.resolve(entry, list(overrides))

    def problems(self) -> list[str]:
        return self.plugins.problems()
