"""The warm protocol's messages: what a program reads and writes, line by line."""

from __future__ import annotations

import json
import re

import pytest

from gpubatch.api.taskenv import TaskEnvironment
from gpubatch.api.warm import PROTOCOL_VERSION, WarmProtocolError, WarmReply, WarmTask
from gpubatch.core.partial import partial_paths

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
