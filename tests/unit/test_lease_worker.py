"""A warm pod's worker on a cluster (`gpubatch-worker --warm --lease`), run for real against a
stand-in for the operator's lease endpoint.

The worker is the real process with a real warm program; the operator is a loopback HTTPS
server in this file (`FakeOperator`) that plays the lease protocol of `gpubatch.api.lease`:
it records results idempotently by (index, attempt), grants the scripted leases in order with
increasing seq, re-sends the granted lease to a request with an older seq, and answers done
when no lease is left. Faults are injected per request: a 503, a lost answer, an operator that
is down for a while, a stale answer, a 401. Its certificate comes from the test bed's CA
generator, so the client's TLS verification is the real thing.

The program records each start in LOADS, and at each task the task's index and the
termination message as it was when the task arrived (the "running" record); the fake operator
keeps the termination message as it was when each request arrived (the lease's final record).
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gpubatch.api.lease import (
    LEASE_PATH,
    AttemptResult,
    LeasedTask,
    LeaseRequest,
    LeaseResponse,
    WarmProgress,
)
from gpubatch.api.result import ExitCode, Outcome, Reason
from gpubatch.api.taskenv import TaskEnvironment
from gpubatch.worker.lease_client import (
    LeaseClient,
    LeaseRefused,
    LeaseSettings,
    OperatorUnreachable,
)
from gpubatch.worker.lease_loop import LeaseExit, LeaseLoop
from gpubatch.worker.run import StopRequest
from gpubatch.worker.warm import WarmWorker
from testbed import certs

pytestmark = pytest.mark.process

BATCH_UID = "0b7c-uid"
TOKEN = "token-of-the-pod"

#: A warm program: "fail" in a task's params fails it, "crash" kills the program, "hang" waits
#: until stopped; every other task writes its output.
PROGRAM = textwrap.dedent(
    """
    import json, os, time
    import gpubatch.worker
    with open(os.environ["LOADS"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    for task in gpubatch.worker.tasks():
        with open(os.environ["TERMINATION_LOG"]) as log:
            record = log.read()
        with open(os.environ["SEEN"], "a") as f:
            f.write(json.dumps({"index": task.index, "log": record}) + "\\n")
        with task:
            action = task.params.get("do", "")
            if action == "fail":
                raise ValueError(f"bad input {task.index}")
            if action == "crash":
                os._exit(3)
            if action == "hang":
                time.sleep(60)
            for path in task.write_to:
                open(path, "w").write(str(task.index))
    """
)


# ------------------------------------------------------------------------------ the operator
@dataclass
class FakeOperator:
    """The lease endpoint's behaviour (see the module docstring); `faults` are taken one per
    request, in order (None: answer normally)."""

    leases: deque[tuple[LeasedTask, ...]]
    termination_log: Path
    faults: deque[str | None] = field(default_factory=deque)
    requests: list[bytes] = field(default_factory=list)
    logs_at_request: list[WarmProgress | None] = field(default_factory=list)
    recorded: dict[tuple[int, int], AttemptResult] = field(default_factory=dict)
    unrun: set[tuple[int, int]] = field(default_factory=set)
    granted: tuple[int, tuple[LeasedTask, ...]] = (0, ())
    auth_headers: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, body: bytes, authorization: str) -> tuple[int, bytes] | str:
        """(status, body) to answer, or "drop" (close the connection unanswered) or "down"
        (the same, and the endpoint stops listening for a while)."""
        with self.lock:
            self.requests.append(body)
            self.auth_headers.append(authorization)
            text = self.termination_log.read_text() if self.termination_log.exists() else ""
            self.logs_at_request.append(WarmProgress.try_decode(text))
            fault = self.faults.popleft() if self.faults else None
            if fault == "503":
                return 503, b"operator is starting"
            if fault == "401":
                return 401, b"token audience is not gpubatch.io/lease"
            if fault == "down":
                return "down"
            request = LeaseRequest.model_validate_json(body)
            self._record(request)
            if fault == "empty":  # a long poll that ended with no work yet
                return 200, LeaseResponse(seq=self.granted[0]).model_dump_json().encode()
            answer = self._answer(request)
            if fault == "stale":
                answer = LeaseResponse(seq=1, tasks=self.granted[1] or answer.tasks)
            if fault == "lose":  # recorded and granted, but the answer never arrives
                return "drop"
            return 200, answer.model_dump_json(by_alias=True).encode()

    def _record(self, request: LeaseRequest) -> None:
        for result in request.results:
            self.recorded.setdefault((result.index, result.attempt), result)
        self.unrun |= set(request.unrun)

    def _answer(self, request: LeaseRequest) -> LeaseResponse:
        seq, tasks = self.granted
        if request.seq < seq:  # the answer granting `seq` was lost on the way
            return LeaseResponse(seq=seq, tasks=tasks)
        if not self.leases:
            return LeaseResponse(seq=seq, done=True)
        self.granted = (seq + 1, self.leases.popleft())
        return LeaseResponse(seq=self.granted[0], tasks=self.granted[1])

    def parsed(self) -> list[LeaseRequest]:
        return [LeaseRequest.model_validate_json(body) for body in self.requests]


class Endpoint:
    """The fake operator behind HTTPS on a fixed loopback port; it can go away and return."""

    DOWN_SECONDS = 1.5

    def __init__(self, operator: FakeOperator, cert: Path, key: Path) -> None:
        self.operator = operator
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(cert, key)
        self._server: ThreadingHTTPServer | None = None
        self.port = 0
        self.start()

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}{LEASE_PATH}"

    def start(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        server.daemon_threads = True  # a handler may stop its own server (the "down" fault)
        server.socket = self._tls.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outcome = endpoint.operator.handle(body, self.headers.get("Authorization", ""))
                if outcome == "down":
                    endpoint.stop()  # refuses connections from now on, until restarted
                    threading.Timer(endpoint.DOWN_SECONDS, endpoint.start).start()
                if isinstance(outcome, str):
                    self.close_connection = True
                    return
                status, answer = outcome
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_args: object) -> None:
                pass

        return Handler


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[certs.CertPaths, certs.CertPaths]:
    """The operator's CA and serving certificate, and another CA the worker must not accept."""
    folder = tmp_path_factory.mktemp("pki")
    return certs.generate(folder / "ours"), certs.generate(folder / "theirs")


class Pod:
    """A warm pod's files and environment, its leases, and the worker process."""

    def __init__(self, tmp_path: Path, pki: tuple[certs.CertPaths, certs.CertPaths]) -> None:
        self.dir = tmp_path
        self.ca = pki[0]
        self.other_ca = pki[1]
        self.termination_log = tmp_path / "termination-log"
        self.loads = tmp_path / "loads"
        self.seen = tmp_path / "seen"
        self.token = tmp_path / "token"
        self.token.write_text(TOKEN + "\n")
        self.operator = FakeOperator(leases=deque(), termination_log=self.termination_log)
        self.endpoint = Endpoint(self.operator, self.ca.serving_cert, self.ca.serving_key)

    def lease(self, *indexes: int, attempt: int = 0, **actions: str) -> None:
        """Script the next lease: these indexes, `do` actions by index (e.g. t1="crash")."""
        tasks = []
        for index in indexes:
            environment = TaskEnvironment(
                batch="warm-lease",
                task_index=index,
                attempt=attempt,
                params={"do": actions.get(f"t{index}", "")},
                outputs=(str(self.dir / "out" / f"{index}.txt"),),
                require_gpu=False,
                grace_seconds=2.0,
            )
            tasks.append(LeasedTask(index=index, attempt=attempt, environ=environment.to_environ()))
        self.operator.leases.append(tuple(tasks))

    def environ(self, *, ca: certs.CertPaths | None = None) -> dict[str, str]:
        return dict(
            os.environ,
            GPUBATCH_LEASE_URL=self.endpoint.url,
            GPUBATCH_LEASE_CA=(ca or self.ca).ca_cert.read_text(),
            GPUBATCH_LEASE_TOKEN_FILE=str(self.token),
            GPUBATCH_BATCH_UID=BATCH_UID,
            LOADS=str(self.loads),
            SEEN=str(self.seen),
            TERMINATION_LOG=str(self.termination_log),
        )

    def start(self, ca: certs.CertPaths | None = None) -> subprocess.Popen[str]:
        argv = [
            sys.executable,
            "-m",
            "gpubatch.worker.main",
            "--warm",
            "--lease",
            "--termination-log",
            str(self.termination_log),
            "--grace",
            "2",
            "--",
            sys.executable,
            "-c",
            PROGRAM,
        ]
        return subprocess.Popen(argv, env=self.environ(ca=ca), stderr=subprocess.PIPE, text=True)

    def run(self, ca: certs.CertPaths | None = None) -> tuple[int, str]:
        """Run the pod to its end: (exit code, its log)."""
        process = self.start(ca)
        _, log = process.communicate(timeout=120)
        return process.returncode, log

    def load_count(self) -> int:
        return len(self.loads.read_text().split()) if self.loads.exists() else 0

    def seen_tasks(self) -> list[tuple[int, WarmProgress | None]]:
        """(index, the termination message when the task arrived) for each task run."""
        if not self.seen.exists():
            return []
        records = [json.loads(line) for line in self.seen.read_text().splitlines()]
        return [(r["index"], WarmProgress.try_decode(r["log"])) for r in records]

    def seen_indexes(self) -> list[int]:
        return [index for index, _ in self.seen_tasks()]


@pytest.fixture
def pod(tmp_path: Path, pki: tuple[certs.CertPaths, certs.CertPaths]) -> Iterator[Pod]:
    pod = Pod(tmp_path, pki)
    yield pod
    pod.endpoint.stop()


def outcomes(request: LeaseRequest) -> dict[int, tuple[Outcome, Reason, int]]:
    return {
        r.index: (r.result.outcome, r.result.reason, r.result.exit_code) for r in request.results
    }


OK = (Outcome.SUCCEEDED, Reason.COMPLETED, 0)


# ------------------------------------------------------------------------------ the happy path
def test_leases_run_in_order_through_one_program_and_each_report_names_its_lease(
    pod: Pod,
) -> None:
    pod.lease(0, 1)
    pod.lease(2)
    pod.lease(3, 4)

    code, log = pod.run()

    assert code == LeaseExit.DONE, log
    assert pod.seen_indexes() == [0, 1, 2, 3, 4]
    assert pod.load_count() == 1
    requests = pod.operator.parsed()
    assert [(r.seq, sorted(outcomes(r))) for r in requests] == [
        (0, []),
        (1, [0, 1]),
        (2, [2]),
        (3, [3, 4]),
    ]
    assert all(set(outcomes(r).values()) == {OK} for r in requests[1:])
    assert {r.batch_uid for r in requests} == {BATCH_UID}
    assert set(pod.operator.auth_headers) == {f"Bearer {TOKEN}"}
    # The model's load time travels once, with the first report after it was measured.
    assert [r.load_seconds is not None for r in requests] == [False, True, False, False]


def test_an_empty_answer_is_asked_again_at_once_and_acknowledges_the_results(pod: Pod) -> None:
    pod.lease(0)
    pod.lease(1)
    pod.operator.faults.extend([None, "empty"])

    code, log = pod.run()

    assert code == LeaseExit.DONE, log
    assert pod.seen_indexes() == [0, 1]
    assert [(r.seq, sorted(outcomes(r))) for r in pod.operator.parsed()] == [
        (0, []),
        (1, [0]),
        (1, []),  # the long poll's empty answer was lease 1 again: nothing more to report
        (2, [1]),
    ]


def test_the_termination_message_tells_the_running_task_and_the_finished_ones(pod: Pod) -> None:
    pod.lease(0, 1, 2, t1="fail")
    pod.lease(3)

    code, log = pod.run()

    assert code == LeaseExit.DONE, log
    # As each task arrived: the lease's seq, the tasks finished so far, this one running.
    assert [
        (index, progress.seq, [d[:3] for d in progress.done], progress.running)
        for index, progress in pod.seen_tasks()
        if progress is not None
    ] == [
        (0, 1, [], (0, 0)),
        (1, 1, [(0, 0, 0)], (1, 0)),
        (2, 1, [(0, 0, 0), (1, 0, 1)], (2, 0)),
        (3, 2, [], (3, 0)),
    ]
    # When the lease was reported: every task of it done, none running.
    at_report = pod.operator.logs_at_request[1]
    assert at_report is not None
    assert (at_report.seq, [d[:3] for d in at_report.done], at_report.running) == (
        1,
        [(0, 0, 0), (1, 0, 1), (2, 0, 0)],
        None,
    )


def test_a_failed_task_is_reported_and_the_lease_goes_on(pod: Pod) -> None:
    pod.lease(0, 1, 2, t1="fail")

    code, log = pod.run()

    assert code == LeaseExit.DONE, log
    report = pod.operator.parsed()[1]
    assert outcomes(report) == {0: OK, 1: (Outcome.FAILED, Reason.NON_ZERO_EXIT, 1), 2: OK}
    failed = next(r.result for r in report.results if r.index == 1)
    assert "bad input 1" in failed.message
    assert report.unrun == ()
    assert pod.load_count() == 1


def test_a_crash_mid_lease_fails_the_running_task_and_returns_the_rest_unrun(pod: Pod) -> None:
    pod.lease(0, 1, 2, 3, t1="crash")
    pod.lease(4)

    code, log = pod.run()

    assert code == LeaseExit.DONE, log
    report, after = pod.operator.parsed()[1:3]
    assert outcomes(report) == {0: OK, 1: (Outcome.FAILED, Reason.NON_ZERO_EXIT, 3)}
    assert report.unrun == ((2, 0), (3, 0))
    assert pod.seen_indexes() == [0, 1, 4]
    # The next lease gets a fresh program (a second load), whose load time is reported again.
    assert pod.load_count() == 2
    assert outcomes(after) == {4: OK}
    assert after.load_seconds is not None


# ------------------------------------------------------------------------------ the transport
def test_a_503_repeats_the_same_request_and_nothing_is_lost_or_run_twice(pod: Pod) -> None:
    pod.lease(0, 1)
    pod.lease(2)
    pod.operator.faults.extend([None, "503", "503"])

    code, log = pod.run()

    assert code == LeaseExit.DONE, log
    bodies = pod.operator.requests
    assert bodies[1] == bodies[2] == bodies[3]  # the report of lease 1, repeated unchanged
    assert sorted(pod.operator.recorded) == [(0, 0), (1, 0), (2, 0)]
    assert pod.seen_indexes() == [0, 1, 2]
    assert "HTTP 503" in log


def test_an_operator_that_is_down_for_a_while_gets_the_same_report_when_it_returns(
    pod: Pod,
) -> None:
    pod.lease(0, 1)
    pod.lease(2)
    pod.operator.faults.extend([None, "down"])

    code, log = pod.run()

    assert code == LeaseExit.DONE, log
    bodies = pod.operator.requests
    assert bodies[1] == bodies[2]  # the report that met the outage, then the same once back
    assert sorted(pod.operator.recorded) == [(0, 0), (1, 0), (2, 0)]
    assert pod.seen_indexes() == [0, 1, 2]
    assert "Connection refused" in log or "ConnectionRefusedError" in log


def test_a_lost_answer_gets_the_recorded_lease_again_and_it_runs_once(pod: Pod) -> None:
    pod.lease(0)
    pod.lease(1, 2)
    pod.operator.faults.extend([None, "lose"])

    code, log = pod.run()

    assert code == LeaseExit.DONE, log
    requests = pod.operator.parsed()
    assert [r.seq for r in requests] == [0, 1, 1, 2]
    assert pod.operator.requests[1] == pod.operator.requests[2]
    assert pod.seen_indexes() == [0, 1, 2]
    assert sorted(outcomes(requests[3])) == [1, 2]


def test_a_stale_answer_naming_a_lease_already_run_is_not_run_again(pod: Pod) -> None:
    pod.lease(0, 1)
    pod.lease(2)
    pod.operator.faults.extend([None, "stale"])

    code, log = pod.run()

    assert code == LeaseExit.DONE, log
    assert pod.seen_indexes() == [0, 1, 2]
    assert pod.operator.requests[1] == pod.operator.requests[2]  # the report, repeated
    assert "lease 1 again" in log


def test_a_refused_token_ends_the_pod_with_the_operators_message(pod: Pod) -> None:
    pod.lease(0)
    pod.operator.faults.append("401")

    code, log = pod.run()

    assert code == LeaseExit.MISCONFIGURED == int(ExitCode.WORKER_ERROR)
    assert "HTTP 401" in log and "token audience is not gpubatch.io/lease" in log
    assert len(pod.operator.requests) == 1  # not retried
    assert pod.load_count() == 0


def test_a_server_whose_certificate_the_ca_does_not_vouch_for_is_refused(pod: Pod) -> None:
    pod.lease(0)

    code, log = pod.run(ca=pod.other_ca)

    assert code == LeaseExit.MISCONFIGURED
    assert "GPUBATCH_LEASE_CA" in log
    assert pod.operator.requests == []  # the token never left the pod
    assert pod.load_count() == 0


def test_missing_lease_environment_is_named(pod: Pod) -> None:
    environ = pod.environ()
    del environ["GPUBATCH_LEASE_URL"], environ["GPUBATCH_BATCH_UID"]
    argv = [sys.executable, "-m", "gpubatch.worker.main", "--warm", "--lease", "--", "true"]

    done = subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=60)

    assert done.returncode == LeaseExit.MISCONFIGURED
    assert "GPUBATCH_LEASE_URL, GPUBATCH_BATCH_UID must be set" in done.stderr


def test_an_operator_that_never_answers_is_given_up_with_its_own_exit_code(pod: Pod) -> None:
    pod.endpoint.stop()
    settings = LeaseSettings.from_env(pod.environ())
    client = LeaseClient(settings, give_up_after=1.0)
    started = []

    def make_worker() -> WarmWorker:
        started.append(1)
        return WarmWorker([sys.executable, "-c", PROGRAM])

    loop = LeaseLoop(
        client, make_worker, stop=StopRequest(), termination_log=str(pod.termination_log)
    )

    assert loop.run() == LeaseExit.OPERATOR_UNREACHABLE
    assert started == []
    with pytest.raises(OperatorUnreachable, match="no answer from the operator"):
        client.exchange(LeaseRequest(batch_uid=BATCH_UID))


# ------------------------------------------------------------------------------ stopping
def test_sigterm_mid_task_interrupts_it_reports_once_and_exits(pod: Pod) -> None:
    pod.lease(0, 1, 2, t1="hang")
    process = pod.start()
    deadline = time.monotonic() + 60
    while pod.seen_indexes() != [0, 1] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pod.seen_indexes() == [0, 1]  # task 1 is with the program now

    process.send_signal(signal.SIGTERM)
    _, log = process.communicate(timeout=60)

    assert process.returncode == 128 + signal.SIGTERM, log
    final = pod.operator.parsed()[-1]
    assert final.seq == 1
    assert outcomes(final) == {0: OK, 1: (Outcome.FAILED, Reason.INTERRUPTED, 143)}
    assert final.unrun == ((2, 0),)
    progress = WarmProgress.try_decode(pod.termination_log.read_text())
    assert progress is not None
    assert ([d[:3] for d in progress.done], progress.running) == ([(0, 0, 0), (1, 0, 143)], None)


def test_the_token_is_read_again_for_every_request(pod: Pod) -> None:
    client = LeaseClient(LeaseSettings.from_env(pod.environ()))
    client.exchange(LeaseRequest(batch_uid=BATCH_UID))
    pod.token.write_text("rotated-token")

    client.exchange(LeaseRequest(batch_uid=BATCH_UID))

    assert pod.operator.auth_headers == [f"Bearer {TOKEN}", "Bearer rotated-token"]


def test_a_missing_token_file_is_refused_with_what_the_pod_needs(pod: Pod) -> None:
    pod.token.unlink()
    client = LeaseClient(LeaseSettings.from_env(pod.environ()))

    with pytest.raises(LeaseRefused, match="projected service-account token"):
        client.exchange(LeaseRequest(batch_uid=BATCH_UID))
    assert pod.operator.requests == []
