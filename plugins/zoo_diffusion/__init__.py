"""The diffusion family: denoising diffusion probabilistic models (Ho et al. 2020) scored with their ELBO,
and with the exact likelihood of their probability-flow ODE (Song et al. 2021; metric ``ode_nll``)."""
from zoo_core.hookspecs import hookimpl

from .model import DDPM

__version__ = "0.1.0"
__all__ = ["DDPM", "register_families", "register_metrics"]


@hookimpl
def register_families(register):
    register(DDPM)


@hookimpl
def register_metrics(register):
    from .ode_nll import ODENLL

    register("ode_nll", ODENLL)
