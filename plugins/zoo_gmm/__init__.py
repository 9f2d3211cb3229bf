"""The Gaussian mixture family (exact likelihood).

The model module (torch, Lightning) is imported when the family is first used, not when the zoo
lists its plugins."""
from zoo_core.plugins import Lazy, family_plugin

__version__ = "0.1.0"
__all__ = ["GMM", "register_families"]

FAMILY = Lazy("zoo_gmm.model:GMM", family="gmm", likelihood="exact", conditional=True,
              summary="Gaussian mixture (full or diagonal covariances), maximum likelihood.")
register_families, __getattr__ = family_plugin(FAMILY, {"GMM": "zoo_gmm.model:GMM"})
