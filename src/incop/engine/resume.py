"""Taking up a saved state: what must hold before a run goes on from its ``state.pt``.

What the state holds is the loop's :class:`incop.engine.state.RunState` and what the phase
in progress and the parts add (:meth:`incop.engine.imp.IMP.save_state`).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from incop.config import WHERE_FIELDS, Config, default_value
from incop.errors import UserError
from incop.workload.models import USER_MODEL


def check_settings(saved: dict[str, Any], config: Config) -> None:
    """Refuse to go on with other settings than the saved run's. Where the folder and the data
    are does not count (they may have moved since); a setting the saved run did not have yet
    (added in a later incop) ran as its default."""
    now = {k: v for k, v in config.to_dict().items() if k not in WHERE_FIELDS}
    before = {k: saved.get(k, default_value(k)) for k in now}
    if str(now["model"]).startswith(USER_MODEL) and saved.get("model") == default_value("model"):
        # An incop.prune of earlier commits recorded every user model as the default one (mlp).
        before["model"] = now["model"]
    before |= {k: v for k, v in saved.items() if k not in now and k not in WHERE_FIELDS}
    if before != now:
        changed = ", ".join(
            f"{k}: {before.get(k)!r} saved, {now.get(k)!r} now"
            for k in sorted(set(before) | set(now))
            if before.get(k) != now.get(k)
        )
        raise UserError(f"resume: the saved state belongs to a run with other settings ({changed})")


def warn_threads(saved: int) -> None:
    """Results are bitwise the same only at the thread count the run was saved with."""
    if saved != torch.get_num_threads():
        warnings.warn(
            f"resuming with {torch.get_num_threads()} CPU threads; the run was saved with"
            f" {saved}, so results may differ from an uninterrupted run in the last digits",
            RuntimeWarning,
            stacklevel=4,
        )
