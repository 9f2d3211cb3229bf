"""The flow-matching family: conditional flow matching on the linear path, likelihood through the ODE."""
from zoo_core.hookspecs import hookimpl

from .model import FlowMatching

__version__ = "0.1.0"
__all__ = ["FlowMatching", "register_families"]


@hookimpl
def register_families(register):
    register(FlowMatching)
