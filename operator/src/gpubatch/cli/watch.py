"""`gpubatch watch`: follow a batch on the cluster until it is Complete or Failed.

It polls the object (one GET a second by default) rather than opening a watch stream: a poll
survives API server restarts and dropped connections without reconnect logic, one request a
second costs the API server nothing, and the bar needs redrawing between events anyway for the
rate and ETA.

A status only counts once `observedGeneration` has caught up with the object's generation:
right after `gpubatch submit` changes a finished batch, the old `Complete` is still there until
the operator has looked at the new spec, and stopping on it would end the watch too early.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gpubatch.api.status import GPUBatchStatus
from gpubatch.cli.errors import CliError, Exit
from gpubatch.cli.progress import ProgressDisplay, RateTracker, progress_line
from gpubatch.cli.statusview import batch_state, finished, stuck_note

Fetch = Callable[[], dict[str, Any] | None]
ParseStatus = Callable[[dict[str, Any]], GPUBatchStatus | None]


def follow(
    name: str,
    fetch: Fetch,
    parse: ParseStatus,
    display: ProgressDisplay,
    *,
    interval: float = 1.0,
    timeout: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> GPUBatchStatus:
    """Poll until the batch ends; its final status. CliError if it vanishes or time runs out."""
    began = clock()
    rate = RateTracker()
    baseline: int | None = None
    last_state = ""
    last_note: str | None = None
    while True:
        obj = fetch()
        if obj is None:
            raise CliError(f"{name} no longer exists (deleted while watching)", Exit.ENVIRONMENT)
        status = parse(obj)
        generation = (obj.get("metadata") or {}).get("generation")
        current = status is not None and (
            generation is None or status.observed_generation == generation
        )
        if status is not None and current and finished(status):
            display.update(progress_line(name, status.counts, None, 0.0), force=True)
            return status
        if status is not None:
            done = status.counts.finished()
            baseline = done if baseline is None else baseline
            now = clock()
            rate.observe(now, done - baseline)
            remaining = status.counts.total - done
            state = batch_state(status)
            if state != last_state and state == "Suspended":
                display.message(f"{name} is suspended (spec.suspend): no new tasks start")
            last_state = state
            note = stuck_note(status)
            if note is not None and note != last_note:
                display.message(f"{name}: {note}")
            last_note = note
            display.update(progress_line(name, status.counts, rate.rate(), rate.eta(remaining)))
        if timeout is not None and clock() - began >= timeout:
            raise CliError(
                f"{name} did not finish within {timeout:g}s (it goes on; watch again to follow)",
                Exit.TIMEOUT,
            )
        sleep(interval)
