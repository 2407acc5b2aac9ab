"""`gpubatch`: check, preview and run GPU batches on this machine or on a Kubernetes cluster.

    gpubatch validate FILE        check a batch file (offline)
    gpubatch expand FILE          list its tasks, parameters, outputs, and what would be skipped
    gpubatch run FILE             run it here: one worker per local GPU (or --slots N on CPU)
    gpubatch submit FILE          create or update it on the cluster (KUBECONFIG)
    gpubatch status NAME          its status table (cluster, or --local)
    gpubatch watch NAME           a live progress bar until it ends
    gpubatch report NAME          per-GPU-model statistics, failures, --plot timeline.png

This module only parses the command line and turns errors into messages and exit codes; the
commands live in `commands.py`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from gpubatch import __version__
from gpubatch.cli import commands
from gpubatch.cli.errors import CliError, Exit
from gpubatch.core.errors import SpecError
from gpubatch.local.errors import LocalError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpubatch",
        description="Run batches of independent GPU tasks, from one YAML file, on this machine "
        "(gpubatch run) or on Kubernetes (gpubatch submit).",
        epilog="Exit codes: 0 all tasks succeeded or were skipped; 1 some task failed or the "
        "batch failed; 2 bad command line or batch file; 3 no GPU / no cluster / no such batch; "
        "124 watch timed out; 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"gpubatch {__version__}")
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check a batch file without running anything")
    p.add_argument("file", metavar="FILE")
    p.add_argument(
        "--no-expand",
        action="store_true",
        help="check the object only; do not read its globs or manifest (for inputs that exist "
        "only on the cluster)",
    )
    p.set_defaults(handler=commands.validate)

    p = sub.add_parser(
        "expand",
        help="list the tasks, their parameters and outputs, and which "
        "would be skipped because their outputs exist",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--limit", type=int, default=50, help="list at most N tasks (default 50)")
    p.add_argument("--all", action="store_true", help="list every task")
    p.add_argument("--json", action="store_true", help="one JSON object per task (stdout)")
    p.add_argument(
        "--command", dest="show_command", action="store_true", help="also show each task's command"
    )
    p.set_defaults(handler=commands.expand)

    p = sub.add_parser(
        "run",
        help="run the batch on this machine: one worker per local GPU",
        description="Run the batch here, without Kubernetes. Each task's command (from the pod "
        "template's task container; the image is not used) runs through gpubatch-worker, one "
        "task per GPU at a time, pinned with CUDA_VISIBLE_DEVICES. Finished tasks (outputs "
        "exist) are skipped, so running again continues where a run stopped. Ctrl-C stops "
        "cleanly.",
    )
    p.add_argument("file", metavar="FILE")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--gpus", metavar="LIST", help="use these GPUs only: NVML indexes or UUIDs, e.g. 0,2"
    )
    where.add_argument(
        "--slots",
        type=int,
        metavar="N",
        help="run on N CPU workers, without any GPU (never done unless asked)",
    )
    p.add_argument(
        "--freest-first",
        action="store_true",
        help="give the next task to the idle GPU with the most free memory right now "
        "(default: the first idle GPU)",
    )
    p.add_argument(
        "--free-by",
        choices=["bytes", "ratio"],
        default="bytes",
        help="with --freest-first: free memory in bytes (default) or as a share of the total",
    )
    p.add_argument(
        "--min-free-memory",
        metavar="SIZE",
        help="on a shared machine: a GPU takes a task only with at least this much free memory "
        "(8GiB, 500MiB, a byte count, or a share such as 40%%), read from NVML before each "
        "dispatch",
    )
    p.add_argument(
        "--max-utilization",
        type=int,
        metavar="PERCENT",
        help="on a shared machine: a GPU busier than this (NVML utilisation) takes no task",
    )
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where records and logs go (default .gpubatch/NAME in the current directory)",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on Ctrl-C or a deadline, how long a task may take to exit after SIGINT/SIGTERM "
        "before it is killed (default 10)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="a line per task start and end")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=commands.run)

    p = sub.add_parser("submit", help="create or update the batch on the cluster")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--watch", action="store_true", help="then follow it, as `gpubatch watch`")
    _cluster_options(p)
    _watch_options(p)
    p.set_defaults(handler=commands.submit)

    p = sub.add_parser("status", help="the batch's status table")
    p.add_argument("name", metavar="NAME")
    _cluster_options(p)
    _local_options(p)
    p.set_defaults(handler=commands.status)

    p = sub.add_parser("watch", help="a live progress bar until the batch is Complete or Failed")
    p.add_argument("name", metavar="NAME")
    _cluster_options(p)
    _watch_options(p)
    p.set_defaults(handler=commands.watch)

    p = sub.add_parser(
        "report", help="per-GPU-model statistics, recent failures, and a timeline plot"
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also draw a timeline of the tasks per GPU (needs gpubatch[plot])",
    )
    p.add_argument(
        "--failures", type=int, default=20, metavar="N", help="show the last N failures (20)"
    )
    _cluster_options(p)
    _local_options(p)
    p.set_defaults(handler=commands.report)
    return parser


def _cluster_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
    p.add_argument("--context", help="kubeconfig context (default: the current one)")


def _local_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--local",
        action="store_true",
        help="a batch run on this machine with `gpubatch run` (read from its records)",
    )
    p.add_argument(
        "--state-dir", metavar="DIR", help="the local run's folder (default .gpubatch/NAME)"
    )


def _watch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--interval", type=float, default=1.0, metavar="SECONDS", help="poll interval (1)"
    )
    p.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="give up after this long (exit 124)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except CliError as err:
        print(f"gpubatch {args.subcommand}: {err}", file=sys.stderr)
        return int(err.code)
    except LocalError as err:
        print(f"gpubatch {args.subcommand}: {err}", file=sys.stderr)
        return int(Exit.ENVIRONMENT if err.environment else Exit.USAGE)
    except SpecError as err:
        print(f"gpubatch {args.subcommand}: {err}", file=sys.stderr)
        return int(Exit.USAGE)
    except KeyboardInterrupt:
        print(f"gpubatch {args.subcommand}: interrupted", file=sys.stderr)
        return int(Exit.INTERRUPTED)
    except BrokenPipeError:
        # `gpubatch expand FILE | head`: the reader has gone, which is not an error. Point
        # stdout at /dev/null so the interpreter's final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return int(Exit.OK)


if __name__ == "__main__":
    sys.exit(main())
