"""The autoencoder family: reconstruction loss, sampling through a latent Gaussian mixture.

The model module (torch, Lightning) is imported when the family is first used, not when the zoo
lists its plugins."""
from zoo_core.hookspecs import hookimpl
from zoo_core.plugins import Lazy

__version__ = "0.1.0"
__all__ = ["Autoencoder", "register_families"]

FAMILY = Lazy("zoo_autoencoder.model:Autoencoder", family="autoencoder", likelihood="none", conditional=True,
              summary="Deterministic autoencoder + latent Gaussian mixture (ex-post density estimation).")


@hookimpl
def register_families(register):
    register(FAMILY)


def __getattr__(name: str):
    if name == "Autoencoder":
        from zoo_autoencoder.model import Autoencoder

        return Autoencoder
    raise AttributeError(f"module 'zoo_autoencoder' has no attribute {name!r}")
