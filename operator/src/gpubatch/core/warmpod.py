"""A warm worker pod, and the task attempts its lease stands for.

A warm pod runs many task attempts, one lease at a time (`gpubatch.api.lease`). The planner
knows only attempts (one `PodView` per (index, attempt)) and its rules - recording, retries,
backoff, non-retriable exit codes, maxFailedTasks, "no task in two places" - are written for
them. So instead of teaching the planner about leases, each leased attempt is shown to it as
the attempt view it would have if it had run in a pod of its own (`lease_attempts`):

- reported by the worker (a result in its pending request): terminal, with that result as its
  termination message, exactly what a task pod's worker writes;
- reported as not run (the program ended before it): a disruption, retried uncounted;
- still in the lease of a live pod: Running (the worker enforces its deadline);
- in the lease of a pod that ended: what the pod's termination record (`WarmProgress`) says;
  the attempt that was running when the pod died fails (counted) unless the pod was taken away
  (a disruption), and the ones it never reached are re-queued uncounted.

Each view is tracked until recorded; the reconcile maps "released" back to "acknowledge the
request" and releases the warm pod's own finalizer only once every attempt of its lease is in
the status.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gpubatch.api.lease import (
    ANNOTATION_LEASE,
    LABEL_WARM_SLOT,
    AttemptResult,
    WarmProgress,
    parse_lease,
)
from gpubatch.api.names import LABEL_BATCH_UID
from gpubatch.api.result import Outcome
from gpubatch.core.podview import PodView, pod_state

#: Disruption reason of a leased attempt that never ran (its program or pod ended first).
NOT_RUN = "WarmLeaseNotRun"


@dataclass(frozen=True, slots=True)
class WarmPodView:
    """One warm pod: the pod itself (`pod.index` is the pod's number) and its lease."""

    pod: PodView
    number: int
    lease_seq: int
    lease: tuple[tuple[int, int], ...]
    progress: WarmProgress | None  # its termination record, once it ended

    @property
    def name(self) -> str:
        return self.pod.name

    @property
    def live(self) -> bool:
        return not self.pod.terminal and not self.pod.deleting


def warm_pod_view(pod: dict[str, Any]) -> WarmPodView | None:
    """The WarmPodView of a warm pod; None for any other pod."""
    metadata = pod.get("metadata") or {}
    labels = metadata.get("labels") or {}
    try:
        number = int(labels[LABEL_WARM_SLOT])
        batch_uid = str(labels[LABEL_BATCH_UID])
    except (KeyError, ValueError):
        return None
    view = pod_state(pod, batch_uid, number, 0)
    try:
        seq, lease = parse_lease((metadata.get("annotations") or {}).get(ANNOTATION_LEASE))
    except ValueError:  # only the operator writes it; a garbled one holds nothing
        seq, lease = 0, ()
    return WarmPodView(view, number, seq, lease, WarmProgress.try_decode(view.message))


@dataclass(frozen=True)
class Reported:
    """What a waiting request of this pod reports about lease `seq`."""

    seq: int
    results: Mapping[tuple[int, int], AttemptResult]
    unrun: frozenset[tuple[int, int]]


def lease_attempts(warm: WarmPodView, reported: Reported | None) -> list[PodView]:
    """The attempt views of a warm pod's lease (see the module docstring)."""
    if reported is not None and reported.seq != warm.lease_seq:
        reported = None  # a repeated request about an older lease: recorded long ago
    views = []
    for key in warm.lease:
        if reported is not None and key in reported.results:
            views.append(_reported(warm, reported.results[key]))
        elif reported is not None:  # unrun, or left out of the report: it did not run
            views.append(_not_run(warm, key))
        elif warm.pod.terminal:
            views.append(_after_the_pod(warm, key))
        else:
            views.append(_attempt(warm, key, phase="Running"))
    return views


def _attempt(
    warm: WarmPodView,
    key: tuple[int, int],
    phase: str,
    *,
    exit_code: int | None = None,
    message: str = "",
    reason: str = "",
    disruption: str | None = None,
    stop_reason: str | None = None,
    started_at: float | None = None,
    finished_at: float | None = None,
) -> PodView:
    """One leased attempt as the planner sees an attempt (built field by field: a pass makes
    one per leased attempt of every warm pod, and `dataclasses.replace` was the operator's
    largest cost in a profile of a warm batch)."""
    pod = warm.pod
    return PodView(
        name=pod.name,
        namespace=pod.namespace,
        batch_uid=pod.batch_uid,
        index=key[0],
        attempt=key[1],
        phase=phase,
        node=pod.node,
        deleting=False,
        tracked=True,
        exit_code=exit_code,
        message=message,
        reason=reason,
        disruption=disruption,
        stop_reason=stop_reason,
        created_at=pod.created_at,
        started_at=started_at,
        finished_at=finished_at,
    )


def _reported(warm: WarmPodView, reported: AttemptResult) -> PodView:
    result = reported.result
    good = result.outcome in (Outcome.SUCCEEDED, Outcome.SKIPPED)
    return _attempt(
        warm,
        (reported.index, reported.attempt),
        phase="Succeeded" if good else "Failed",
        exit_code=result.exit_code,
        message=result.encode(),
        reason=str(result.reason),
    )


def _not_run(warm: WarmPodView, key: tuple[int, int]) -> PodView:
    return _attempt(warm, key, phase="Failed", disruption=NOT_RUN)


def _after_the_pod(warm: WarmPodView, key: tuple[int, int]) -> PodView:
    """A leased attempt of a pod that ended, judged by its termination record."""
    pod, progress = warm.pod, warm.progress
    if progress is not None and progress.seq != warm.lease_seq:
        progress = None  # the record of an earlier lease says nothing about this one
    done = {(d[0], d[1]): d for d in progress.done} if progress is not None else {}
    if key in done:
        _, _, exit_code, seconds = done[key]
        return _attempt(
            warm,
            key,
            phase="Succeeded" if exit_code == 0 else "Failed",
            exit_code=exit_code,
            reason="Completed" if exit_code == 0 else "Error",
            started_at=0.0,
            finished_at=float(seconds),
        )
    if pod.stop_reason is not None:  # the operator stopped the pod (the batch ended)
        return _attempt(warm, key, phase="Failed", stop_reason=pod.stop_reason)
    taken_away = pod.disruption is not None or (pod.deleting and pod.stop_reason is None)
    running = progress.running if progress is not None else None
    # The pod died during this attempt, by its own failure (OOM, a worker crash): counted,
    # like a task pod that fails. A pod that ended without any record (it never got to write
    # one) is blamed on its first unfinished attempt, so a worker that cannot even start
    # costs attempts (bounded by spec.retry) instead of re-queueing for ever.
    first_open = next((k for k in warm.lease if k not in done), None)
    blamed = running if running is not None else (first_open if progress is None else None)
    if key == blamed and pod.phase == "Failed" and not taken_away:
        return _attempt(
            warm, key, phase="Failed", exit_code=pod.exit_code, reason=pod.reason or "Error"
        )
    return _attempt(warm, key, phase="Failed", disruption=pod.disruption or NOT_RUN)


__all__ = ["NOT_RUN", "Reported", "WarmPodView", "lease_attempts", "warm_pod_view"]
