"""zoo_core: the shared interface, plugin system, registry, runner and Python API of the generative model zoo.

The public API (each function builds or takes a :class:`Zoo`)::

    import zoo_core
    zoo_core.list_entries("gmm-*")              # registry entries
    run = zoo_core.train("gmm-moons", max_epochs=2)
    model = zoo_core.load(run.dir)              # a run directory, checkpoint or export; eval mode
    x = model.sample((5,))                      # (5, 2)
    zoo_core.evaluate(model)                    # {"test": {"nll_nats": ...}, ...}

Names load on first use, so ``import zoo_core`` stays light (no torch until a model is needed).
"""
__version__ = "0.1.0"

_API = ("Run", "create_model", "default_zoo", "evaluate", "list_entries", "list_families", "load", "train")
_LAZY = {
    **{name: "zoo_core.api" for name in _API},
    "GenerativeModel": "zoo_core.model",
    "Zoo": "zoo_core.zoo",
    "Lazy": "zoo_core.plugins",
    "NoLikelihoodError": "zoo_core.errors",
    "ZooError": "zoo_core.errors",
    "hookimpl": "zoo_core.hookspecs",
}
__all__ = [*_API, "GenerativeModel", "Lazy", "NoLikelihoodError", "Zoo", "ZooError", "hookimpl", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'zoo_core' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
