"""The Gaussian mixture family (exact likelihood)."""
from zoo_core.hookspecs import hookimpl
from zoo_gmm.model import GMM

__version__ = "0.1.0"
__all__ = ["GMM"]


@hookimpl
def register_families(register):
    register(GMM)
