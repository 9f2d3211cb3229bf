"""The autoencoder family: reconstruction loss, sampling through a latent Gaussian mixture.

The model module (torch, Lightning) is imported when the family is first used, not when the zoo
lists its plugins."""
from zoo_core.plugins import Lazy, family_plugin

__version__ = "0.1.0"
__all__ = ["Autoencoder", "register_families"]

FAMILY = Lazy("zoo_autoencoder.model:Autoencoder", family="autoencoder", likelihood="none", conditional=True,
              summary="Deterministic autoencoder + latent Gaussian mixture (ex-post density estimation).")
register_families, __getattr__ = family_plugin(FAMILY, {"Autoencoder": "zoo_autoencoder.model:Autoencoder"})
