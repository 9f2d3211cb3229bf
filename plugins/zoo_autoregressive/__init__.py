"""The autoregressive family: MADE, PixelCNN and Gated PixelCNN, exact likelihoods by the chain rule."""
from zoo_core.hookspecs import hookimpl

from .model import Autoregressive

__version__ = "0.1.0"
__all__ = ["Autoregressive", "register_families"]


@hookimpl
def register_families(register):
    register(Autoregressive)
