"""What local mode leaves on disk: task logs, one record per attempt, and the batch status.

A cluster keeps a batch's state in the GPUBatch status and its pods; a workstation has neither,
so `gpubatch run` keeps the equivalent in a folder (default `.gpubatch/<batch name>/` in the
current directory):

    status.json      the batch status after the last pass (the same model as the operator's),
                     plus the slots it ran on; rewritten as the run goes, read by
                     `gpubatch status --local` and `gpubatch report --local`
    attempts.jsonl   one line per finished attempt: which slot, start and end times, the
                     worker's result; appended, never rewritten, so a crash loses at most the
                     attempts still running. It feeds the per-GPU summary and the timeline.
    logs/            one file per attempt with the command's output, named after the task, the
                     attempt and the run (a later run never overwrites an earlier run's log)
    inflight.jsonl   a line as each attempt starts (with the outputs it may leave half-written)
                     and one as it ends; a run killed with `kill -9` cannot clean up after its
                     attempts, so the next run removes what the unfinished ones created before
                     it scans for finished work
    run.lock         held while a run, or any task it started, is alive (see `local.lock`)

Skipping finished work does not depend on this folder: a re-run skips tasks whose outputs
exist, wherever it is started from. Deleting the folder only forgets history.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from gpubatch.api.result import Outcome, TaskResult
from gpubatch.api.status import GPUBatchStatus
from gpubatch.local.errors import LocalError

STATE_ROOT: Final = ".gpubatch"
STATUS_FILE: Final = "status.json"
ATTEMPTS_FILE: Final = "attempts.jsonl"
INFLIGHT_FILE: Final = "inflight.jsonl"


class _Record(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, serialize_by_alias=True, extra="ignore"
    )


class AttemptRecord(_Record):
    """One finished attempt of one task on one slot (wall-clock seconds since the epoch)."""

    run: str
    index: int
    attempt: int
    slot: str
    model: str
    start: float
    end: float
    exit_code: int
    result: TaskResult | None = None
    log: str = ""
    stopped: bool = False  # stopped by the run (Ctrl-C, batch failed): not the task's fault

    @property
    def outcome(self) -> str:
        """succeeded, failed, skipped, or stopped; failed when the worker left no result."""
        if self.result is not None and self.result.outcome is not Outcome.FAILED:
            return self.result.outcome.value
        return "stopped" if self.stopped else "failed"


class SlotRecord(_Record):
    name: str
    model: str
    description: str


class LocalState(_Record):
    """The status of a local run, as `status.json` holds it."""

    name: str
    run: str
    updated: datetime
    slots: list[SlotRecord]
    interrupted: bool = False
    status: GPUBatchStatus


def state_dir(name: str, override: str | None = None) -> Path:
    """Where a batch's local records live: `--state-dir`, else `.gpubatch/<name>`."""
    return Path(override) if override else Path(STATE_ROOT) / name


class Journal:
    """Writes one run's records into a batch's state folder.

    The record files stay open for the run and are written once per planner pass (`flush`, no
    fsync): a killed runner loses nothing that was flushed, and a task costs no open, close or
    write of its own. A start record is always flushed before its attempt starts.
    """

    def __init__(self, folder: Path, run: str) -> None:
        self.folder = folder
        self.run = run
        (folder / "logs").mkdir(parents=True, exist_ok=True)
        self._attempts = open(folder / ATTEMPTS_FILE, "a", encoding="utf-8")  # noqa: SIM115
        self._inflight = open(folder / INFLIGHT_FILE, "w", encoding="utf-8")  # noqa: SIM115

    def log_path(self, index: int, attempt: int) -> Path:
        return self.folder / "logs" / f"task-{index}.attempt-{attempt}.{self.run}.log"

    def started(self, index: int, attempt: int, remove_if_unfinished: list[str]) -> None:
        """Before an attempt starts: what to remove if this run dies before it ends."""
        line = {"index": index, "attempt": attempt, "remove": remove_if_unfinished}
        self._inflight.write(json.dumps(line) + "\n")

    def append(self, record: AttemptRecord) -> None:
        self._attempts.write(record.model_dump_json(exclude_none=True) + "\n")
        self._inflight.write(json.dumps({"ended": [record.index, record.attempt]}) + "\n")

    def flush(self) -> None:
        """Hand what was written to the kernel (one write per file): the runner calls it before
        starting the attempts it recorded, and after judging the attempts that ended."""
        self._attempts.flush()
        self._inflight.flush()

    def close(self) -> None:
        self._attempts.close()
        self._inflight.close()

    def save(self, state: LocalState) -> None:
        """Replace status.json atomically, so a reader never sees half a file."""
        data = state.model_dump_json(indent=1, exclude_none=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".status.", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(data)
        os.replace(tmp, self.folder / STATUS_FILE)


def unfinished_leftovers(folder: Path) -> list[str]:
    """What the attempts that a killed earlier run left unfinished may have half-written.

    Read under the state lock, before this run's Journal truncates the file. A torn last line
    (the runner died writing it) is ignored.
    """
    pending: dict[tuple[int, int], list[str]] = {}
    try:
        with open(folder / INFLIGHT_FILE, encoding="utf-8") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if "ended" in entry:
                    pending.pop((entry["ended"][0], entry["ended"][1]), None)
                else:
                    pending[(entry["index"], entry["attempt"])] = list(entry["remove"])
    except FileNotFoundError:
        return []
    return [path for paths in pending.values() for path in paths]


def load_state(folder: Path) -> LocalState:
    """The last saved status of a local run; LocalError (environment) when there is none."""
    path = folder / STATUS_FILE
    try:
        return LocalState.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LocalError(
            f"no local run recorded in {folder}/ (run the batch with `gpubatch run FILE` from "
            "this directory, or point --state-dir at its folder)",
            environment=True,
        ) from None
    except (OSError, ValidationError, ValueError) as err:
        raise LocalError(f"cannot read {path}: {err}", environment=True) from None


def read_attempts(folder: Path, run: str | None = None) -> list[AttemptRecord]:
    """The attempt records (of one run when `run` is given), in the order they finished.

    A torn last line (the run was killed while writing it) is ignored.
    """
    records: list[AttemptRecord] = []
    try:
        with open(folder / ATTEMPTS_FILE, encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = AttemptRecord.model_validate_json(line)
                except ValidationError:
                    continue
                if run is None or record.run == run:
                    records.append(record)
    except FileNotFoundError:
        return []
    return records
