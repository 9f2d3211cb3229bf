"""The normalizing-flow family: RealNVP affine couplings with ActNorm (exact likelihood).

The model module (torch, Lightning) is imported when the family is first used, not when the zoo
lists its plugins."""
from zoo_core.hookspecs import hookimpl
from zoo_core.plugins import Lazy

__version__ = "0.1.0"
__all__ = ["RealNVP", "register_families"]

FAMILY = Lazy("zoo_flow.model:RealNVP", family="flow", likelihood="exact",
              summary="RealNVP normalizing flow (Dinh et al. 2017) with ActNorm (Kingma & Dhariwal 2018).")


@hookimpl
def register_families(register):
    register(FAMILY)


def __getattr__(name: str):
    if name == "RealNVP":
        from zoo_flow.model import RealNVP

        return RealNVP
    raise AttributeError(f"module 'zoo_flow' has no attribute {name!r}")
