"""The normalizing-flow family (exact likelihood): RealNVP, neural spline flows, MAF and Glow.

The model module (torch, Lightning) is imported when the family is first used, not when the zoo
lists its plugins."""
from zoo_core.hookspecs import hookimpl
from zoo_core.plugins import Lazy

__version__ = "0.1.0"
__all__ = ["Flow", "RealNVP", "register_families"]

FAMILY = Lazy("zoo_flow.model:Flow", family="flow", likelihood="exact", conditional=True,
              summary="Normalizing flows: RealNVP, neural spline flows, MAF / NSF-AR and multiscale Glow (exact likelihood).")


@hookimpl
def register_families(register):
    register(FAMILY)


def __getattr__(name: str):
    if name in ("Flow", "RealNVP"):
        from zoo_flow import model

        return getattr(model, name)
    raise AttributeError(f"module 'zoo_flow' has no attribute {name!r}")
