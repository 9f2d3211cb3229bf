"""The flow-matching family: conditional flow matching on the linear path, likelihood through the ODE.

The model module (torch, Lightning) is imported when the family is first used, not when the zoo
lists its plugins."""
from zoo_core.plugins import Lazy, family_plugin

__version__ = "0.1.0"
__all__ = ["FlowMatching", "register_families"]

FAMILY = Lazy("zoo_flow_matching.model:FlowMatching", family="flow_matching", likelihood="exact",
              summary="Conditional flow matching (Lipman et al. 2023), likelihood through the probability-flow ODE.")
register_families, __getattr__ = family_plugin(FAMILY, {"FlowMatching": "zoo_flow_matching.model:FlowMatching"})
