"""The normalizing-flow family (exact likelihood): RealNVP, neural spline flows, MAF and Glow."""
from zoo_core.hookspecs import hookimpl

from .model import Flow, RealNVP

__version__ = "0.1.0"
__all__ = ["Flow", "RealNVP", "register_families"]


@hookimpl
def register_families(register):
    register(Flow)
