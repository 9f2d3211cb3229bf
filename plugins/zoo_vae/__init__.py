"""The VAE family: a Gaussian-latent variational autoencoder scored with the IWAE bound."""
from zoo_core.hookspecs import hookimpl

from .model import VAE

__version__ = "0.1.0"
__all__ = ["VAE", "register_families"]


@hookimpl
def register_families(register):
    register(VAE)
