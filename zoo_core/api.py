"""The zoo as a Python library: list, create, train, load and evaluate models in a few lines.

Every function takes an optional ``zoo`` (a :class:`zoo_core.zoo.Zoo`); without one it uses
:func:`default_zoo`, built once per process from the installed plugins. The functions run the same
code as the ``zoo`` command: ``train`` is ``zoo train``, ``evaluate`` is ``zoo eval``.

>>> import zoo_core
>>> "gmm-moons" in zoo_core.list_entries("gmm-*")
True
>>> "flow" in zoo_core.list_families()
True
"""
from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo_core.errors import ConfigError
from zoo_core.zoo import Zoo

_DEFAULT: Zoo | None = None


def default_zoo() -> Zoo:
    """The process's Zoo (installed plugins, the zoo's registry and ``$ZOO_REGISTRY``), built on first use."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Zoo()
    return _DEFAULT


def _zoo(zoo: Zoo | None, registry=None) -> Zoo:
    zoo = zoo if zoo is not None else default_zoo()
    return zoo.with_registry([registry] if isinstance(registry, (str, Path)) else (registry or []))


def list_entries(pattern: str | None = None, *, registry=None, zoo: Zoo | None = None) -> list[str]:
    """Registry entry names, sorted; ``pattern`` is a shell-style pattern such as ``"vae-*"``.

    >>> list_entries("gmm-m*")
    ['gmm-mnist', 'gmm-moons']
    """
    names = _zoo(zoo, registry).registry.names()
    return [n for n in names if pattern is None or fnmatch.fnmatchcase(n, pattern)]


def list_families(*, zoo: Zoo | None = None) -> list[str]:
    """Installed family names, sorted.

    >>> list_families()[:3]
    ['autoencoder', 'autoregressive', 'diffusion']
    """
    return sorted(_zoo(zoo).plugins.families)


def _overrides(section_keys: dict[str, Any], default_section: str) -> list[str]:
    """Keyword overrides as ``--set`` items: ``latent_dim=32`` -> ``model.latent_dim=32``;
    dotted names (``train__max_epochs`` or ``{"train.max_epochs": 3}``) choose the section."""
    items = []
    for key, value in section_keys.items():
        dotted = key.replace("__", ".")
        if "." not in dotted:
            dotted = f"{default_section}.{dotted}"
        items.append(f"{dotted}={json.dumps(value)}")
    return items


def create_model(entry: str, *, registry=None, data_dir: str | None = None, zoo: Zoo | None = None,
                 **overrides: Any):
    """An untrained model built from registry ``entry``; keyword ``overrides`` are model settings
    (``latent_dim=32``), or any setting as ``section__key`` (``optim__lr=1e-3``).

    >>> model = create_model("gmm-moons", n_components=4)
    >>> model.sample((3,)).shape
    torch.Size([3, 2])
    """
    from zoo_core.runner import build_datamodule, build_model

    zoo = _zoo(zoo, registry)
    config = zoo.resolve(entry, _overrides(overrides, "model"))
    datamodule = build_datamodule(zoo, config, data_dir)
    return build_model(zoo, config, datamodule)


@dataclass
class Run:
    """A finished training run: its directory, its ``metrics.json`` and its trained model."""

    dir: Path
    metrics: dict
    _model: Any = None
    _zoo: Zoo | None = None

    @property
    def model(self):
        """The trained model (its last checkpoint), in eval mode."""
        if self._model is None:
            self._model = load(self.dir, zoo=self._zoo)
        return self._model


_RUN_OPTIONS = ("accelerator", "devices", "num_nodes", "strategy", "precision", "max_epochs", "max_steps", "seed",
                "runs_dir", "resume", "wandb", "data_dir", "progress")


def train(entry: str, data: Any = None, *, registry=None, zoo: Zoo | None = None, overrides: list[str] = (),
          **options: Any) -> Run:
    """Train registry ``entry`` with the shared runner (``zoo train``) and evaluate it.

    ``data``: your own data instead of the entry's dataset: a tensor or array of shape (N, *event)
    (or a tuple (x, labels)), split into train/val/test with the entry's seed. ``options``: any of
    ``max_epochs, max_steps, seed, devices, accelerator, precision, runs_dir, resume, data_dir,
    progress, wandb``; other keywords are ``--set`` settings (``optim__lr=3e-3``, ``latent_dim=8``
    for the model). Returns a :class:`Run`.
    """
    from zoo_core.runner import RunOptions, train as run_train

    zoo = _zoo(zoo, registry)
    run_options = {k: options.pop(k) for k in list(options) if k in _RUN_OPTIONS}
    run_options.setdefault("progress", False)
    opts = RunOptions(overrides=[*overrides, *_overrides(options, "model")], data=data, **run_options)
    metrics = run_train(zoo, entry, opts)
    return Run(Path(metrics["run_dir"]), metrics, _zoo=zoo)


def load(path: str | Path, *, zoo: Zoo | None = None):
    """The trained model of a run directory, a ``.ckpt`` file or an export directory, in eval mode.
    Checkpoints are read with ``weights_only=True`` and exports from safetensors: no pickle runs."""
    from zoo_core.loading import load_model

    model, _, _ = load_model(path, _zoo(zoo))
    return model.eval()


def evaluate(model_or_path, data: Any = None, metrics: list[str] | None = None, *, splits: list[str] | None = None,
             zoo: Zoo | None = None, **eval_settings: Any) -> dict:
    """Evaluate a loaded model or a run/checkpoint/export path (``zoo eval``) and return its results:
    ``{"test": {"nll_nats": ..., ...}, "metric_descriptions": {...}, ...}``.

    ``metrics`` chooses the metrics (default: the entry's); ``eval_settings`` set other ``eval.*``
    keys (``iw_samples=100``); ``data`` evaluates on your own data (as in :func:`train`)."""
    from zoo_core.loading import load_model
    from zoo_core.runner import RunOptions, evaluate as run_evaluate

    zoo = _zoo(zoo)
    if isinstance(model_or_path, (str, Path)):
        path, loaded = str(model_or_path), load_model(model_or_path, zoo)
    else:
        config = getattr(model_or_path, "zoo_config", None)
        if not config:
            raise ConfigError("evaluate: this model has no run configuration; build it with "
                              "zoo_core.create_model, train or load")
        path, loaded = None, (model_or_path, config, "<in-memory model>")
    settings = dict(eval_settings)
    if metrics is not None:
        settings["metrics"] = list(metrics)
    overrides = [f"eval.{k}={json.dumps(v)}" for k, v in settings.items()]
    return run_evaluate(zoo, path, RunOptions(overrides=overrides, data=data, progress=False), splits=splits,
                        loaded=loaded)
