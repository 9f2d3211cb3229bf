"""The VAE family: a Gaussian-latent variational autoencoder scored with the IWAE bound.

The model module (torch, Lightning) is imported when the family is first used, not when the zoo
lists its plugins."""
from zoo_core.hookspecs import hookimpl
from zoo_core.plugins import Lazy

__version__ = "0.1.0"
__all__ = ["VAE", "register_families"]

FAMILY = Lazy("zoo_vae.model:VAE", family="vae", likelihood="bound", conditional=True,
              summary="Gaussian-latent VAE (Kingma & Welling 2014) evaluated with the IWAE bound (Burda et al. 2015).")


@hookimpl
def register_families(register):
    register(FAMILY)


def __getattr__(name: str):
    if name == "VAE":
        from zoo_vae.model import VAE

        return VAE
    raise AttributeError(f"module 'zoo_vae' has no attribute {name!r}")
