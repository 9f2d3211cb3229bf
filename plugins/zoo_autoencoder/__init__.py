"""The autoencoder family: reconstruction loss, sampling through a latent Gaussian mixture."""
from zoo_core.hookspecs import hookimpl
from zoo_autoencoder.model import Autoencoder

__version__ = "0.1.0"
__all__ = ["Autoencoder"]


@hookimpl
def register_families(register):
    register(Autoencoder)
