"""The one shared runner: train, evaluate and sample any registry entry with a Lightning Trainer.

One job per module: ``options`` (what a caller sets, the resolved configuration, resume),
``rundirs`` (run directories), ``build`` (datamodule and model), ``trainer`` (the Trainer and its
callbacks), ``train``, ``evaluation`` (metrics and ``zoo eval``), ``pictures`` (samples.png and
``zoo sample``), ``writing`` (strict JSON). Every function takes the :class:`zoo_core.zoo.Zoo`.
"""
from zoo_core.runner.build import build_datamodule, build_model, fuse_training_steps
from zoo_core.runner.evaluation import evaluate, run_metrics
from zoo_core.runner.options import RunOptions, resolve_config
from zoo_core.runner.pictures import sample_to_file, save_run_picture
from zoo_core.runner.rundirs import latest_run, runs_root
from zoo_core.runner.train import Interrupted, train, weights_digest
from zoo_core.runner.trainer import build_trainer, quiet_lightning

__all__ = ["Interrupted", "RunOptions", "build_datamodule", "build_model", "build_trainer", "fuse_training_steps", "evaluate",
           "latest_run", "quiet_lightning", "resolve_config", "run_metrics", "runs_root", "sample_to_file",
           "save_run_picture", "train", "weights_digest"]
