"""The lease protocol: how a warm worker pod on a cluster gets its tasks from the operator.

A warm pod (`spec.worker.mode: Warm` on a cluster) starts its program once and then asks the
operator for work in a loop. Each answer is a **lease**: a small set of task attempts whose
size shrinks as the batch drains (large sets while much remains, single tasks at the tail, like
OpenMP's guided schedule). The pod runs the lease, then asks again, carrying the lease's
results; the operator records them in the batch status, writes the next lease on the pod
(`ANNOTATION_LEASE`) and only then answers. So:

- a result is acknowledged only once it is in the status: a worker keeps a lease's results
  and repeats its request until an answer comes (an operator restart loses nothing; recording
  is idempotent by (index, attempt));
- a lease is durable on its pod before the pod learns of it: a restarted operator rebuilds who
  holds which task from the pods' annotations, so no task runs in two places;
- a request whose `seq` is older than the pod's recorded lease gets that recorded lease again
  (the earlier answer was lost on the way).

Transport: `POST <GPUBATCH_LEASE_URL>` over HTTPS (the operator's certificate authority in
`GPUBATCH_LEASE_CA`, PEM), `Authorization: Bearer <token>` where the token is the pod's
projected service-account token for `LEASE_AUDIENCE` (file `GPUBATCH_LEASE_TOKEN_FILE`); the
operator checks it with a TokenReview, which names the pod. Task pods need no RBAC at all.

While a pod runs a lease it keeps `WarmProgress` in its termination message file, so a pod that
dies mid-lease still tells which tasks finished and which one was running.

This module is pure data, shared by the worker (client) and the operator (server).
"""

from __future__ import annotations

import json
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from gpubatch.api.names import PREFIX
from gpubatch.api.result import TERMINATION_MESSAGE_MAX_BYTES, TaskResult

LEASE_PROTOCOL: Final = 1
LEASE_PATH: Final = "/v1/lease"
#: The audience of the projected token a warm pod presents (the operator's name for itself).
LEASE_AUDIENCE: Final = "gpubatch.io/lease"

#: Environment of a warm pod's worker container.
ENV_LEASE_URL: Final = "GPUBATCH_LEASE_URL"
ENV_LEASE_CA: Final = "GPUBATCH_LEASE_CA"
ENV_LEASE_TOKEN_FILE: Final = "GPUBATCH_LEASE_TOKEN_FILE"  # noqa: S105 (a variable name)
ENV_BATCH_UID: Final = "GPUBATCH_BATCH_UID"

#: Labels and annotation of warm pods (task pods carry task-index/attempt instead).
LABEL_WARM_SLOT: Final = f"{PREFIX}warm-slot"
LABEL_INCARNATION: Final = f"{PREFIX}incarnation"
ANNOTATION_LEASE: Final = f"{PREFIX}lease"

#: A lease never holds more task attempts than this, so its annotation and results stay small.
MAX_LEASE_TASKS: Final = 64
#: How long the operator holds a request open when it has no work yet (long poll); the worker
#: asks again at once after an empty answer.
LONG_POLL_SECONDS: Final = 30.0


class AttemptResult(BaseModel):
    """One task attempt of the lease being reported, and what became of it."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    index: int = Field(ge=0)
    attempt: int = Field(ge=0)
    result: TaskResult


class LeaseRequest(BaseModel):
    """A worker's request: the results of lease `seq` (0 = no lease yet), and more work."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    protocol: int = LEASE_PROTOCOL
    batch_uid: str = Field(alias="batchUid")
    seq: int = Field(default=0, ge=0)
    results: tuple[AttemptResult, ...] = ()
    #: Attempts of lease `seq` that did not run (the program ended before them): re-queued
    #: uncounted, like a disruption.
    unrun: tuple[tuple[int, int], ...] = ()
    load_seconds: float | None = Field(default=None, alias="loadSeconds")


class LeasedTask(BaseModel):
    """One task attempt to run: the task's GPUBATCH_* environment, as the per-task worker
    receives it (`TaskEnvironment.to_environ()`), so both modes share one contract."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    index: int = Field(ge=0)
    attempt: int = Field(ge=0)
    environ: dict[str, str]


class LeaseResponse(BaseModel):
    """The operator's answer. `done`: no more work for this pod, exit 0. Otherwise `tasks` is
    lease `seq` (empty: nothing yet, ask again; the results sent are acknowledged either way)."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    protocol: int = LEASE_PROTOCOL
    seq: int = Field(default=0, ge=0)
    tasks: tuple[LeasedTask, ...] = ()
    done: bool = False


def format_lease(seq: int, attempts: list[tuple[int, int]]) -> str:
    """The pod annotation: `"<seq>;<index>:<attempt>,..."` (e.g. `"7;12:0,13:0,40:2"`)."""
    return f"{seq};" + ",".join(f"{index}:{attempt}" for index, attempt in attempts)


def parse_lease(text: str | None) -> tuple[int, tuple[tuple[int, int], ...]]:
    """(seq, attempts) of a lease annotation; (0, ()) for none. Raises ValueError if garbled."""
    if not text:
        return 0, ()
    seq, _, body = text.partition(";")
    attempts = []
    for item in filter(None, body.split(",")):
        index, _, attempt = item.partition(":")
        attempts.append((int(index), int(attempt)))
    return int(seq), tuple(attempts)


class WarmProgress(BaseModel):
    """A warm pod's termination message: how far its current lease got. `done` holds
    [index, attempt, exit code, seconds] per finished attempt (0 = succeeded; the full results
    travel with the next request, this is the record that survives the pod's death) and
    `running` the attempt in progress, if any."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    warm: int = LEASE_PROTOCOL
    seq: int = 0
    done: tuple[tuple[int, int, int, float], ...] = ()
    running: tuple[int, int] | None = None

    def encode(self) -> str:
        text = json.dumps(self.model_dump(mode="json"), separators=(",", ":"))
        if len(text.encode()) > TERMINATION_MESSAGE_MAX_BYTES:
            raise ValueError("warm progress exceeds the termination message limit")
        return text

    @classmethod
    def try_decode(cls, text: str | None) -> WarmProgress | None:
        if not text or '"warm"' not in text:
            return None
        try:
            return cls.model_validate_json(text.strip())
        except ValueError:
            return None


__all__ = [
    "ANNOTATION_LEASE",
    "ENV_BATCH_UID",
    "ENV_LEASE_CA",
    "ENV_LEASE_TOKEN_FILE",
    "ENV_LEASE_URL",
    "LABEL_INCARNATION",
    "LABEL_WARM_SLOT",
    "LEASE_AUDIENCE",
    "LEASE_PATH",
    "LEASE_PROTOCOL",
    "LONG_POLL_SECONDS",
    "MAX_LEASE_TASKS",
    "AttemptResult",
    "LeaseRequest",
    "LeaseResponse",
    "LeasedTask",
    "WarmProgress",
    "format_lease",
    "parse_lease",
]
