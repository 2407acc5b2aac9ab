"""Annotations that tell kwok's Stages (kwok-config.yaml) how a simulated task pod behaves."""

from __future__ import annotations

import json
import math
from typing import Any

DURATION = "sim.gpubatch.io/duration"
SLOW_DURATION = "sim.gpubatch.io/slow-duration"
EXIT_CODE = "sim.gpubatch.io/exit-code"
TERMINATION_MESSAGE = "sim.gpubatch.io/termination-message"
#: A container waiting reason: the bound pod never starts (kwok Stage gpubatch-pod-stuck).
WAITING_REASON = "sim.gpubatch.io/waiting-reason"


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


LOGNORMAL = "sim.gpubatch.io/lognormal"
_MASK = 1 << 32


def lognormal_annotation(mean_ms: float, sigma: float, seed: int) -> str:
    """`sim.gpubatch.io/lognormal`: every pod of a batch (or Indexed Job) carries the same short
    value, and kwok derives each task's duration from its index with `lognormal_ms`. This gives
    both systems identical per-task durations without a per-pod duration table, whose size grows
    with the batch and loads every component that sees the pod."""
    return f"{mean_ms:g},{sigma:g},{seed}"


def lognormal_ms(index: int, mean_ms: float, sigma: float, seed: int) -> int:
    """The duration kwok gives task `index` (the same arithmetic as the jq expression in
    kwok-config.yaml): two hashed uniforms, Box-Muller, a log-normal with the given mean.

    Integer hashing is exact in both languages; the floating-point steps may differ in the last
    bit between Go and C maths, which moves a duration by at most a millisecond."""
    key = index + seed * 100003 + 1
    u1 = (key * 2654435761 % _MASK + 0.5) / _MASK
    u2 = (key * 2246822519 % _MASK + 0.5) / _MASK
    z = math.sqrt(-2 * math.log(u1)) * math.cos(u2 * 6.283185307179586)
    ms = math.exp(math.log(mean_ms) - sigma * sigma / 2 + sigma * z)
    return max(10, math.floor(ms + 0.5))
