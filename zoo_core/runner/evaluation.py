"""Evaluation: the entry's metrics on its splits, after training (``zoo train``) or of a saved run (``zoo eval``)."""
from __future__ import annotations

import copy
from typing import Any

import pytorch_lightning as pl

from zoo_core.checkpoint import resolve_checkpoint
from zoo_core.errors import ConfigError, DataError
from zoo_core.expected import check as check_expected
from zoo_core.loading import load_model
from zoo_core.registry import apply_override, resolve_entry
from zoo_core.runner.build import build_datamodule
from zoo_core.runner.options import RunOptions
from zoo_core.runner.trainer import build_trainer, check_hardware, quiet_lightning
from zoo_core.runner.writing import write_json


def run_metrics(zoo, trainer: pl.Trainer, model, datamodule, config: dict) -> dict:
    """Evaluate the configured metrics on the configured splits (all ranks take part)."""
    model.configure_evaluation(config["eval"])
    metrics = [zoo.metric(name)(**config["eval"]) for name in config["eval"]["metrics"]]
    metrics = [m for m in metrics if m.applies_to(model)]
    results: dict[str, Any] = {}
    for split in config["eval"]["splits"] if metrics else []:
        model.zoo_metrics = metrics
        datamodule.test_split, datamodule.test_examples = split, config["eval"]["examples"]
        try:
            trainer.test(model, datamodule=datamodule, verbose=False)
        except SystemExit:  # Lightning turns Ctrl-C (KeyboardInterrupt) into sys.exit(1) after its teardown
            if trainer.interrupted:
                raise KeyboardInterrupt from None
            raise
        results[split] = dict(model.zoo_results)
    model.zoo_metrics = []
    # described after measuring: a description may name what the measurement set up (e.g. the
    # feature classifier, trained or loaded from the data the trainer's datamodule points at)
    return {"metric_descriptions": {m.name: m.describe(model) for m in metrics}, **results}


def evaluate(zoo, path: str, opts: RunOptions | None = None, splits: list[str] | None = None,
             loaded=None) -> dict:
    """Evaluate a run directory, checkpoint or export; ``opts.overrides`` may change ``eval.*``
    settings. ``loaded`` = (model, config, checkpoint path) of an already loaded model."""
    opts = opts or RunOptions()
    quiet_lightning()
    check_hardware(opts)
    for item in opts.overrides:
        if not item.split("=", 1)[0].strip().startswith("eval."):
            raise ConfigError(f"zoo eval: --set only changes eval.* settings, got {item!r}")
    model, config, ckpt = loaded if loaded is not None else load_model(path, zoo)
    # a deep copy: the overrides must not change the loaded model's own configuration
    body = copy.deepcopy({k: v for k, v in config.items() if k not in ("entry", "source")})
    for item in opts.overrides:
        apply_override(body, item)
    if splits:
        body["eval"] = {**body["eval"], "splits": splits}
    config = resolve_entry(config["entry"], body, f"{ckpt}: entry '{config['entry']}'", config["source"], zoo.plugins)
    pl.seed_everything(config["train"]["seed"], workers=True, verbose=False)
    datamodule = build_datamodule(zoo, config, opts.data_dir, opts.data)
    if tuple(datamodule.spec.event_shape) != tuple(model.event_shape):
        raise DataError(f"{ckpt}: the model expects data of shape {tuple(model.event_shape)}, "
                        f"but dataset '{config['data']['name']}' has {datamodule.spec.event_shape}")
    run_dir = resolve_checkpoint(path)[1] if path is not None else None
    trainer = build_trainer(opts, config, run_dir, training=False)
    results = {"entry": config["entry"], "family": config["family"], "checkpoint": str(ckpt),
               "eval": config["eval"], **run_metrics(zoo, trainer, model, datamodule, config)}
    registry = zoo.with_registry(opts.registry_files).registry
    results["expected"] = check_expected(registry.expectations_for(config), results)
    if trainer.is_global_zero and run_dir is not None:
        write_json(run_dir / f"eval_{'_'.join(config['eval']['splits'])}.json", results)
    return results
