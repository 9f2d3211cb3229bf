"""The Gaussian mixture family (exact likelihood).

The model module (torch, Lightning) is imported when the family is first used, not when the zoo
lists its plugins."""
from zoo_core.hookspecs import hookimpl
from zoo_core.plugins import Lazy

__version__ = "0.1.0"
__all__ = ["GMM", "register_families"]

FAMILY = Lazy("zoo_gmm.model:GMM", family="gmm", likelihood="exact", conditional=True,
              summary="Gaussian mixture (full or diagonal covariances), maximum likelihood.")


@hookimpl
def register_families(register):
    register(FAMILY)


def __getattr__(name: str):
    if name == "GMM":
        from zoo_gmm.model import GMM

        return GMM
    raise AttributeError(f"module 'zoo_gmm' has no attribute {name!r}")
