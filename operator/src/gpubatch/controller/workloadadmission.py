"""A worker cluster's side of MultiKueue: a batch admitted whole by a Kueue Workload.

MultiKueue creates the batch here, labelled with the Workload it was admitted by
(core/kueueworkload.py has the contract). The loop asks two things of that Workload, through
the functions here: how many pods it may run (read until the Workload is admitted, then kept:
an admission does not shrink; an eviction makes MultiKueue delete the batch here), and, once
the batch has ended, to mark the Workload Finished, or the quota stays reserved on both
clusters and the manager's batch never gets its final status.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from gpubatch.api.spec import GPUBatchSpec
from gpubatch.api.status import GPUBatchStatus
from gpubatch.core.kueueworkload import admitted_pods, finished_condition, workload_finish
from gpubatch.core.planner import Event
from gpubatch.core.podspec import BatchRef
from gpubatch.edges.kube import JSON, ApiError

log = logging.getLogger("gpubatch.workload")

#: How often a batch whose Workload is not admitted yet looks again.
RECHECK_SECONDS: Final = 2.0


class WorkloadApi(Protocol):
    async def get_workload(self, namespace: str, name: str) -> JSON | None: ...

    async def apply_workload_condition(
        self, namespace: str, name: str, condition: JSON
    ) -> bool: ...


@dataclass
class WholeBatchAdmission:
    """What the loop knows of the batch's Workload (rebuilt from the API after a restart)."""

    workload: str
    #: Pods the Workload is admitted for; None until it is admitted.
    pods: int | None = None
    finished: bool = False
    #: A Warning Event was posted about a Finished condition the API refused (posted once).
    warned: bool = False


async def admitted_spec(
    client: WorkloadApi, ref: BatchRef, admission: WholeBatchAdmission, spec: GPUBatchSpec
) -> GPUBatchSpec:
    """The spec with `parallelism` capped at the Workload's admitted pods (0 until it is
    admitted: the loop looks again every RECHECK_SECONDS)."""
    if admission.pods is None:
        workload = await client.get_workload(ref.namespace, admission.workload)
        admission.pods = admitted_pods(workload) if workload is not None else None
    cap = admission.pods if admission.pods is not None else 0
    # model_copy does not validate: parallelism 0 (nothing may start) is only ever set here.
    return spec.model_copy(update={"parallelism": min(spec.parallelism or cap, cap)})


async def finish_workload(
    client: WorkloadApi,
    ref: BatchRef,
    admission: WholeBatchAdmission,
    status: GPUBatchStatus,
    post: Callable[[Event], Any],
) -> None:
    """Once the batch has ended (and that is written in its status), end its Workload."""
    if admission.finished:
        return
    finish = workload_finish(status)
    if finish is None:
        return
    condition = finished_condition(finish, datetime.now(UTC))
    try:
        found = await client.apply_workload_condition(ref.namespace, admission.workload, condition)
    except ApiError as error:
        if not admission.warned:
            admission.warned = True
            post(
                Event(
                    "Warning",
                    "WorkloadNotFinished",
                    f"could not mark Kueue Workload {admission.workload} Finished "
                    f"({error.message}): its quota stays reserved until it is; the operator "
                    "needs get on workloads and patch on workloads/status "
                    "(chart: kueue.multiKueueWorker=true)",
                )
            )
        raise
    if not found:
        log.info("batch %s/%s: Workload %s is gone", ref.namespace, ref.name, admission.workload)
    admission.finished = True
