"""Run one command to its end: stream its output, pass on stop signals, enforce a deadline.

The command runs in its own session and process group, so that stopping it reaches everything
it started (a shell pipeline, torchrun's workers, dataloader processes), and so that nothing it
left behind keeps holding the GPU after it exits: the group is killed once the command is done.
A stop (SIGTERM from the kubelet, Ctrl-C in local mode) is forwarded to the group; if the command
is still alive a grace period later, the group is killed. The deadline works the same way.

The command's stdout goes straight to ours (no copy, no buffering). Its stderr passes through a
small relay that also keeps the last bytes, so a failed task's result can say why it failed
without anyone reading the pod log. stdin is /dev/null: tasks are batch work, and several tasks
sharing a terminal's stdin in local mode would steal each other's input.

`StopRequest` is deliberately a lock-free queue polled by the wait loop rather than an Event:
it is filled from signal handlers, which must not take locks the interrupted code may hold.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Final, Protocol

from gpubatch.api.result import signal_exit_code

POLL_SECONDS: Final = 0.05
STDERR_TAIL_BYTES: Final = 2048
_RELAY_JOIN_SECONDS: Final = 2.0

OutputSink = int | IO[bytes] | None
"""Where command output goes: a file descriptor, a binary file, or None for ours."""


class StopRequest:
    """A request, from a signal handler or another thread, that the command stop.

    Each `request()` is forwarded once to the command, so a second Ctrl-C is a second SIGINT.
    """

    def __init__(self) -> None:
        self._pending: collections.deque[int] = collections.deque()
        self._first: int | None = None

    def request(self, signum: int = signal.SIGTERM) -> None:
        if self._first is None:
            self._first = signum
        self._pending.append(signum)

    @property
    def requested(self) -> int | None:
        """The first signal asked for, or None while no stop was requested."""
        return self._first

    def take(self) -> list[int]:
        taken = []
        while self._pending:
            taken.append(self._pending.popleft())
        return taken


@dataclass(frozen=True)
class CommandOutcome:
    """How a command ended, before any interpretation as task success or failure."""

    returncode: int
    """Popen's code: the exit status, or -N when killed by signal N."""
    duration_seconds: float
    deadline_exceeded: bool = False
    stopped_by: int | None = None
    killed_after_grace: bool = False
    stderr_tail: str = ""

    @property
    def exit_code(self) -> int:
        """The code as a shell reports it: 128 + N for a command killed by signal N."""
        return signal_exit_code(-self.returncode) if self.returncode < 0 else self.returncode


def build_command(argv: Sequence[str], *, shell: bool) -> list[str]:
    """The argv to execute: the user's argv itself, or `/bin/sh -c "<argv joined by spaces>"`.

    Without shell mode, metacharacters in arguments are passed literally - a file named
    `a;rm -rf b` is just a file name. Shell mode joins with plain spaces (no quoting) because it
    exists for users who wrote a shell command line (pipes, redirections, `&&`) on purpose.
    """
    if not argv:
        raise ValueError("no command given")
    return ["/bin/sh", "-c", " ".join(argv)] if shell else list(argv)


class GroupWatch(Protocol):
    """Told of each command's process group as it starts and once it is gone, by a caller that
    must kill the groups still running if it dies itself (the local runner's watchdog)."""

    def started(self, pgid: int) -> None: ...

    def ended(self, pgid: int) -> None: ...


@dataclass(frozen=True)
class Lifetime:
    """How the command is tied to the process that starts it (the local runner's needs; a pod
    needs neither, the kubelet ends the container).

    `groups`: told of the command's process group, so it can be killed if the caller dies.
    `keep_inheritable_fds`: the command keeps the caller's inheritable descriptors (the local
    runner's state lock, so the lock stays held while anything the runner started is alive).
    Python's own descriptors are not inheritable, so only those made so on purpose pass; and
    unlike `pass_fds` (or a `preexec_fn`), this keeps subprocess's fast vfork path, which
    measured 1-1.5 ms per start here against 5-8 ms for fork.
    """

    groups: GroupWatch | None = None
    keep_inheritable_fds: bool = False


#: A pod's command: no tie beyond its own process group.
UNTIED: Final = Lifetime()


def run_command(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    deadline_seconds: float | None = None,
    grace_seconds: float = 10.0,
    stop: StopRequest | None = None,
    stdout: OutputSink = None,
    stderr: OutputSink = None,
    lifetime: Lifetime = UNTIED,
) -> CommandOutcome:
    """Run `argv` to its end; raises OSError when it cannot start (not found, not executable)."""
    stop = stop if stop is not None else StopRequest()
    started = time.monotonic()
    process = subprocess.Popen(
        list(argv),
        env=dict(env) if env is not None else None,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE,
        start_new_session=True,
        close_fds=not lifetime.keep_inheritable_fds,
    )
    if lifetime.groups is not None:
        lifetime.groups.started(process.pid)  # its own session: the pid is the group id
    assert process.stderr is not None
    relay = _StderrRelay(process.stderr, stderr)
    relay.start()
    stopped_by: int | None = None
    deadline_exceeded = False
    killed = False
    term_sent_at: float | None = None
    exited = _ExitWatch(process)
    try:
        while True:
            code = exited.wait(POLL_SECONDS)
            if code is not None:
                returncode = code
                break
            now = time.monotonic()
            for signum in stop.take():
                stopped_by = stopped_by if stopped_by is not None else signum
                _signal_group(process.pid, signum)
                term_sent_at = term_sent_at if term_sent_at is not None else now
            if (
                deadline_seconds is not None
                and not deadline_exceeded
                and stopped_by is None
                and now - started >= deadline_seconds
            ):
                deadline_exceeded = True
                _signal_group(process.pid, signal.SIGTERM)
                term_sent_at = now
            if term_sent_at is not None and not killed and now - term_sent_at >= grace_seconds:
                _signal_group(process.pid, signal.SIGKILL)
                killed = True
    finally:
        exited.close()
        # Whatever the command left running in its group would hold the GPU and the stderr
        # pipe; a task ends with all of its processes. (Also the path taken if we are
        # interrupted by an exception while waiting.)
        _signal_group(process.pid, signal.SIGKILL)
        if process.returncode is None:
            process.wait()
        if lifetime.groups is not None:
            lifetime.groups.ended(process.pid)
        relay.join(_RELAY_JOIN_SECONDS)
    # A stop requested between the command's exit and our last poll changes nothing: the
    # command had already finished on its own.
    return CommandOutcome(
        returncode=returncode,
        duration_seconds=time.monotonic() - started,
        deadline_exceeded=deadline_exceeded,
        stopped_by=stopped_by,
        killed_after_grace=killed,
        stderr_tail=relay.tail(),
    )


class _ExitWatch:
    """Waits for the command's exit, waking the moment it exits.

    `Popen.wait(timeout)` polls with sleeps that grow to 50 ms, so a short task's end was seen
    up to 50 ms late, every task. A pidfd (Linux 5.3+) becomes readable when the process
    exits, so `select` returns at once; elsewhere the polling wait remains.
    """

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process
        self._pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):
            self._pidfd = os.pidfd_open(process.pid)

    def wait(self, timeout: float) -> int | None:
        """The return code once the command has exited, or None after `timeout` seconds."""
        if self._pidfd is not None:
            ready, _, _ = select.select([self._pidfd], [], [], timeout)
            if not ready:
                return None
            return self._process.wait()
        try:
            return self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(pgid, signum)


class _StderrRelay(threading.Thread):
    """Copies the command's stderr to the sink as it comes, keeping the last bytes."""

    def __init__(self, source: IO[bytes], sink: OutputSink) -> None:
        super().__init__(name="gpubatch-stderr-relay", daemon=True)
        self._source = source
        self._sink = sink
        self._tail = bytearray()

    def run(self) -> None:
        fd = self._source.fileno()
        try:
            while chunk := os.read(fd, 65536):
                self._write(chunk)
                self._tail += chunk
                if len(self._tail) > STDERR_TAIL_BYTES:
                    del self._tail[: len(self._tail) - STDERR_TAIL_BYTES]
        finally:
            self._source.close()

    def _write(self, chunk: bytes) -> None:
        try:
            if self._sink is None or isinstance(self._sink, int):
                view = memoryview(chunk)
                fd = 2 if self._sink is None else self._sink
                while view:
                    view = view[os.write(fd, view) :]
            else:
                self._sink.write(chunk)
                self._sink.flush()
        except OSError:
            pass  # a closed log must not kill the task; the tail is still kept

    def tail(self) -> str:
        return bytes(self._tail).decode(errors="replace")
