"""metav1.Condition bookkeeping: set one condition, moving lastTransitionTime only on a status change.

Called by `ladder` and `report` (the derived status view) when they set status. Pure.
"""

from __future__ import annotations

from datetime import datetime

from modeldeploy_operator.api import Condition, ConditionStatus
from modeldeploy_operator.model import fmt_time

ORDER = ("Ready", "Progressing", "Degraded")


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    """A new list with `type_` set; the transition time is kept when the status did not change."""
    old = next((c for c in conditions if c.type == type_), None)
    since = old.last_transition_time if old is not None and old.status == status else fmt_time(now)
    new = Condition(
        type=type_,
        status=status,
        observed_generation=generation,
        last_transition_time=since,
        reason=reason,
        message=message[:1024],
    )
    rest = [c for c in conditions if c.type != type_]
    out = [*rest, new]
    return sorted(out, key=lambda c: ORDER.index(c.type) if c.type in ORDER else len(ORDER))


def get_condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)
