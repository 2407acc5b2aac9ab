"""The command's exit codes, and the one error type commands raise for a user to read.

Exit codes are part of the interface (scripts and CI check them), so they are few and fixed:

- 0: everything asked for succeeded (every task succeeded or was skipped);
- 1: the batch ran but not everything succeeded: a task failed, or the batch is Failed;
- 2: the command line or the batch file is wrong (argparse also exits 2 for usage errors);
- 3: the environment cannot do it: no GPU and no --slots, no cluster, no such batch;
- 124: `watch --timeout` ran out before the batch ended (as timeout(1) reports);
- 130: interrupted (Ctrl-C), as shells report a SIGINT.
"""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    TASKS_FAILED = 1
    USAGE = 2
    ENVIRONMENT = 3
    TIMEOUT = 124
    INTERRUPTED = 130


class CliError(Exception):
    """A problem the user can fix; `str(err)` says what to change, `code` is the exit code."""

    def __init__(self, message: str, code: Exit = Exit.USAGE) -> None:
        super().__init__(message)
        self.code = code
