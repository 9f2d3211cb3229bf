"""The GAN family: generator and discriminator trained as a two-player game (no likelihood).

The model module (torch, Lightning) is imported when the family is first used, not when the zoo
lists its plugins."""
from zoo_core.plugins import Lazy, family_plugin

__version__ = "0.1.0"
__all__ = ["GAN", "register_families"]

FAMILY = Lazy("zoo_gan.model:GAN", family="gan", likelihood="none", conditional=True,
              summary="Generative adversarial network (Goodfellow et al. 2014): MLP or DCGAN nets, no likelihood.")
register_families, __getattr__ = family_plugin(FAMILY, {"GAN": "zoo_gan.model:GAN"})
