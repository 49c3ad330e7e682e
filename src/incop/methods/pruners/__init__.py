"""The built-in pruners, one file each; importing this package registers them in
:data:`incop.methods.pruning.PRUNERS` (a new one: its file, and its line here)."""

# isort: off
# In the order `--help` and the error messages list them.
from incop.methods.pruners.magnitude import MagnitudePruner
from incop.methods.pruners.random import RandomPruner
from incop.methods.pruners.sap import SAPPruner
from incop.methods.pruners.synflow import SynFlowPruner
from incop.methods.pruners.snip import SNIPPruner
from incop.methods.pruners.dynamic import RigLPruner, SETPruner
from incop.methods.pruners.tas import TASPruner

# isort: on

__all__ = [
    "MagnitudePruner",
    "RandomPruner",
    "RigLPruner",
    "SAPPruner",
    "SETPruner",
    "SNIPPruner",
    "SynFlowPruner",
    "TASPruner",
]
