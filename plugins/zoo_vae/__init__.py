"""The VAE family: a Gaussian-latent variational autoencoder scored with the IWAE bound.

The model module (torch, Lightning) is imported when the family is first used, not when the zoo
lists its plugins."""
from zoo_core.plugins import Lazy, family_plugin

__version__ = "0.1.0"
__all__ = ["VAE", "register_families"]

FAMILY = Lazy("zoo_vae.model:VAE", family="vae", likelihood="bound", conditional=True,
              summary="Gaussian-latent VAE (Kingma & Welling 2014) evaluated with the IWAE bound (Burda et al. 2015).")
register_families, __getattr__ = family_plugin(FAMILY, {"VAE": "zoo_vae.model:VAE"})
