"""The one output scan both executors use (core.outputscan), with the existence check passed in
as plain data: no storage, no files."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from gpubatch.core.indexset import IndexSet
from gpubatch.core.outputscan import scan_outputs
from gpubatch.core.prepare import prepare_batch

pytestmark = pytest.mark.unit


def _batch(outputs: list[str], stop: int = 4, tasks: Any = None) -> Any:
    return prepare_batch(
        {
            "tasks": tasks or {"range": {"param": "n", "start": 0, "stop": stop}},
            "outputRoot": "/out",
            "outputs": outputs,
            "template": {
                "spec": {"containers": [{"name": "t", "image": "x", "command": ["run", "{n}"]}]}
            },
        }
    )


class Existing:
    """The existence check as data: these paths exist; every call is remembered."""

    def __init__(self, *paths: str) -> None:
        self.paths = set(paths)
        self.asked: list[list[str]] = []

    def __call__(self, paths: Iterable[str]) -> set[str]:
        asked = list(paths)
        self.asked.append(asked)
        return self.paths.intersection(asked)


def test_a_task_is_complete_only_when_every_output_exists() -> None:
    existing = Existing("/out/a0", "/out/b0", "/out/a1", "/out/a3", "/out/b3")
    scan = scan_outputs(_batch(["a{n}", "b{n}"]), existing)
    assert list(scan.complete) == [0, 3]
    assert [scan.state(i) for i in range(4)] == ["skip", "run", "run", "skip"]


def test_all_outputs_are_checked_in_one_call_and_final_tasks_are_not_asked_about() -> None:
    existing = Existing("/out/a2")
    scan = scan_outputs(_batch(["a{n}"]), existing, skip=IndexSet([0, 1]))
    assert existing.asked == [["/out/a2", "/out/a3"]]
    assert list(scan.complete) == [2]


def test_a_batch_without_outputs_skips_nothing_and_checks_nothing() -> None:
    existing = Existing()
    scan = scan_outputs(_batch([]), existing)
    assert existing.asked == [] and not scan.complete and not scan.invalid


def test_a_task_whose_output_cannot_be_rendered_is_invalid_alone() -> None:
    batch = _batch(["{n}.txt"], tasks={"items": [{"n": "ok"}, {"n": "/etc/escape"}]})
    scan = scan_outputs(batch, Existing("/out/ok.txt"))
    assert list(scan.invalid) == [1] and "outputRoot" in scan.invalid[1]
    assert list(scan.complete) == [0]


def test_only_the_tasks_asked_about_are_checked() -> None:
    existing = Existing("/out/a3", "/out/a1")
    scan = scan_outputs(_batch(["a{n}"]), existing, indexes=[3, 2])
    assert existing.asked == [["/out/a3", "/out/a2"]]
    assert list(scan.complete) == [3]
