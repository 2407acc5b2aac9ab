"""`gpubatch-worker`: the task pod's entrypoint.

    gpubatch-worker [--] PROGRAM [ARGS...]    run one task (the task itself comes from GPUBATCH_*)
    gpubatch-worker --report-gpus             print the NVML report as JSON (an image smoke test)
    gpubatch-worker --warm --results PATH [--tasks PATH] -- PROGRAM [ARGS...]
                                              run many tasks through one long-lived PROGRAM
    gpubatch-worker --warm --lease [--termination-log PATH] -- PROGRAM [ARGS...]
                                              a warm pod: tasks leased from the operator

The container is `command: [gpubatch-worker, --, <user argv...>]`; the `--` is optional when the
program's name does not start with `-`, so an image whose ENTRYPOINT is `gpubatch-worker` can take
the program from a pod's `args`. The process exits with the task result's exit code and writes
the result to GPUBATCH_RESULT_PATH (the termination message), so the pod status carries it.

SIGTERM and SIGINT are caught and handed to the running command (see worker.run), because the
worker is often PID 1 in the container, where an unhandled SIGTERM would otherwise be ignored.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType

from gpubatch.api.result import (
    DEFAULT_TERMINATION_MESSAGE_PATH,
    ExitCode,
    Outcome,
    Reason,
    TaskResult,
)
from gpubatch.api.taskenv import (
    ENV_NODE_NAME,
    ENV_RESULT_PATH,
    TaskEnvironment,
    TaskEnvironmentError,
)
from gpubatch.edges.nvml import probe_gpus
from gpubatch.worker.run import StopRequest
from gpubatch.worker.task import logger, run_task, write_result
from gpubatch.worker.warm_main import warm_main

USAGE = __doc__.split("\n\n")[1] if __doc__ else ""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, format="[gpubatch-worker] %(message)s", stream=sys.stderr
    )
    if args[:1] == ["--"]:
        command = args[1:]
    elif args[:1] in (["-h"], ["--help"]):
        print(f"usage:\n{USAGE}")
        return 0
    elif args[:1] == ["--warm"]:
        return warm_main(args[1:])
    elif args[:1] == ["--report-gpus"]:
        report = probe_gpus()
        print(json.dumps(report.to_dict(), indent=2))
        return 0 if report.available else int(ExitCode.NO_GPU)
    elif args[:1] and args[0].startswith("-"):
        print(
            f"gpubatch-worker: unknown option {args[0]!r}; put the task's command after `--`\n"
            f"usage:\n{USAGE}",
            file=sys.stderr,
        )
        return int(ExitCode.WORKER_ERROR)
    else:
        command = args

    try:
        env = TaskEnvironment.from_env(os.environ)
    except TaskEnvironmentError as err:
        return _environment_error(err)

    stop = StopRequest()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _forward_to(stop))
    result = run_task(env, command, stop=stop)
    write_result(result, env.result_path)
    logger.info(
        "task %d %s (exit code %d, %.1fs): %s",
        env.task_index,
        result.outcome.value,
        result.exit_code,
        result.duration_seconds,
        result.encode(),
    )
    return result.exit_code


def _forward_to(stop: StopRequest) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, _frame: FrameType | None) -> None:
        stop.request(signum)

    return handler


def _environment_error(err: TaskEnvironmentError) -> int:
    logger.error("%s", err)
    result = TaskResult(
        outcome=Outcome.FAILED,
        exit_code=ExitCode.WORKER_ERROR,
        reason=Reason.WORKER_ERROR,
        duration_seconds=0.0,
        node=os.environ.get(ENV_NODE_NAME) or None,
        message=str(err),
    )
    write_result(result, os.environ.get(ENV_RESULT_PATH) or DEFAULT_TERMINATION_MESSAGE_PATH)
    return int(ExitCode.WORKER_ERROR)


if __name__ == "__main__":
    sys.exit(main())
