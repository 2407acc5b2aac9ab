"""The one error type the local executor raises for a user to read."""

from __future__ import annotations


class LocalError(Exception):
    """A problem the user can fix; `str(err)` says what to change.

    `environment` is True when the machine cannot do it (no GPU, a batch already running from
    this state folder, no records here) rather than the command line or batch file being wrong;
    the CLI maps it to its exit code.
    """

    def __init__(self, message: str, *, environment: bool = False) -> None:
        super().__init__(message)
        self.environment = environment
