"""Annotations that tell kwok's Stages (kwok-config.yaml) how a simulated task pod behaves, and
the simulated warm worker (warmsim.py) how a warm pod's program behaves."""

from __future__ import annotations

import json
import math
import re
from typing import Any

DURATION = "sim.gpubatch.io/duration"
SLOW_DURATION = "sim.gpubatch.io/slow-duration"
EXIT_CODE = "sim.gpubatch.io/exit-code"
TERMINATION_MESSAGE = "sim.gpubatch.io/termination-message"
#: A container waiting reason: the bound pod never starts (kwok Stage gpubatch-pod-stuck).
WAITING_REASON = "sim.gpubatch.io/waiting-reason"
#: The program's start-up cost (a model load), a Go duration paid once per process: kwok adds it
#: to a task pod's duration; the simulated warm worker sleeps it once before its first request.
LOAD = "sim.gpubatch.io/load"
#: Set by the simulated warm worker to end its warm pod with this exit code (Stage
#: gpubatch-warm-exit); the message is TERMINATION_MESSAGE.
WARM_EXIT = "sim.gpubatch.io/warm-exit"
#: Task indexes (comma-separated) that always fail with FAIL_CODE (default 1), and attempts
#: below FAIL_ATTEMPTS that fail: task pods (kwok) and warm workers' tasks (warmsim) alike.
FAIL_INDEXES = "sim.gpubatch.io/fail-indexes"
FAIL_ATTEMPTS = "sim.gpubatch.io/fail-attempts"
FAIL_CODE = "sim.gpubatch.io/fail-code"

_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def go_duration(seconds: float) -> str:
    """kwok reads Go duration strings; a bare number would silently fall back to the default."""
    return f"{round(seconds * 1000)}ms"


def parse_go_duration(text: str) -> float:
    """Seconds of a Go duration ("1.5s", "10s500ms"), as kwok reads annotations; raises
    ValueError on anything else (a bare number would be read as nothing by kwok)."""
    text = text.strip()
    parts = _GO_PART.findall(text)
    if not text or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"not a Go duration (e.g. 1500ms, 10s): {text!r}")
    return sum(float(number) * _GO_UNITS[unit] for number, unit in parts)


def annotations(
    seconds: float = 0.2,
    *,
    exit_code: int = 0,
    slow_seconds: float | None = None,
    termination_message: str | dict[str, Any] | None = None,
    load_seconds: float | None = None,
) -> dict[str, str]:
    out = {DURATION: go_duration(seconds)}
    if load_seconds is not None:
        out[LOAD] = go_duration(load_seconds)
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
