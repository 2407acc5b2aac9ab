"""Simulated warm workers: what runs inside warm pods on the test bed's kwok nodes.

kwok plays the kubelet but runs no container, so a warm pod (label gpubatch.io/warm-slot) would
never ask for work. `WarmFleet` plays its program: for every warm pod that is Running on a node
it gets the pod's bound token (TokenRequest: the pod's service account, bound to the pod,
audience LEASE_AUDIENCE) and runs the lease loop of `gpubatch.api.lease` against the REAL
operator, over HTTPS verified with the CA from the pod's env, as the worker in the image does
(gpubatch.worker.lease_loop), with sleeps for the program:

1. ask for a lease (POST LeaseRequest, seq 0 first); on any transport error, 5xx, 408 or 429
   repeat the SAME request after a short backoff: an operator SIGKILLed mid-request loses
   nothing; an empty answer (the end of a long poll) is asked again at once, a lease already
   run is never run twice;
2. with the first lease the program starts: sleep the load once (`sim.gpubatch.io/load`, a Go
   duration like kwok's; default none), reported as `loadSeconds` with that lease's results;
3. run each leased task by sleeping its duration: the per-index log-normal of
   `sim.gpubatch.io/lognormal` (`sim.lognormal_ms`, as kwok gives task pods), else the fixed
   `sim.gpubatch.io/duration`, default 1 s; it fails (exit `sim.gpubatch.io/fail-code`, default
   1) when its index is in `sim.gpubatch.io/fail-indexes` or its attempt is below
   `sim.gpubatch.io/fail-attempts`, like a task pod; then ask again, carrying the results;
4. on `done`, end the pod: `sim.gpubatch.io/warm-exit: "0"` (kwok Stage gpubatch-warm-exit).

The worker keeps its `WarmProgress` in memory and writes it to the pod (annotation
`sim.gpubatch.io/termination-message`) only when the pod ends, as a kubelet reads the
termination message file only then: a patch per task would be an API write and an operator
watch event per task that no real cluster has. A pod being deleted is its worker's SIGTERM (as
in gpubatch.worker.lease_loop): the running task fails Interrupted (143), the rest of the lease
is unrun, the report is posted once (2 s), and the pod ends with 143 and its progress (kwok
kills it after a 3 s grace otherwise). A pod on a deleted node, or one that ends otherwise,
stops its worker with no word. An error no retry can fix (a 4xx such as 401/403, a certificate
the pod's CA does not vouch for, a bad sim annotation) ends the pod with exit 83 and the error
as message, so a benchmark fails visibly instead of hanging. Tokens are bound to the pod
(TokenRequest), asked for 1 h and renewed at 80%, as the kubelet renews a projected token.

It models pods, not the operator: everything it knows comes from pod objects and lease answers.
One asyncio loop in a background thread serves all pods (sleeps are timers, not threads), and
`FleetLog` records, per task attempt, when it ran and whether its result was acknowledged, for
the chaos checks (nothing run twice at once, nothing acknowledged twice).

Use: `with WarmFleet(testbed) as fleet: ...; fleet.log`; or `python -m testbed.warmsim
<test bed folder>` (PYTHONPATH=tests) next to a bed started by `python -m testbed up`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import ssl
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

from gpubatch.api.lease import (
    ENV_BATCH_UID,
    ENV_LEASE_CA,
    ENV_LEASE_URL,
    LABEL_WARM_SLOT,
    LEASE_AUDIENCE,
    LONG_POLL_SECONDS,
    AttemptResult,
    LeasedTask,
    LeaseRequest,
    LeaseResponse,
    WarmProgress,
)
from gpubatch.api.names import DEFAULT_GPU_MODEL_LABEL
from gpubatch.api.result import ExitCode, GpuIdentity, Outcome, Reason, TaskResult
from testbed import sim
from testbed.controlplane import Testbed

#: Exit code a warm pod's worker reports when told to stop (SIGTERM, as the real worker does).
SIGTERM_EXIT = 143
#: Lifetime asked for the pods' bound tokens (renewed at 80%, as the kubelet does).
TOKEN_SECONDS = 3600
#: Backoff between repeats of an unanswered request (doubling from the first to the last).
RETRY_SECONDS = (0.1, 2.0)


# ------------------------------------------------------------------------------- the record
@dataclass(frozen=True)
class TaskRun:
    """One task attempt a simulated worker ran: when (time.monotonic) and how it ended
    (`exit_code` None: the worker was stopped mid-task)."""

    namespace: str
    pod: str
    batch_uid: str
    index: int
    attempt: int
    started: float
    ended: float
    exit_code: int | None


@dataclass
class FleetLog:
    """What the fleet did, for benchmarks and chaos checks (thread-safe appends)."""

    runs: list[TaskRun] = field(default_factory=list)
    #: (batch uid, index, attempt, exit code) of every result whose request the operator answered.
    acknowledged: list[tuple[str, int, int, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: int = 0
    retries: int = 0
    workers_started: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_run(self, run: TaskRun) -> None:
        with self._lock:
            self.runs.append(run)

    def add_acknowledged(self, batch_uid: str, results: tuple[AttemptResult, ...]) -> None:
        with self._lock:
            self.acknowledged.extend(
                (batch_uid, r.index, r.attempt, r.result.exit_code) for r in results
            )

    def acknowledged_successes(self, batch_uid: str) -> Counter[int]:
        """How often each task index of the batch had a success acknowledged (exactly once
        each is the promise)."""
        with self._lock:
            return Counter(
                i for uid, i, _, code in self.acknowledged if uid == batch_uid and not code
            )

    def concurrent_runs(self, batch_uid: str) -> list[str]:
        """Task indexes of the batch that ran in two places at once (intervals that overlap)."""
        by_index: dict[int, list[TaskRun]] = defaultdict(list)
        with self._lock:
            for run in self.runs:
                if run.batch_uid == batch_uid:
                    by_index[run.index].append(run)
        found = []
        for index, runs in sorted(by_index.items()):
            runs.sort(key=lambda r: r.started)
            for before, after in itertools.pairwise(runs):
                if after.started < before.ended:
                    found.append(
                        f"task {index}: {before.pod} attempt {before.attempt} until "
                        f"{before.ended:.3f}, {after.pod} attempt {after.attempt} from "
                        f"{after.started:.3f}"
                    )
        return found


# -------------------------------------------------------------------------- one warm pod
class WorkerError(Exception):
    """Something the worker cannot retry its way out of: it ends its pod with exit 83."""


@dataclass(frozen=True)
class WarmPod:
    """What a warm pod's program reads from its pod: its env and the sim annotations."""

    namespace: str
    name: str
    uid: str
    node: str
    service_account: str
    url: str
    ca_pem: str
    batch_uid: str
    annotations: dict[str, str]

    @classmethod
    def from_pod(cls, pod: dict[str, Any]) -> WarmPod:
        metadata, spec = pod["metadata"], pod["spec"]
        env: dict[str, str] = {}
        for container in spec.get("containers") or []:
            values = {e["name"]: e.get("value") for e in container.get("env") or []}
            if ENV_LEASE_URL in values:
                env = {k: v for k, v in values.items() if v is not None}
                break
        missing = [k for k in (ENV_LEASE_URL, ENV_LEASE_CA, ENV_BATCH_UID) if not env.get(k)]
        if missing:
            raise WorkerError(
                f"warm pod {metadata['name']}: no container has a literal value for {missing}; "
                "the simulated worker reads the lease endpoint from the worker container's env"
            )
        pod = cls(
            namespace=metadata["namespace"],
            name=metadata["name"],
            uid=metadata["uid"],
            node=spec["nodeName"],
            service_account=spec.get("serviceAccountName") or "default",
            url=env[ENV_LEASE_URL],
            ca_pem=env[ENV_LEASE_CA],
            batch_uid=env[ENV_BATCH_UID],
            annotations=dict(metadata.get("annotations") or {}),
        )
        try:  # read every sim annotation now, so a bad one ends the pod with a clear message
            pod.load_seconds(), pod.task_seconds(0), pod.task_exit_code(0, 0)
        except ValueError as error:
            raise WorkerError(
                f"warm pod {pod.name}: a sim.gpubatch.io/ annotation is unreadable ({error}); "
                "durations are Go durations (1500ms, 10s), lognormal is '<mean ms>,<sigma>,<seed>'"
            ) from error
        return pod

    def load_seconds(self) -> float:
        text = self.annotations.get(sim.LOAD)
        return sim.parse_go_duration(text) if text else 0.0

    def task_seconds(self, index: int) -> float:
        spec = self.annotations.get(sim.LOGNORMAL)
        if spec:
            mean_ms, sigma, seed = spec.split(",")
            return sim.lognormal_ms(index, float(mean_ms), float(sigma), int(seed)) / 1000
        return sim.parse_go_duration(self.annotations.get(sim.DURATION) or "1s")

    def task_exit_code(self, index: int, attempt: int) -> int:
        failing = set(filter(None, self.annotations.get(sim.FAIL_INDEXES, "").split(",")))
        below = int(self.annotations.get(sim.FAIL_ATTEMPTS) or 0)
        if str(index) in failing or attempt < below:
            return int(self.annotations.get(sim.FAIL_CODE) or 1)
        return 0


async def post_json(
    url: str, body: bytes, token: str, context: ssl.SSLContext, timeout: float
) -> tuple[int, bytes]:
    """One HTTPS POST (HTTP/1.1, connection closed after): (status, body). Plain asyncio
    streams, so a thousand waiting requests are sockets, not threads."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    async def exchange() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(host, port, ssl=context)
        try:
            head = (
                f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
            lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {
                k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])
            }
            if headers.get("transfer-encoding", "").lower() == "chunked":
                data = b""
                while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                    data += (await reader.readexactly(size + 2))[:-2]
                return status, data
            if "content-length" in headers:
                return status, await reader.readexactly(int(headers["content-length"]))
            return status, await reader.read()
        finally:
            writer.close()

    return await asyncio.wait_for(exchange(), timeout)


class PodSide(Protocol):
    """What a worker needs from outside its program: its pod's token, its pod ended, the GPU
    it runs on, the shared log (the fleet; a stand-in in the simulator's own unit tests)."""

    log: FleetLog

    def gpu_model(self, node: str) -> str: ...

    async def token(self, pod: WarmPod) -> str: ...

    async def end_pod(self, pod: WarmPod, code: int, message: str) -> None: ...


@dataclass
class Worker:
    """The simulated program of one warm pod, and how far its current lease got."""

    pod: WarmPod
    fleet: PodSide
    progress: WarmProgress = field(default_factory=WarmProgress)
    task: asyncio.Task[None] | None = None
    #: Set before the task is cancelled when the pod is being deleted (its SIGTERM): the worker
    #: then reports once and ends its pod with 143; without it a cancel is a silent death.
    sigterm: bool = False
    running: tuple[LeasedTask, float] | None = None  # the task in progress, since when
    _request: LeaseRequest | None = None  # the report being asked with, or being built
    _left: list[LeasedTask] = field(default_factory=list)  # leased tasks not started yet
    _last_run_seq: int = 0
    _token: tuple[str, float] = ("", 0.0)  # and when it was issued

    async def run(self) -> None:
        try:
            code, message = await self._run()
        except asyncio.CancelledError:
            if not self.sigterm:
                raise  # the pod's node is gone or the pod ended: no word from its program
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()  # the SIGTERM is handled: later awaits run normally
            code, message = await self._report_and_stop()
        except Exception as error:  # a bug or an error it cannot retry: end the pod, visibly
            text = str(error) if isinstance(error, WorkerError) else f"warmsim bug: {error!r}"
            self.fleet.log.errors.append(f"pod {self.pod.name}: {text}")
            code, message = int(ExitCode.WORKER_ERROR), text
        await self.fleet.end_pod(self.pod, code, message)

    def stopped(self) -> None:
        """The pod's program died (cancelled): record the task it was running, if any."""
        if self.running is not None:
            task, began = self.running
            self._record(task, began, None)
            self.running = None

    async def _run(self) -> tuple[int, str]:
        """The lease loop of gpubatch.worker.lease_loop: ask, run the lease, report, ask."""
        context = ssl.create_default_context(cadata=self.pod.ca_pem)
        uid, loaded = self.pod.batch_uid, False
        self._request = LeaseRequest(batch_uid=uid)
        while True:
            answer = await self._ask(self._request, context)
            self.fleet.log.add_acknowledged(uid, self._request.results)
            self.progress = WarmProgress(seq=answer.seq)
            if answer.done:
                return 0, self.progress.encode()
            if not answer.tasks:  # the end of a long poll: ask again at once
                self._request = LeaseRequest(batch_uid=uid, seq=answer.seq)
                continue
            if answer.seq <= self._last_run_seq:  # a lease already run is never run twice
                self.fleet.log.retries += 1
                await asyncio.sleep(RETRY_SECONDS[1])
                continue
            self._last_run_seq = answer.seq
            self._request = LeaseRequest(batch_uid=uid, seq=answer.seq)
            self._left = list(answer.tasks)
            load = None
            if not loaded:  # the program starts with the first lease, as the real worker's
                load, loaded = self.pod.load_seconds(), True
                await asyncio.sleep(load)
            while self._left:
                result = await self._run_task(self._left[0])
                self._left.pop(0)
                self._report(result)
            self._request = self._request.model_copy(update={"load_seconds": load})

    async def _report_and_stop(self) -> tuple[int, str]:
        """SIGTERM: the running task fails Interrupted, the rest are unrun; one short try to
        hand the report over (as the real worker), then exit 143 with the progress."""
        if self.running is not None:
            task, began = self.running
            self.running = None
            self._record(task, began, SIGTERM_EXIT)
            self._left = self._left[1:]
            self._report(self._result(task, SIGTERM_EXIT, time.monotonic() - began))
        assert self._request is not None
        request = self._request.model_copy(
            update={"unrun": tuple((t.index, t.attempt) for t in self._left)}
        )
        if request.results or request.unrun:
            context = ssl.create_default_context(cadata=self.pod.ca_pem)
            body = request.model_dump_json(by_alias=True).encode()
            self.fleet.log.requests += 1
            try:
                status, _ = await post_json(self.pod.url, body, self._token[0], context, 2.0)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
                status = 0
            if status == 200:
                self.fleet.log.add_acknowledged(self.pod.batch_uid, request.results)
        return SIGTERM_EXIT, self.progress.encode()

    async def _ask(self, request: LeaseRequest, context: ssl.SSLContext) -> LeaseResponse:
        """The answer to `request`, repeating it unchanged until one comes (see the module
        doc); a 4xx other than 408/429, or a certificate the pod's CA does not vouch for, ends
        the pod (exit 83), as for the real worker."""
        body = request.model_dump_json(by_alias=True).encode()
        delay = RETRY_SECONDS[0]
        while True:
            token = await self._fresh_token()
            self.fleet.log.requests += 1
            try:
                status, data = await post_json(
                    self.pod.url, body, token, context, LONG_POLL_SECONDS + 15
                )
            except ssl.SSLCertVerificationError as error:  # no retry can fix the CA or URL
                raise WorkerError(f"lease endpoint {self.pod.url} not trusted: {error}") from error
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
                status, data = 0, b""
            if status == 200:
                try:
                    return LeaseResponse.model_validate_json(data)
                except ValueError as error:
                    raise WorkerError(f"lease answer is not a LeaseResponse: {error}") from error
            if 400 <= status < 500 and status not in (408, 429):
                raise WorkerError(f"lease request refused: HTTP {status}: {data[:300]!r}")
            self.fleet.log.retries += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_SECONDS[1])

    async def _fresh_token(self) -> str:
        """The pod's token, renewed at 80% of its life as the kubelet renews a projected one."""
        token, issued = self._token
        if not token or time.monotonic() - issued > 0.8 * TOKEN_SECONDS:
            self._token = (await self.fleet.token(self.pod), time.monotonic())
        return self._token[0]

    async def _run_task(self, task: LeasedTask) -> AttemptResult:
        began = time.monotonic()
        self.running = (task, began)
        self.progress = self.progress.model_copy(update={"running": (task.index, task.attempt)})
        seconds = self.pod.task_seconds(task.index)
        await asyncio.sleep(seconds)
        code = self.pod.task_exit_code(task.index, task.attempt)
        self.running = None
        self._record(task, began, code)
        return self._result(task, code, seconds)

    def _report(self, result: AttemptResult) -> None:
        """A finished attempt: into the progress record and the next request."""
        assert self._request is not None
        entry = (
            result.index,
            result.attempt,
            result.result.exit_code,
            result.result.duration_seconds,
        )
        self.progress = self.progress.model_copy(
            update={"running": None, "done": (*self.progress.done, entry)}
        )
        self._request = self._request.model_copy(
            update={"results": (*self._request.results, result)}
        )

    def _result(self, task: LeasedTask, code: int, seconds: float) -> AttemptResult:
        interrupted = code == SIGTERM_EXIT
        result = TaskResult(
            outcome=Outcome.FAILED if code else Outcome.SUCCEEDED,
            exit_code=code,
            reason=Reason.INTERRUPTED
            if interrupted
            else (Reason.NON_ZERO_EXIT if code else Reason.COMPLETED),
            duration_seconds=seconds,
            gpus=(
                GpuIdentity(model=self.fleet.gpu_model(self.pod.node), uuid=f"GPU-{self.pod.uid}"),
            ),
            node=self.pod.node,
            message="interrupted: the pod is being deleted"
            if interrupted
            else (f"simulated failure (exit {code})" if code else ""),
        )
        return AttemptResult(index=task.index, attempt=task.attempt, result=result)

    def _record(self, task: LeasedTask, began: float, code: int | None) -> None:
        self.fleet.log.add_run(
            TaskRun(
                namespace=self.pod.namespace,
                pod=self.pod.name,
                batch_uid=self.pod.batch_uid,
                index=task.index,
                attempt=task.attempt,
                started=began,
                ended=time.monotonic(),
                exit_code=code,
            )
        )


# ------------------------------------------------------------------------------ the fleet
class WarmFleet:
    """Plays the program of every warm pod on the test bed (see the module doc)."""

    def __init__(self, testbed: Testbed) -> None:
        self.log = FleetLog()
        self._core = client.CoreV1Api(testbed.api_client())
        self._workers: dict[str, Worker] = {}  # by pod uid, while its program runs
        self._seen: set[str] = set()  # pod uids whose program has started (it starts once)
        self._nodes: dict[str, str] = {}  # node -> GPU model
        self._dead_nodes: set[str] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._watches = [
            _Watch(self._core.list_node, {}, self._on_node),
            _Watch(
                self._core.list_pod_for_all_namespaces,
                {"label_selector": LABEL_WARM_SLOT},
                self._on_pod,
            ),
        ]

    def __enter__(self) -> WarmFleet:
        self._thread.start()
        for watch in self._watches:
            watch.start(self._loop)
        return self

    def __exit__(self, *_: object) -> None:
        for watch in self._watches:
            watch.stop()

        async def cancel_all() -> None:
            for worker in list(self._workers.values()):
                self._stop(worker)

        asyncio.run_coroutine_threadsafe(cancel_all(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def running_workers(self) -> int:
        return len(self._workers)

    # -- called by workers (in the loop)
    def gpu_model(self, node: str) -> str:
        return self._nodes.get(node) or "unknown"

    async def token(self, pod: WarmPod) -> str:
        """A token bound to the pod, for the lease audience (what the kubelet projects into a
        real warm pod)."""
        body = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[LEASE_AUDIENCE],
                expiration_seconds=TOKEN_SECONDS,
                bound_object_ref=client.V1BoundObjectReference(
                    api_version="v1", kind="Pod", name=pod.name, uid=pod.uid
                ),
            )
        )
        try:
            answer = await asyncio.to_thread(
                self._core.create_namespaced_service_account_token,
                pod.service_account,
                pod.namespace,
                body,
            )
        except ApiException as error:
            raise WorkerError(f"TokenRequest for pod {pod.name} failed: {error.reason}") from error
        return str(answer.status.token)

    async def end_pod(self, pod: WarmPod, code: int, message: str) -> None:
        """The program exits: its pod ends with `code` and `message` (kwok reads both)."""
        self._workers.pop(pod.uid, None)
        patch = {
            "metadata": {
                "annotations": {sim.WARM_EXIT: str(code), sim.TERMINATION_MESSAGE: message}
            }
        }
        try:
            await asyncio.to_thread(self._core.patch_namespaced_pod, pod.name, pod.namespace, patch)
        except ApiException as error:
            if error.status != 404:
                self.log.errors.append(f"ending pod {pod.name}: {error.reason}")

    # -- events (in the loop)
    def _on_node(self, kind: str, node: dict[str, Any]) -> None:
        name = node["metadata"]["name"]
        if kind == "DELETED":
            self._dead_nodes.add(name)
            for worker in [w for w in self._workers.values() if w.pod.node == name]:
                self._stop(worker)  # the node is gone: its programs die without a word
        else:
            labels = node["metadata"].get("labels") or {}
            self._nodes[name] = labels.get(DEFAULT_GPU_MODEL_LABEL, "unknown")

    def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        metadata, status = pod["metadata"], pod.get("status") or {}
        uid = metadata["uid"]
        worker = self._workers.get(uid)
        if kind == "DELETED" or status.get("phase") in ("Succeeded", "Failed"):
            if worker is not None:
                self._stop(worker)
        elif metadata.get("deletionTimestamp"):
            if worker is not None and not worker.sigterm and worker.task is not None:
                worker.sigterm = True  # the kubelet's SIGTERM: the worker reports and ends
                worker.task.cancel()
        elif (
            status.get("phase") == "Running"
            and pod["spec"].get("nodeName")
            and uid not in self._seen
        ):
            self._seen.add(uid)
            self._start(pod)

    def _start(self, pod: dict[str, Any]) -> None:
        try:
            warm = WarmPod.from_pod(pod)
        except WorkerError as error:
            self.log.errors.append(str(error))
            meta = pod["metadata"]
            stub = WarmPod(meta["namespace"], meta["name"], meta["uid"], "", "", "", "", "", {})
            self._loop.create_task(self.end_pod(stub, int(ExitCode.WORKER_ERROR), str(error)))
            return
        if warm.node in self._dead_nodes:
            return
        worker = Worker(pod=warm, fleet=self)
        self._workers[warm.uid] = worker
        self.log.workers_started += 1
        worker.task = self._loop.create_task(worker.run())

    def _stop(self, worker: Worker) -> None:
        self._workers.pop(worker.pod.uid, None)
        if worker.task is not None:
            worker.task.cancel()
        worker.stopped()


class _Watch:
    """List, then watch from the list's resourceVersion, in a thread; events go to the loop.
    Reconnects resume from the last version; a 410 re-lists (reporting all as MODIFIED)."""

    def __init__(
        self,
        list_fn: Callable[..., Any],
        params: dict[str, Any],
        on_event: Callable[[str, dict[str, Any]], None],
    ) -> None:
        self._list, self._params, self._on_event = list_fn, params, on_event
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread.start()
        self._ready.wait(timeout=30)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _emit(self, kind: str, obj: dict[str, Any]) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._on_event, kind, obj)

    def _run(self) -> None:
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    listing = json.loads(self._list(**self._params, _preload_content=False).data)
                    for obj in listing.get("items") or []:
                        self._emit("MODIFIED", obj)
                    version = str(listing["metadata"]["resourceVersion"])
                    self._ready.set()
                response = self._list(
                    **self._params,
                    watch=True,
                    resource_version=version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=5,
                    _preload_content=False,
                )
                try:
                    for line in iter_resp_lines(response):
                        event = json.loads(line)
                        if event["type"] == "ERROR":
                            if event["object"].get("code") == 410:
                                version = None
                            break
                        version = event["object"]["metadata"]["resourceVersion"]
                        if event["type"] != "BOOKMARK":
                            self._emit(event["type"], event["object"])
                        if self._stop.is_set():
                            break
                finally:
                    response.release_conn()
            except Exception:  # chaos restarts the API server under us
                time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.warmsim", description=__doc__)
    parser.add_argument("workdir", type=Path, help="the test bed folder (python -m testbed up)")
    args = parser.parse_args(argv)
    bed = Testbed.from_state(args.workdir)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with WarmFleet(bed) as fleet:
        print("warmsim: playing warm pods; Ctrl-C to stop", flush=True)
        while not stop.wait(10):
            log = fleet.log
            print(
                f"warmsim: {fleet.running_workers()} workers, {len(log.runs)} tasks run, "
                f"{log.requests} requests ({log.retries} repeated), {len(log.errors)} errors",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
