"""The zoo's plugin hooks (pluggy). One function per hook, each documented.

A plugin is a module (or object) with functions marked ``@hookimpl`` whose names match the
specs below, found through the ``zoo`` entry-point group::

    [project.entry-points.zoo]
    myfamily = "my_package"

Each hook receives a ``register`` callback (the style of ``llm`` and ``tox``): call it once per
thing the plugin contributes. The zoo attributes every registration to its plugin, so a
duplicate name or a broken hook is reported by plugin name and never replaces a built-in.
"""
from __future__ import annotations

from typing import Callable

import pluggy

PROJECT_NAME = "zoo"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_families(register: Callable[[type], None]) -> None:
    """Register model families: ``register(ModelClass)`` for each ``GenerativeModel`` subclass.

    The family's name is ``ModelClass.family``; its likelihood kind is ``ModelClass.likelihood``.
    To keep ``zoo list`` from importing torch, register a lazy reference instead:
    ``register(Lazy("my_package.model:MyModel", family="mine", likelihood="exact", summary="..."))``
    (``zoo_core.plugins.Lazy``); the class is imported and checked when first used.
    """


@hookspec
def register_datasets(register: Callable[[str, type], None]) -> None:
    """Register datasets: ``register(name, DataModuleClass)``, a ``ZooDataModule`` subclass (or a
    ``Lazy("module:Class")`` reference to one).

    The class is built as ``DataModuleClass(representation=..., batch_size=..., seed=...,
    data_dir=..., **params)`` where ``params`` are the registry entry's other ``data`` keys.
    """


@hookspec
def register_metrics(register: Callable[[str, type], None]) -> None:
    """Register evaluation metrics: ``register(name, MetricClass)``, a ``zoo_core.metrics.Metric``
    (or ``Lazy("module:Class", summary="...")``).

    Registry entries select metrics by name under ``eval.metrics``.
    """


@hookspec
def register_entries(register: Callable[[str, dict], None]) -> None:
    """Contribute registry entries: ``register(name, entry_dict)`` with the same schema as
    ``registry.yaml`` (family, data, model, optim, train, eval). They are validated like the file's."""


@hookspec
def register_commands(register: Callable[[str, Callable, str], None]) -> None:
    """Add ``zoo`` subcommands: ``register(name, configure, help)``. ``configure(parser)`` receives
    the subcommand's ``argparse.ArgumentParser`` to add arguments to, and must set the function to run
    with ``parser.set_defaults(run=lambda args, zoo: ...)``; it receives the parsed arguments and the
    :class:`zoo_core.zoo.Zoo`. Built-in command names cannot be taken."""
