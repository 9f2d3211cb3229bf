"""The normalizing-flow family (exact likelihood): RealNVP, neural spline flows, MAF and Glow.

The model module (torch, Lightning) is imported when the family is first used, not when the zoo
lists its plugins."""
from zoo_core.plugins import Lazy, family_plugin

__version__ = "0.1.0"
__all__ = ["Flow", "RealNVP", "register_families"]

FAMILY = Lazy("zoo_flow.model:Flow", family="flow", likelihood="exact", conditional=True,
              summary="Normalizing flows: RealNVP, neural spline flows, MAF / NSF-AR and multiscale Glow (exact likelihood).")
register_families, __getattr__ = family_plugin(FAMILY, {"Flow": "zoo_flow.model:Flow", "RealNVP": "zoo_flow.model:RealNVP"})
