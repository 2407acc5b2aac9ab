"""Task processes never outlive the runner, even after `kill -9` of the runner.

At the start of a run the runner forks a small watchdog (before any thread exists, so the fork
is safe) connected by a pipe. The runner's slot threads write `+PGID` as each task's process
group starts and `-PGID` once it is gone. The watchdog does nothing else until the pipe reaches
end-of-file, which happens exactly when the runner's process is gone, however it ended: then it
SIGKILLs every group still registered, waits until they have exited, and exits itself.

Why not PR_SET_PDEATHSIG in each task: it needs a `preexec_fn`, which forces subprocess off its
vfork path (5-8 ms per task start here instead of 1-1.5 ms), and it reaches only the task's first
process, not the workers it started; the watchdog kills whole process groups. The watchdog also
holds the state lock (it shares the runner's locked descriptor), so a new run cannot start
before the killed run's tasks are gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Final

#: After killing the groups, how long the watchdog waits for them to be gone before it exits.
GONE_WITHIN_SECONDS: Final = 10.0


class Watchdog:
    """The runner's side: a `worker.run.GroupWatch` that outlives the runner."""

    def __init__(self) -> None:
        read_end, self._write_end = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the watchdog
            os.close(self._write_end)
            _watch(read_end)  # never returns
        os.close(read_end)

    def started(self, pgid: int) -> None:
        self._tell(f"+{pgid}\n")

    def ended(self, pgid: int) -> None:
        self._tell(f"-{pgid}\n")

    def _tell(self, line: str) -> None:
        # One write below PIPE_BUF is atomic, whichever slot thread writes. A watchdog that is
        # gone (killed on its own) must not turn a task's start into a task failure.
        with contextlib.suppress(OSError):
            os.write(self._write_end, line.encode())

    def close(self) -> None:
        """The run ended normally: let the watchdog go (no group is left to kill)."""
        os.close(self._write_end)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def _watch(read_end: int) -> None:
    """The watchdog's whole life; ends with os._exit so nothing of the runner runs here."""
    try:
        # Ctrl-C in the terminal is the runner's to handle; the watchdog waits for it to end.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        groups: set[int] = set()
        pending = b""
        while chunk := os.read(read_end, 4096):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                pgid = int(line[1:])
                if line.startswith(b"+"):
                    groups.add(pgid)
                else:
                    groups.discard(pgid)
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        give_up = time.monotonic() + GONE_WITHIN_SECONDS
        while groups and time.monotonic() < give_up:
            for pgid in list(groups):
                try:
                    os.killpg(pgid, 0)
                except (ProcessLookupError, PermissionError):
                    groups.discard(pgid)
            time.sleep(0.01)
    finally:
        os._exit(0)
