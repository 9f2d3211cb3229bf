"""The VQ-VAE family: a discrete-code autoencoder with a learned PixelCNN prior over its codes."""
from zoo_core.hookspecs import hookimpl

from .model import VQVAE

__version__ = "0.1.0"
__all__ = ["VQVAE", "register_families"]


@hookimpl
def register_families(register):
    register(VQVAE)
