"""zoo_core: the shared interface, plugin system, registry and runner of the generative model zoo."""
from zoo_core.errors import NoLikelihoodError, ZooError
from zoo_core.hookspecs import hookimpl
from zoo_core.model import GenerativeModel

__version__ = "0.1.0"
__all__ = ["GenerativeModel", "NoLikelihoodError", "ZooError", "hookimpl", "__version__"]
