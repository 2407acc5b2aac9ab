"""Start, watch and stop the control-plane processes.

Two modes, because two kinds of caller exist:
- tied (pytest): every child gets PR_SET_PDEATHSIG=SIGKILL, so even a SIGKILLed pytest leaves no
  etcd or apiserver behind ("no process may outlive the test session");
- detached (`make testbed-up`): children start in their own session and outlive the command;
  `make testbed-down` stops them by the pids recorded in the state file.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Component:
    """One control-plane process: how to start it and where it logs."""

    name: str
    argv: list[str]
    log_path: Path
    tied: bool = True
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    pid: int | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if self.tied else None,
            start_new_session=not self.tied,
        )
        log.close()
        self.pid = self.process.pid

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        if self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; safe to call twice."""
        if not self.alive():
            self._reap()
            return
        assert self.pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.alive() and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            while self.alive():
                self._reap()
                time.sleep(0.02)
        self._reap()

    def kill(self) -> None:
        """SIGKILL at once (chaos tests)."""
        if self.pid is not None and self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        while self.alive():
            self._reap()
            time.sleep(0.02)
        self._reap()

    def _reap(self) -> None:
        if self.process is not None:
            self.process.poll()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class StartError(RuntimeError):
    """A component did not come up; the message carries the tail of its log."""


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    component: Component | None = None,
    interval: float = 0.1,
) -> None:
    """Poll `check` until it is true; fail fast if the component died meanwhile."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        if component is not None and not component.alive():
            raise StartError(
                f"{component.name} exited while waiting for {what}:\n{component.log_tail()}"
            )
        try:
            if check():
                return
        except Exception as error:  # the check talks to a process that is still starting
            last_error = error
        time.sleep(interval)
    tail = f"\n{component.name} log:\n{component.log_tail()}" if component else ""
    raise StartError(f"timed out after {timeout:.0f}s waiting for {what} ({last_error}){tail}")
