"""The diffusion family: denoising diffusion probabilistic models (Ho et al. 2020) scored with their ELBO.

The model module (torch, Lightning) is imported when the family is first used, not when the zoo
lists its plugins."""
from zoo_core.hookspecs import hookimpl
from zoo_core.plugins import Lazy

__version__ = "0.1.0"
__all__ = ["DDPM", "register_families"]

FAMILY = Lazy("zoo_diffusion.model:DDPM", family="diffusion", likelihood="bound",
              summary="Denoising diffusion probabilistic model (Ho et al. 2020) with its ELBO as log_prob.")


@hookimpl
def register_families(register):
    register(FAMILY)


def __getattr__(name: str):
    if name == "DDPM":
        from zoo_diffusion.model import DDPM

        return DDPM
    raise AttributeError(f"module 'zoo_diffusion' has no attribute {name!r}")
