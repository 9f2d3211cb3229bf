"""The diffusion family: denoising diffusion probabilistic models (Ho et al. 2020) scored with their ELBO."""
from zoo_core.hookspecs import hookimpl

from .model import DDPM

__version__ = "0.1.0"
__all__ = ["DDPM", "register_families"]


@hookimpl
def register_families(register):
    register(DDPM)
