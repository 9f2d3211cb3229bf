"""The VQ-VAE family: a discrete-code autoencoder with a learned PixelCNN prior over its codes.

The model module (torch, Lightning) is imported when the family is first used, not when the zoo
lists its plugins."""
from zoo_core.plugins import Lazy, family_plugin

__version__ = "0.1.0"
__all__ = ["VQVAE", "register_families"]

FAMILY = Lazy("zoo_vqvae.model:VQVAE", family="vqvae", likelihood="bound",
              summary="VQ-VAE (van den Oord et al. 2017) with an autoregressive prior over its codes.")
register_families, __getattr__ = family_plugin(FAMILY, {"VQVAE": "zoo_vqvae.model:VQVAE"})
