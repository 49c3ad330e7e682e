"""incop: iterative magnitude pruning, fast.

Public API::

    incop.prune(model, train_data, val_data, method="sap", ...) -> Result
    incop.Batches(x, y, batch_size, *, shuffle=False, seed=0, ...): in-memory batches
    incop.pq_index(w, p, q) -> float
    incop.sap_prune_count(d, pqi, p, q, eta_r=0.0, gamma=1.0, beta=0.9) -> int
    incop.information_flow(model, batches, layers=None) -> Flow
    incop.gradient_flow(model, batches, loss_fn=None, masks=None, normalize=False) -> Tensor
    incop.sparsity_report(model, masks, example_input) -> SparsityReport
    incop.apply_masks(model, masks, optimizer=None) -> MaskHandle
    incop.load_ticket(source, model=None, *, level=None) -> Ticket (model, masks)
    incop.export_ticket(source, format, out, *, level=None, model=None) -> Path
    incop.pruning_limit(model, batches, *, loss_fn=None, eps=None, ...) -> Limit
    incop.tas_search(model, train_batches, *, flop_ratio, epochs, ...) -> TASResult

Extending it (CONTRIBUTING.md): ``Pruner`` and ``StoppingRule`` (the protocols a user's own
object follows), ``Callback``, and for a component registered by name, its ``Options`` made
of ``option(...)`` fields and a registry (``PRUNERS``, ``STOPPING_RULES``, ``LOGGERS``).
"""

from typing import TYPE_CHECKING

from incop.core.lazy import exports
from incop.version import __version__

# Each name is imported on first use (PEP 562), so the command line answers `--help`, `list`
# and every refusal of bad input without importing torch (about 2 s and 200 MB).
_WHERE = {
    "Config": "incop.config",
    "Callback": "incop.core.callbacks",
    "LOGGERS": "incop.core.callbacks",
    "Logger": "incop.core.callbacks",
    "prunable_parameters": "incop.core.masks",
    "sparsity_report": "incop.core.masks",
    "NoOptions": "incop.core.options",
    "not_allowed": "incop.core.options",
    "option": "incop.core.options",
    "prune": "incop.engine.imp",
    "LevelResult": "incop.engine.result",
    "Result": "incop.engine.result",
    "RunState": "incop.engine.state",
    "DataError": "incop.errors",
    "UserError": "incop.errors",
    "Flow": "incop.methods.flows",
    "gradient_flow": "incop.methods.flows",
    "information_flow": "incop.methods.flows",
    "Limit": "incop.methods.limit",
    "pruning_limit": "incop.methods.limit",
    "PRUNERS": "incop.methods.pruning",
    "Pruner": "incop.methods.pruning",
    "PrunerComponent": "incop.methods.pruning",
    "pq_index": "incop.methods.pruning",
    "sap_prune_count": "incop.methods.pruning",
    "Reference": "incop.methods.stopping",
    "STOPPING_RULES": "incop.methods.stopping",
    "StoppingRule": "incop.methods.stopping",
    "register_rule": "incop.methods.stopping.rule",
    "TASResult": "incop.methods.tas",
    "tas_search": "incop.tools.tas",
    "MaskHandle": "incop.tools.ticket",
    "Ticket": "incop.tools.ticket",
    "apply_masks": "incop.tools.ticket",
    "export_ticket": "incop.tools.ticket",
    "load_ticket": "incop.tools.ticket",
    "Batches": "incop.workload.data",
}

__all__ = [
    "LOGGERS",
    "PRUNERS",
    "STOPPING_RULES",
    "Batches",
    "Callback",
    "Config",
    "DataError",
    "Flow",
    "LevelResult",
    "Limit",
    "Logger",
    "MaskHandle",
    "NoOptions",
    "Pruner",
    "PrunerComponent",
    "Reference",
    "Result",
    "RunState",
    "StoppingRule",
    "TASResult",
    "Ticket",
    "UserError",
    "__version__",
    "apply_masks",
    "export_ticket",
    "gradient_flow",
    "information_flow",
    "load_ticket",
    "not_allowed",
    "option",
    "pq_index",
    "prunable_parameters",
    "prune",
    "pruning_limit",
    "register_rule",
    "sap_prune_count",
    "sparsity_report",
    "tas_search",
]


__getattr__, __dir__ = exports(
    __name__,
    {module: tuple(n for n, m in _WHERE.items() if m == module) for module in _WHERE.values()},
)


if TYPE_CHECKING:
    from incop.config import Config
    from incop.core.callbacks import LOGGERS, Callback, Logger
    from incop.core.masks import prunable_parameters, sparsity_report
    from incop.core.options import NoOptions, not_allowed, option
    from incop.engine.imp import prune
    from incop.engine.result import LevelResult, Result
    from incop.engine.state import RunState
    from incop.errors import DataError, UserError
    from incop.methods.flows import Flow, gradient_flow, information_flow
    from incop.methods.limit import Limit, pruning_limit
    from incop.methods.pruning import PRUNERS, Pruner, PrunerComponent, pq_index, sap_prune_count
    from incop.methods.stopping import STOPPING_RULES, Reference, StoppingRule
    from incop.methods.stopping.rule import register_rule
    from incop.methods.tas import TASResult
    from incop.tools.tas import tas_search
    from incop.tools.ticket import MaskHandle, Ticket, apply_masks, export_ticket, load_ticket
    from incop.workload.data import Batches
