"""One `gpubatch run` per batch state folder at a time, held as long as anything it started lives.

The lock is an `flock` on `<state folder>/run.lock`, and every task command inherits the locked
descriptor. The kernel releases an flock only when the last descriptor sharing it is closed, so
the lock is held while the runner OR any task process it started (or their children) is alive:
after a `kill -9` of the runner, a second run is refused until the orphans are gone too, instead
of running a second copy of a task that an orphan is still writing. No pid file can go stale:
a crashed holder's lock disappears with its processes. The file's text (pid, host, start) is
only for the message.

A run started right after a `kill -9` waits a moment for the lock: the old run's watchdog
(`local.watchdog`) kills its tasks as the runner dies, but they take a moment to exit.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from gpubatch.edges import storage
from gpubatch.local.errors import LocalError
from gpubatch.local.journal import INFLIGHT_FILE, unfinished_leftovers

LOCK_FILE: Final = "run.lock"
#: How long a new run waits for the processes of a run that was just killed to exit.
WAIT_FOR_DYING_RUN_SECONDS: Final = 3.0
_RETRY_SECONDS: Final = 0.02


class StateLock:
    """The exclusive lock of one state folder (`acquire` raises LocalError when it is held)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, wait_seconds: float = WAIT_FOR_DYING_RUN_SECONDS) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Inheritable: every task keeps it open (worker.run.Lifetime), so the lock is held
        # while any of them lives, even one that escaped the watchdog.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        os.set_inheritable(fd, True)
        give_up = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= give_up:
                    holder = self._holder(fd)
                    os.close(fd)
                    raise LocalError(
                        f"this batch is already running from {self.path.parent}/ ({holder}), "
                        "or task processes it started are still alive and may be writing its "
                        "outputs. Wait for that run to end (or stop it and its tasks), then run "
                        "again; finished tasks will be skipped.",
                        environment=True,
                    ) from None
                time.sleep(_RETRY_SECONDS)
        os.ftruncate(fd, 0)
        started = datetime.now(UTC).isoformat(timespec="seconds")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def _holder(fd: int) -> str:
        with contextlib.suppress(OSError):
            text = os.pread(fd, 200, 0).decode(errors="replace").strip()
            if text:
                return f"run.lock says: {text}"
        return "run.lock is held"


def claim(folder: Path) -> StateLock:
    """Take the state folder for a new run: the lock, then remove what the attempts of a run
    that was killed (`kill -9`, a power cut of the terminal) may have half-written, so the
    output scan that follows never takes a torn file for finished work."""
    lock = StateLock(folder)
    lock.acquire()
    try:
        leftovers = unfinished_leftovers(folder)
        if leftovers:
            storage.remove(leftovers)
    except storage.StorageError as err:
        lock.release()
        raise LocalError(
            f"a killed earlier run left outputs that may be incomplete, and removing them "
            f"failed: {err}; remove them by hand (see {folder}/{INFLIGHT_FILE}) and run again",
            environment=True,
        ) from None
    return lock
