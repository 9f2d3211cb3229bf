"""zoo-plugin-example: adds the ``independent`` family (a product of per-dimension marginals).

Found by the zoo through the ``zoo`` entry-point group (see this package's pyproject.toml)::

    [project.entry-points.zoo]
    independent = "zoo_independent"
"""
from zoo_core.hookspecs import hookimpl

from zoo_independent.model import Independent

__version__ = "0.1.0"
__all__ = ["Independent", "register_families", "register_entries"]

ENTRIES = {
    "independent-moons": {
        "description": "Independent Gaussian per coordinate on two moons (a factorised baseline)",
        "family": "independent",
        "data": {"name": "moons"},
        "optim": {"lr": 1.0e-2},
        "train": {"max_epochs": 2, "batch_size": 500},
    },
    "independent-digits": {
        "description": "Independent Bernoulli per pixel on dynamically binarised 8x8 digits",
        "family": "independent",
        "data": {"name": "digits", "representation": "binarized"},
        "model": {"prior_count": 0.5},
        "optim": {"lr": 1.0e-2},
        "train": {"max_epochs": 2, "batch_size": 128},
        "eval": {"splits": ["val", "test"]},
    },
}


@hookimpl
def register_families(register):
    register(Independent)


@hookimpl
def register_entries(register):
    for name, entry in ENTRIES.items():
        register(name, entry)
