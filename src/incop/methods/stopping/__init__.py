"""Stopping rules for a retraining phase (METHOD.md section 6), one file each; importing this
package registers them (a new one: its file, and its line here). The protocol, the registry
and the reasons: :mod:`incop.methods.stopping.rule`."""

# isort: off
# In the order `--help` and the error messages list them.
from incop.methods.stopping.rule import STOP_REASONS, STOPPING_RULES, Reference, StoppingRule
from incop.methods.stopping.accuracy import AccuracyRule
from incop.methods.stopping.flow import FlowRule
from incop.methods.stopping.information import InformationFlowRule
from incop.methods.stopping.gradient import GradientFlowRule
from incop.methods.stopping.mask import MaskRule
from incop.methods.stopping.plateau import FlowPlateau, GFPlateau, IFPlateau, LossPlateau
from incop.methods.stopping.mask_flow import MaskFlow, MaskGF, MaskIF

# isort: on

__all__ = [
    "STOPPING_RULES",
    "STOP_REASONS",
    "AccuracyRule",
    "FlowPlateau",
    "FlowRule",
    "GFPlateau",
    "GradientFlowRule",
    "IFPlateau",
    "InformationFlowRule",
    "LossPlateau",
    "MaskFlow",
    "MaskGF",
    "MaskIF",
    "MaskRule",
    "Reference",
    "StoppingRule",
]
