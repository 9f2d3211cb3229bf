"""Building a run's datamodule and model from its resolved configuration."""
from __future__ import annotations

from typing import Any

from zoo_core.errors import ConfigError


#: the entry's data settings that still apply when the data is given in memory (``data=``)
IN_MEMORY_SETTINGS = ("conditional", "levels", "split")


def in_memory_config(config: dict) -> dict:
    """The run configuration of a run on in-memory data: the built-in ``array`` dataset (without a
    file: evaluating such a run again needs the data passed again)."""
    kept = {k: v for k, v in config["data"].items() if k in IN_MEMORY_SETTINGS}
    return {**config, "data": {"name": "array", "representation": config["data"]["representation"], **kept}}


def build_datamodule(zoo, config: dict, data_dir: str | None = None, data: Any = None):
    """The entry's datamodule; with ``data`` (in-memory tensor/array, or (x, labels)) the built-in
    ``array`` dataset over it, with the entry's representation, batch sizes and seed."""
    settings = dict(config["data"])
    name = settings.pop("name")
    train = config["train"]
    kwargs = dict(representation=settings.pop("representation"), batch_size=train["batch_size"],
                  eval_batch_size=train["eval_batch_size"], seed=train["seed"], data_dir=data_dir)
    if "conditional" in settings and not settings["conditional"]:
        settings.pop("conditional")  # only datasets with labels know the key
    try:
        if data is not None:
            x, y = data if isinstance(data, (tuple, list)) and len(data) == 2 else (data, None)
            keep = {k: v for k, v in settings.items() if k in IN_MEMORY_SETTINGS}
            return zoo.dataset("array").from_array(x, y, **kwargs, **keep)
        return zoo.dataset(name)(**kwargs, **settings)
    except TypeError as exc:
        raise ConfigError(f"entry '{config['entry']}': bad data settings ({exc})") from None


def build_model(zoo, config: dict, datamodule):
    """The entry's model for the datamodule's data; refuses data the family does not model."""
    cls = zoo.family(config["family"])
    spec = datamodule.spec
    ranks = getattr(cls, "event_ranks", None)
    if ranks is not None and len(spec.event_shape) not in ranks:
        shapes = {1: "vectors (D,)", 3: "images (C, H, W)"}
        raise ConfigError(f"entry '{config['entry']}': family '{config['family']}' models "
                          f"{' and '.join(shapes.get(r, f'rank-{r} data') for r in ranks)}; dataset "
                          f"'{spec.name}' has events of shape {tuple(spec.event_shape)}")
    try:
        model = cls(data=spec.to_dict(), optim=config["optim"], **config["model"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"entry '{config['entry']}': family '{config['family']}' rejected its model "
                          f"settings: {exc}") from None
    model.zoo_config = config
    model.zoo_provider = zoo.plugins.family_provider(config["family"])  # named if it is later uninstalled
    return model


def fuse_training_steps(config: dict, datamodule, model) -> None:
    """``train.fused_steps`` k > 1: the loader hands over k batches at once and the model takes k
    optimiser steps per Lightning step (zoo_core/fused.py); the model clips gradients itself."""
    k = int(config["train"].get("fused_steps") or 1)
    if k > 1:
        model.fuse_steps(k, config["train"]["gradient_clip_val"])
        datamodule.fused_steps = k
