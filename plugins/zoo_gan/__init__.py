"""The GAN family: generator and discriminator trained as a two-player game (no likelihood)."""
from zoo_core.hookspecs import hookimpl

from .model import GAN

__version__ = "0.1.0"
__all__ = ["GAN", "register_families"]


@hookimpl
def register_families(register):
    register(GAN)
