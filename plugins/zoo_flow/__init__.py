"""The normalizing-flow family: RealNVP affine couplings with ActNorm (exact likelihood)."""
from zoo_core.hookspecs import hookimpl

from .model import RealNVP

__version__ = "0.1.0"
__all__ = ["RealNVP", "register_families"]


@hookimpl
def register_families(register):
    register(RealNVP)
