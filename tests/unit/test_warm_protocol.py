"""The warm protocol's messages, and the Python helper that speaks them for a program."""

from __future__ import annotations

import io
import json
import os
import re

import pytest

from gpubatch.api.taskenv import TaskEnvironment
from gpubatch.api.warm import PROTOCOL_VERSION, WarmProtocolError, WarmReply, WarmTask
from gpubatch.core.partial import partial_paths
from gpubatch.worker import tasks

pytestmark = pytest.mark.unit


def test_a_task_is_one_line_of_json_even_when_its_values_hold_newlines() -> None:
    task = WarmTask(batch="b", index=3, params={"caption": "two\nlines"}, outputs=("/o/3.txt",))
    line = task.encode()

    assert line.endswith("\n") and line.count("\n") == 1
    assert WarmTask.decode(line) == task


def test_a_task_tells_the_program_where_to_write_in_atomic_mode() -> None:
    outputs = ("/out/a.npz",)
    env = TaskEnvironment(
        batch="b",
        task_index=5,
        attempt=1,
        params={"file": "/in/a.tif"},
        outputs=outputs,
        partial_outputs=partial_paths(outputs),
        atomic_outputs=True,
        deadline_seconds=60,
    )
    message = json.loads(WarmTask.from_environment(env).encode())

    assert message == {
        "protocol": PROTOCOL_VERSION,
        "batch": "b",
        "index": 5,
        "attempt": 1,
        "params": {"file": "/in/a.tif"},
        "outputs": ["/out/a.npz"],
        "writeTo": list(partial_paths(outputs)),
        "atomicOutputs": True,
        "deadlineSeconds": 60,
    }


def test_fields_a_program_does_not_know_are_ignored_both_ways() -> None:
    task = WarmTask.decode('{"protocol":1,"batch":"b","index":1,"newField":[1,2]}')
    reply = WarmReply.decode('{"index":1,"ok":true,"gpuSeconds":3.5}')

    assert (task.index, reply.ok) == (1, True)


def test_a_task_of_another_protocol_version_is_refused_with_what_to_do() -> None:
    with pytest.raises(WarmProtocolError, match=r"protocol 2.*install the gpubatch version"):
        WarmTask.decode('{"protocol":2,"batch":"b","index":1}')


def test_replies_are_compact_lines() -> None:
    assert WarmReply.done(4).encode() == '{"index":4,"ok":true}\n'
    assert WarmReply.failed(4, "bad", 3).encode() == (
        '{"index":4,"ok":false,"message":"bad","exitCode":3}\n'
    )
    assert WarmReply.ready_notice().encode() == '{"ready":true}\n'


def test_a_failure_without_an_exit_code_stands_for_code_1() -> None:
    assert WarmReply.decode('{"index":4,"ok":false}').failure_exit_code == 1


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"index": 4}', 'needs both "index" and "ok"'),
        ('{"ok": true}', 'needs both "index" and "ok"'),
        ("done 4", "not a gpubatch warm reply line: 'done 4'"),
        ('{"index": 4, "ok": false, "exitCode": 0}', "exitCode"),
    ],
)
def test_a_malformed_reply_says_what_a_reply_looks_like(line: str, problem: str) -> None:
    with pytest.raises(WarmProtocolError, match=re.escape(problem)):
        WarmReply.decode(line)


# ------------------------------------------------------------------ gpubatch.worker.tasks()
def replies_of(fd: int) -> list[dict[str, object]]:
    with os.fdopen(fd, "rb") as pipe:
        return [json.loads(line) for line in pipe.read().splitlines()]


def test_the_helper_reports_each_task_once_and_goes_on_after_a_failure() -> None:
    read_end, write_end = os.pipe()
    lines = b"".join(
        WarmTask(batch="b", index=i, params={"n": i}).encode().encode() for i in range(4)
    )
    environ = {"GPUBATCH_WARM_RESULT_FD": str(write_end)}
    for task in tasks(environ, io.BytesIO(lines)):
        if task.index == 3:
            task.fail("explicit", exit_code=3)
            continue
        if task.index == 2:
            continue  # not reported: done when the next task is asked for
        with task:
            if task.index == 1:
                raise ValueError("bad input")
    os.close(write_end)

    assert replies_of(read_end) == [
        {"ready": True},
        {"index": 0, "ok": True},
        {"index": 1, "ok": False, "message": "ValueError: bad input"},
        {"index": 2, "ok": True},
        {"index": 3, "ok": False, "message": "explicit", "exitCode": 3},
    ]


def test_a_task_reported_twice_is_a_programming_error() -> None:
    read_end, write_end = os.pipe()
    line = WarmTask(batch="b", index=0).encode().encode()
    environ = {"GPUBATCH_WARM_RESULT_FD": str(write_end)}
    task = next(tasks(environ, io.BytesIO(line)))
    task.done()

    with pytest.raises(RuntimeError, match="task 0 was already reported"):
        task.fail("too late")
    os.close(write_end)
    os.close(read_end)


def test_the_helper_outside_gpubatch_says_how_to_run_the_program() -> None:
    with pytest.raises(RuntimeError, match="run this program under gpubatch"):
        tasks({}, io.BytesIO(b""))
