"""The diffusion family: denoising diffusion probabilistic models (Ho et al. 2020) scored with their ELBO,
and with the exact likelihood of their probability-flow ODE (Song et al. 2021; metric ``ode_nll``).

The model module (torch, Lightning) is imported when the family is first used, not when the zoo
lists its plugins."""
from zoo_core.hookspecs import hookimpl
from zoo_core.plugins import Lazy, family_plugin

__version__ = "0.1.0"
__all__ = ["DDPM", "register_families", "register_metrics"]

FAMILY = Lazy("zoo_diffusion.model:DDPM", family="diffusion", likelihood="bound", conditional=True,
              summary="Denoising diffusion probabilistic model (Ho et al. 2020) with its ELBO as log_prob.")
register_families, __getattr__ = family_plugin(FAMILY, {"DDPM": "zoo_diffusion.model:DDPM"})
ODE_NLL = Lazy("zoo_diffusion.ode_nll:ODENLL",
               keys=["ode_nll_nats", "ode_nll_stderr", "ode_nll_probe_stderr", "ode_bits_per_dim", "ode_likelihood"])


@hookimpl
def register_metrics(register):
    register("ode_nll", ODE_NLL)
