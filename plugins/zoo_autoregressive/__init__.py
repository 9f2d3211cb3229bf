"""The autoregressive family: MADE, PixelCNN and Gated PixelCNN, exact likelihoods by the chain rule.

The model module (torch, Lightning) is imported when the family is first used, not when the zoo
lists its plugins."""
from zoo_core.hookspecs import hookimpl
from zoo_core.plugins import Lazy

__version__ = "0.1.0"
__all__ = ["Autoregressive", "register_families"]

FAMILY = Lazy("zoo_autoregressive.model:Autoregressive", family="autoregressive", likelihood="exact", conditional=True,
              summary="MADE (Germain et al. 2015), PixelCNN and Gated PixelCNN (van den Oord et al. 2016): exact likelihoods.")


@hookimpl
def register_families(register):
    register(FAMILY)


def __getattr__(name: str):
    if name == "Autoregressive":
        from zoo_autoregressive.model import Autoregressive

        return Autoregressive
    raise AttributeError(f"module 'zoo_autoregressive' has no attribute {name!r}")
