"""What the command shows: tables, the progress bar, status views, reports, and `watch`'s loop.

Statuses are built with the same helpers the operator uses (`core.gpustats.record_result`), so
the tables are checked against statistics as they really appear in a status.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest

from gpubatch.api.status import (
    Condition,
    GPUBatchStatus,
    TaskCounts,
    TaskFailure,
)
from gpubatch.cli.errors import CliError, Exit
from gpubatch.cli.progress import ProgressDisplay, RateTracker, progress_line
from gpubatch.cli.statusview import (
    all_succeeded,
    batch_state,
    model_rows,
    status_text,
    stuck_note,
    summary_line,
)
from gpubatch.cli.table import format_duration, format_table
from gpubatch.cli.timeline import Bar, pack
from gpubatch.cli.watch import follow
from gpubatch.core.gpustats import record_result

pytestmark = pytest.mark.unit

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def condition(type_: str, value: str = "True", reason: str = "AllTasksFinished") -> Condition:
    return Condition(type=type_, status=value, reason=reason, last_transition_time=T0)


def status_of(
    *, succeeded: int = 0, failed: int = 0, total: int = 10, running: int = 0, **extra: object
) -> GPUBatchStatus:
    counts = TaskCounts(
        total=total,
        succeeded=succeeded,
        failed=failed,
        running=running,
        pending=total - succeeded - failed - running,
    )
    return GPUBatchStatus(counts=counts, progress=counts.progress(), **extra)


def mixed_models() -> list:
    stats: list = []
    for _ in range(20):
        stats = record_result(stats, model="NVIDIA-H100-80GB-HBM3", succeeded=True, seconds=10)
    for _ in range(10):
        stats = record_result(stats, model="Tesla-T4", succeeded=True, seconds=30)
    return record_result(stats, model="Tesla-T4", succeeded=False)


def test_durations_read_naturally_at_every_scale():
    assert [format_duration(s) for s in (0.42, 12.34, 245, 7380, 277200)] == [
        "0.42s",
        "12.3s",
        "4m05s",
        "2h03m",
        "3d05h",
    ]
    assert format_duration(None) == "-"


def test_tables_right_align_numbers_and_left_align_text():
    text = format_table(["model", "tasks"], [["T4", 5], ["H100", 120]])
    assert text.splitlines() == ["model  tasks", "T4         5", "H100     120"]


def test_per_model_rows_give_share_of_work_and_speed_up_against_the_slowest():
    rows = {row[0]: row for row in model_rows(mixed_models())}
    fast, slow = rows["NVIDIA-H100-80GB-HBM3"], rows["Tesla-T4"]
    assert fast[1:3] == [20, 0] and slow[1:3] == [10, 1]
    assert fast[6] == "66.7%" and slow[6] == "33.3%"
    assert fast[7] == "3.00x" and slow[7] == "1.00x"
    assert fast[3] == "10.0s"


def test_batch_state_and_exit_rule_follow_the_conditions_and_counts():
    assert batch_state(None) == "Pending"
    running = status_of(succeeded=3, conditions=[condition("Complete", "False", "Dispatching")])
    assert batch_state(running) == "Running"
    done = status_of(succeeded=10, conditions=[condition("Complete")])
    assert batch_state(done) == "Complete" and all_succeeded(done)
    with_failure = status_of(succeeded=9, failed=1, conditions=[condition("Complete")])
    assert not all_succeeded(with_failure)
    failed = status_of(succeeded=2, conditions=[condition("Failed", reason="TooManyFailedTasks")])
    assert batch_state(failed) == "Failed" and not all_succeeded(failed)


def test_status_text_shows_counts_conditions_failed_tasks_and_last_failures():
    failure = TaskFailure(
        index=7, attempt=2, exit_code=137, reason="Signaled", message="killed", time=T0
    )
    status = status_of(
        succeeded=8,
        failed=1,
        failed_indexes="7",
        recent_failures=[failure],
        conditions=[condition("Complete")],
        start_time=T0,
        completion_time=T0 + timedelta(seconds=100),
    )
    text = status_text("GPUBatch ns/clips", status, now=T0 + timedelta(seconds=160))
    assert "state: Complete" in text
    assert "10 tasks: 8 succeeded, 1 failed, 0 skipped, 0 running, 1 pending in 1m40s" in text
    assert "failed tasks: 7" in text and "Signaled" in text and "137" in text
    assert "AllTasksFinished" in text


def test_summary_line_counts_time_from_first_dispatch():
    status = status_of(succeeded=10, start_time=T0, completion_time=T0 + timedelta(seconds=5))
    assert summary_line(status) == "10 tasks: 10 succeeded, 0 failed, 0 skipped in 5.00s"


def test_rate_counts_only_tasks_finished_while_watching_and_gives_an_eta():
    rate = RateTracker(window=60)
    assert rate.rate() is None and rate.eta(10) is None
    rate.observe(0.0, 0)
    rate.observe(10.0, 20)
    assert rate.rate() == 2.0
    assert rate.eta(30) == 15.0
    assert rate.eta(0) == 0.0


def test_rate_forgets_samples_older_than_its_window():
    rate = RateTracker(window=10)
    for second, done in ((0, 0), (5, 50), (20, 52), (25, 54)):
        rate.observe(float(second), done)
    assert rate.rate() == pytest.approx(4 / 20)  # the burst at the start has left the window


def test_progress_line_shows_bar_counts_rate_and_eta():
    counts = TaskCounts(total=240, succeeded=118, failed=1, skipped=1, running=8, pending=112)
    line = progress_line("demo", counts, 3.2, 37.0)
    assert line.startswith("demo [############............] 120/240  50%")
    assert "118 ok, 1 failed, 1 skipped, 8 running" in line
    assert "3.2 tasks/s" in line and "ETA 37.0s" in line


def test_progress_without_a_terminal_prints_occasional_plain_lines():
    stream = io.StringIO()
    display = ProgressDisplay(stream)
    display.update("a 1/3")
    display.update("a 2/3")  # too soon after the first: not printed
    display.message("task 2 failed")
    display.update("a 3/3", force=True)
    assert stream.getvalue().splitlines() == ["a 1/3", "task 2 failed", "a 3/3"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_redraws_in_place_and_keeps_messages_above_it():
    stream = Terminal()
    display = ProgressDisplay(stream)
    display.update("a 1/3 long line")
    display.message("task 2 failed")
    display.update("a 3/3", force=True)
    display.close()
    text = stream.getvalue()
    assert "\n" not in text.split("task 2 failed")[0]  # the bar was drawn with \r only
    assert "task 2 failed\n\ra 1/3 long line" in text  # message above, bar redrawn below
    assert text.endswith("\ra 3/3" + " " * 10 + "\ra 3/3\n")  # old text blanked out


def test_pack_gives_each_concurrent_attempt_on_a_node_its_own_row():
    bars = [
        Bar("node-a", 0, 0, 10, "succeeded"),
        Bar("node-a", 1, 1, 5, "succeeded"),
        Bar("node-a", 2, 6, 9, "failed"),
        Bar("node-b", 3, 0, 3, "succeeded"),
    ]
    lanes = {b.index: b.lane for b in pack(bars)}
    assert lanes == {0: "node-a #0", 1: "node-a #1", 2: "node-a #1", 3: "node-b #0"}


def test_follow_waits_for_the_operator_to_catch_up_with_a_new_generation():
    stale = {"metadata": {"generation": 2}, "status": "old"}
    current = {"metadata": {"generation": 2}, "status": "new"}
    statuses = {
        "old": status_of(succeeded=10, observed_generation=1, conditions=[condition("Complete")]),
        "new": status_of(succeeded=10, observed_generation=2, conditions=[condition("Complete")]),
    }
    seen = iter([stale, stale, current])
    sleeps: list[float] = []
    final = follow(
        "b",
        lambda: next(seen),
        lambda obj: statuses[obj["status"]],
        ProgressDisplay(io.StringIO(), enabled=False),
        sleep=sleeps.append,
    )
    assert final.observed_generation == 2
    assert len(sleeps) == 2


def test_follow_gives_up_after_its_timeout_with_exit_124():
    running = status_of(succeeded=1, conditions=[condition("Complete", "False", "Dispatching")])
    clock = iter(range(100))
    with pytest.raises(CliError) as caught:
        follow(
            "b",
            lambda: {"metadata": {}},
            lambda _: running,
            ProgressDisplay(io.StringIO(), enabled=False),
            timeout=3,
            clock=lambda: float(next(clock)),
            sleep=lambda _: None,
        )
    assert caught.value.code == Exit.TIMEOUT


def test_follow_reports_a_batch_deleted_while_watching():
    with pytest.raises(CliError, match="no longer exists"):
        follow("b", lambda: None, lambda _: None, ProgressDisplay(io.StringIO(), enabled=False))


def test_a_batch_stuck_on_a_bad_image_reads_as_stuck_with_the_reason_and_fix():
    stuck = Condition(
        type="TasksStuck",
        status="True",
        reason="ImagePullBackOff",
        message="1 task pod stuck before Running; task 0 (pod clips-0-0): ImagePullBackOff; "
        "check the image name and tag",
        last_transition_time=T0,
    )
    status = status_of(conditions=[condition("Complete", "False", "Dispatching"), stuck])
    assert batch_state(status) == "Stuck"
    assert stuck_note(status) == f"stuck (ImagePullBackOff): {stuck.message}"
    text = status_text("GPUBatch ns/clips", status, now=T0)
    assert "ImagePullBackOff" in text and "check the image name and tag" in text


def test_waiting_for_capacity_is_shown_but_the_batch_reads_as_running():
    waiting = condition("TasksStuck", "False", "WaitingForCapacity")
    waiting.message = "2 task pods waiting for capacity (normal queueing); the scheduler says: x"
    status = status_of(conditions=[waiting])
    assert batch_state(status) == "Running"
    assert "waiting (WaitingForCapacity): 2 task pods waiting" in status_text("b", status, now=T0)


def test_follow_says_once_why_tasks_are_stuck():
    stuck = condition("TasksStuck", "True", "ErrImagePull")
    stuck.message = "task 0 (pod b-0-0): ErrImagePull"
    stuck_status = status_of(conditions=[stuck])
    done = status_of(succeeded=10, conditions=[condition("Complete")])
    seen = iter([stuck_status, stuck_status, done])
    out = io.StringIO()
    follow(
        "b",
        lambda: {"metadata": {}},
        lambda _: next(seen),
        ProgressDisplay(out, enabled=False),
        sleep=lambda _: None,
    )
    assert out.getvalue().count("b: stuck (ErrImagePull): task 0 (pod b-0-0)") == 1
