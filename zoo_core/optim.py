"""Optimiser settings of a registry entry's ``optim`` section: names and defaults (no torch import)."""

OPTIMIZER_NAMES = ("adam", "adamw", "sgd")
DEFAULT_OPTIM = {"name": "adam", "lr": 1e-3, "weight_decay": 0.0, "betas": [0.9, 0.999], "scheduler": None}
