"""The autoregressive family: MADE, PixelCNN and Gated PixelCNN, exact likelihoods by the chain rule.

The model module (torch, Lightning) is imported when the family is first used, not when the zoo
lists its plugins."""
from zoo_core.plugins import Lazy, family_plugin

__version__ = "0.1.0"
__all__ = ["Autoregressive", "register_families"]

FAMILY = Lazy("zoo_autoregressive.model:Autoregressive", family="autoregressive", likelihood="exact", conditional=True,
              summary="MADE (Germain et al. 2015), PixelCNN and Gated PixelCNN (van den Oord et al. 2016): exact likelihoods.")
register_families, __getattr__ = family_plugin(FAMILY, {"Autoregressive": "zoo_autoregressive.model:Autoregressive"})
