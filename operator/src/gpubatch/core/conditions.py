"""Kubernetes-style conditions: one entry per type, lastTransitionTime moves only on a change.

kstatus, Argo CD and `kubectl wait` read conditions this way, so the rules matter: a condition
whose status did not change keeps its transition time, or every pass would look like news.
"""

from __future__ import annotations

from datetime import datetime

from gpubatch.api.status import CONDITION_MESSAGE_LIMIT, Condition, GPUBatchStatus


def set_condition(
    status: GPUBatchStatus,
    type_: str,
    value: str,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> bool:
    """Set one condition in place; True when its status value changed (worth an Event)."""
    message = message[:CONDITION_MESSAGE_LIMIT]
    reason = reason or "Unknown"
    for position, current in enumerate(status.conditions):
        if current.type != type_:
            continue
        changed = current.status != value
        status.conditions[position] = Condition(
            type=type_,
            status=value,
            reason=reason,
            message=message,
            last_transition_time=now if changed else current.last_transition_time,
            observed_generation=generation,
        )
        return changed
    status.conditions.append(
        Condition(
            type=type_,
            status=value,
            reason=reason,
            message=message,
            last_transition_time=now,
            observed_generation=generation,
        )
    )
    return value == "True"


def condition_is(status: GPUBatchStatus, type_: str, value: str = "True") -> bool:
    return any(c.type == type_ and c.status == value for c in status.conditions)
