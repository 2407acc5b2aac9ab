"""Annotations that tell kwok's Stages (kwok-config.yaml) how a simulated task pod behaves."""

from __future__ import annotations

import json
from typing import Any

DURATION = "sim.gpubatch.io/duration"
SLOW_DURATION = "sim.gpubatch.io/slow-duration"
EXIT_CODE = "sim.gpubatch.io/exit-code"
TERMINATION_MESSAGE = "sim.gpubatch.io/termination-message"


def go_duration(seconds: float) -> str:
    """kwok reads Go duration strings; a bare number would silently fall back to the default."""
    return f"{round(seconds * 1000)}ms"


def annotations(
    seconds: float = 0.2,
    *,
    exit_code: int = 0,
    slow_seconds: float | None = None,
    termination_message: str | dict[str, Any] | None = None,
) -> dict[str, str]:
    out = {DURATION: go_duration(seconds)}
    if exit_code:
        out[EXIT_CODE] = str(exit_code)
    if slow_seconds is not None:
        out[SLOW_DURATION] = go_duration(slow_seconds)
    if termination_message is not None:
        out[TERMINATION_MESSAGE] = (
            termination_message
            if isinstance(termination_message, str)
            else json.dumps(termination_message, separators=(",", ":"))
        )
    return out
