"""listen_queue --concurrency N against misbehaving tasks and operators,
with real worker processes: a sub-task's SystemExit, a swallowed or
unreachable time limit, a second signal close behind the first, a cancel of
a task waiting in the reserve. The first five failed before the fixes of
tasks/worker/aio.py, pool.py and loop._shutdown that they name."""

import signal
import subprocess
import time

import pytest

from tasks.models import TaskRecord, TaskStatus
from tests.faults.fault_tasks import (
    async_blocks_loop,
    async_ignores_cancel,
    async_stops_loop,
    async_subtask_raises,
    slow_append,
    thread_ignores_limit,
)
from tests.fixture_tasks import async_nap, async_nap_and_note, async_sleeps_in_a_thread
from tests.processes import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]


def lines(path):
    return path.read_text().split() if path.exists() else []


def rows(ids):
    return {row.id: row for row in TaskRecord.objects.filter(id__in=ids)}


def exit_within(worker, seconds):
    """The worker's exit code if it exits within ``seconds``, else None."""
    try:
        return worker.process.wait(seconds)
    except subprocess.TimeoutExpired:
        return None


@pytest.mark.parametrize("kind", ["exit", "interrupt", "generator"])
def test_async_subtask_base_exception_does_not_kill_the_event_loop(start_worker, tmp_path, kind):
    """SystemExit / KeyboardInterrupt / GeneratorExit in a sub-task of an
    async def task (asyncio.gather, wait_for, create_task) is that task's
    failure; the worker's event loop must go on running the other async
    tasks, and a SIGTERM must still end the worker with 0. (asyncio throws a
    sub-task's GeneratorExit into the awaiting task's outermost coroutine:
    the task's verdict was dropped, it went back READY uncounted, and ran
    again in every worker's life.)"""
    path = tmp_path / "runs"
    naps = tmp_path / "naps"
    bad = async_subtask_raises.enqueue(str(path), kind).id
    worker = start_worker("loopdeath", "--concurrency", "4", settings={"MQ_MAX_ATTEMPTS": 1})
    fine = []
    try:
        # Before the fix the loop died with it: the row stayed RUNNING.
        wait_for(lambda: rows([bad])[bad].status == TaskStatus.FAILED, timeout=15, message="the bad task FAILED")
        fine = [async_nap.enqueue(str(naps), str(i), 0.05).id for i in range(5)]
        wait_for(
            lambda: all(r.status == TaskStatus.SUCCESSFUL for r in rows(fine).values()),
            timeout=15,
            message="the five naps after it SUCCESSFUL: the loop goes on",
        )
    finally:
        statuses = {k: (v.status, v.attempts) for k, v in rows([bad, *fine]).items()}
        worker.process.send_signal(signal.SIGTERM)
        code = exit_within(worker, 10)
        print("statuses:", statuses, "exit:", code)
    assert code == 0, f"warm shutdown did not end the worker (exit {code}); statuses {statuses}"
    assert statuses[bad] == (TaskStatus.FAILED, 1) and lines(path).count("started") == 1


def test_an_async_task_that_stops_the_loop_does_not_stop_the_worker_s_loop(start_worker, tmp_path):
    """loop.stop() from a task: the loop ended as if the worker had stopped
    it, every async task stayed RUNNING and a warm SIGTERM hung."""
    path, naps = tmp_path / "runs", tmp_path / "naps"
    bad = async_stops_loop.enqueue(str(path)).id
    worker = start_worker("loopstop", "--concurrency", "4")
    fine = []
    try:
        wait_for(lambda: rows([bad])[bad].status == TaskStatus.SUCCESSFUL, timeout=15, message="the task that stopped the loop ended")
        fine = [async_nap.enqueue(str(naps), str(i), 0.05).id for i in range(5)]
        wait_for(lambda: all(r.status == TaskStatus.SUCCESSFUL for r in rows(fine).values()), timeout=15, message="the naps after it")
    finally:
        worker.process.send_signal(signal.SIGTERM)
        code = exit_within(worker, 10)
    assert code == 0
    assert lines(path) == ["started", "ended"]


@pytest.mark.parametrize("gap", [0.05, 1.5])
def test_a_second_sigterm_right_after_the_first_exits_at_once(start_worker, tmp_path, gap):
    """The second signal leaves at once (the tasks come back through lease
    recovery), wherever the main thread is when it lands."""
    path = tmp_path / "runs"
    ids = [slow_append.enqueue(str(path), str(i), 30).id for i in range(4)]
    worker = start_worker("twice", "--concurrency", "4")
    wait_for(lambda: len(lines(path)) == 4, message="four slow tasks running")
    time.sleep(0.3)
    started = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    time.sleep(gap)
    worker.process.send_signal(signal.SIGTERM)
    code = exit_within(worker, 8)
    waited = time.monotonic() - started
    print("exit", code, "after", waited)
    assert code == 128 + signal.SIGTERM, f"after two SIGTERMs the worker still ran (exit {code} after {waited:.1f}s)"
    assert {r.status for r in rows(ids).values()} == {TaskStatus.RUNNING}


def test_a_thread_that_ignores_its_limit_is_given_up_and_sigterm_exits(start_worker, tmp_path):
    """Control: the thread twin is abandoned at limit + 2 s, recorded as
    timed out, and a SIGTERM then ends the worker with 0."""
    path = tmp_path / "runs"
    options = {"MQ_MAX_ATTEMPTS": 1, "MQ_TASK_OPTIONS": {"tests.faults.fault_tasks.thread_ignores_limit": {"time_limit": 1}}}
    stubborn = thread_ignores_limit.enqueue(str(path), 3600).id
    worker = start_worker("thread-stubborn", "--concurrency", "2", settings=options)
    wait_for(lambda: rows([stubborn])[stubborn].status == TaskStatus.FAILED, timeout=15, message="the stubborn thread task recorded as timed out")
    assert "TaskTimeLimitExceeded" in rows([stubborn])[stubborn].error
    worker.process.send_signal(signal.SIGTERM)
    assert exit_within(worker, 10) == 0


def test_an_async_task_that_ignores_its_cancel_is_given_up_and_sigterm_exits(start_worker, tmp_path):
    """The async twin: past its limit it swallows the cancellation and awaits
    on. Its slot must free as the thread's does, and a SIGTERM must end the
    worker (the thread twin above gets both)."""
    path = tmp_path / "runs"
    options = {"MQ_MAX_ATTEMPTS": 1, "MQ_TASK_OPTIONS": {"tests.faults.fault_tasks.async_ignores_cancel": {"time_limit": 1}}}
    stubborn = async_ignores_cancel.enqueue(str(path), 3600).id
    worker = start_worker("async-stubborn", "--concurrency", "2", settings=options)
    wait_for(lambda: "cancel-ignored" in lines(path), timeout=10, message="the limit fired and was swallowed")
    try:
        wait_for(lambda: rows([stubborn])[stubborn].status == TaskStatus.FAILED, timeout=10, message="the stubborn async task recorded as timed out")
    finally:
        status = rows([stubborn])[stubborn].status
        worker.process.send_signal(signal.SIGTERM)
        code = exit_within(worker, 10)
        print("status", status, "exit", code)
    assert code == 0, f"warm shutdown hung on the async task (exit {code})"


def test_an_async_task_blocking_the_loop_past_its_limit(start_worker, tmp_path):
    """What happens to a blocker (time.sleep 4 s in async def, limit 1 s) and
    an innocent async task of 0.1 s (limit 2 s) started beside it."""
    path = tmp_path / "runs"
    naps = tmp_path / "naps"
    options = {
        "MQ_MAX_ATTEMPTS": 1,
        "MQ_TASK_OPTIONS": {
            "tests.faults.fault_tasks.async_blocks_loop": {"time_limit": 1},
            "tests.fixture_tasks.async_nap": {"time_limit": 2},
        },
    }
    innocent = async_nap.enqueue(str(naps), "innocent", 0.1).id
    blocker = async_blocks_loop.enqueue(str(path), 4).id
    worker = start_worker("blocker", "--concurrency", "4", settings=options)
    wait_for(lambda: "ended" in lines(path), timeout=15, message="the blocker ended")
    wait_for(lambda: all(r.finished_at for r in rows([innocent, blocker]).values()), timeout=10, message="both recorded")
    found = rows([innocent, blocker])
    worker.process.send_signal(signal.SIGTERM)
    assert exit_within(worker, 10) == 0
    report = {name: (found[i].status, (found[i].error or "").splitlines()[:1]) for name, i in (("innocent", innocent), ("blocker", blocker))}
    print("report", report)
    assert found[innocent].status == TaskStatus.SUCCESSFUL, report
    assert found[blocker].status == TaskStatus.FAILED, report


def test_limits_firing_as_tasks_finish_never_hit_the_worker(start_worker, tmp_path):
    """Thread tasks that end right at their 1 s limit: each is recorded once,
    SUCCESSFUL or timed out, and no exception lands in the worker's code."""
    from tests.fixture_tasks import nap_and_note

    path = tmp_path / "runs"
    options = {"MQ_MAX_ATTEMPTS": 1, "MQ_TASK_OPTIONS": {"tests.fixture_tasks.nap_and_note": {"time_limit": 1}}}
    ids = [nap_and_note.enqueue(str(path), str(i), 0.97 + (i % 7) * 0.01).id for i in range(48)]
    worker = start_worker("edge", "--concurrency", "8", settings=options)
    wait_for(lambda: all(r.finished_at for r in rows(ids).values()), timeout=40, message="every task recorded")
    worker.process.send_signal(signal.SIGTERM)
    assert exit_within(worker, 10) == 0
    log = worker.log()
    found = rows(ids)
    kinds = {(r.status, (r.error or "").splitlines()[0] if r.error else "") for r in found.values()}
    print("kinds", kinds, "timeouts", sum(r.status == TaskStatus.FAILED for r in found.values()))
    assert kinds <= {(TaskStatus.SUCCESSFUL, ""), (TaskStatus.FAILED, "tasks.worker.timelimit.TaskTimeLimitExceeded")}
    assert "slot_error" not in log and "Traceback" not in log
    assert {r.attempts for r in found.values()} == {1}


def test_async_base_exceptions_raised_directly_are_failures(start_worker, tmp_path):
    from tests.faults.fault_tasks import async_raises_base

    naps = tmp_path / "naps"
    bad = [async_raises_base.enqueue(kind).id for kind in ("exit", "interrupt", "generator_exit", "other")]
    fine = [async_nap.enqueue(str(naps), str(i), 0.05).id for i in range(5)]
    worker = start_worker("async-base", "--concurrency", "4", settings={"MQ_MAX_ATTEMPTS": 1})
    wait_for(lambda: all(r.finished_at for r in rows(bad + fine).values()), timeout=15, message="all recorded")
    worker.process.send_signal(signal.SIGTERM)
    assert exit_within(worker, 10) == 0
    found = rows(bad + fine)
    assert {found[i].status for i in bad} == {TaskStatus.FAILED}
    assert {found[i].status for i in fine} == {TaskStatus.SUCCESSFUL}


def test_a_reserve_item_cancelled_before_it_starts_never_runs(start_worker, tmp_path):
    """README: a task a worker took but has not started yet is skipped when
    cancelled. With slots, a claimed item waiting in the reserve behind slow
    tasks is such a task: its cancel must keep it from running."""
    from tasks.queue.backend import cancel
    from tests.fixture_tasks import nap_and_note

    fast, slow, marks = tmp_path / "fast", tmp_path / "slow", tmp_path / "marks"
    worker = start_worker("reserve-cancel", "--concurrency", "2")
    for i in range(60):
        nap_and_note.enqueue(str(fast), f"f{i}", 0.005)
    # Behind the fast ones at once: the reserve (2 with tasks of 5 ms) takes them too.
    for i in range(2):
        nap_and_note.enqueue(str(slow), f"s{i}", 8)
    mark_ids = [nap_and_note.enqueue(str(marks), f"m{i}", 0.01).id for i in range(2)]
    wait_for(lambda: len([line for line in lines(slow) if line.startswith("begin:")]) == 2, timeout=20, message="both slow tasks running")
    time.sleep(0.3)
    waiting = [i for i, r in rows(mark_ids).items() if r.status == TaskStatus.RUNNING]
    assert not lines(marks)
    if not waiting:
        pytest.skip("the marks were not taken into the reserve this time")
    for task_id in waiting:
        assert cancel(task_id) == TaskStatus.RUNNING  # claimed: the API sees it running
    wait_for(lambda: all(r.finished_at for r in rows(waiting).values()), timeout=30, message="the cancelled marks recorded")
    found = rows(waiting)
    worker.process.send_signal(signal.SIGTERM)
    exit_within(worker, 10)
    print("marks ran:", lines(marks), {i: r.status for i, r in found.items()})
    assert {r.status for r in found.values()} == {TaskStatus.CANCELLED}
    assert not lines(marks), f"a task cancelled before it started ran anyway: {lines(marks)}"


# --- async def tasks in the serial worker (--concurrency 1) -----------------------------
LIMITED = {"MQ_MAX_ATTEMPTS": 1, "MQ_TASK_OPTIONS": {
    "tests.fixture_tasks.async_nap_and_note": {"time_limit": 1},
    "tests.fixture_tasks.async_sleeps_in_a_thread": {"time_limit": 1},
}}


def test_the_serial_worker_cancels_an_async_task_at_its_limit(start_worker, tmp_path):
    """It ran on asgiref's loop in another thread: recorded timed out, it
    went on to its end, and the worker's exit waited for it."""
    path = tmp_path / "runs"
    hung = async_nap_and_note.enqueue(str(path), "hung", 6).id
    after = async_nap_and_note.enqueue(str(path), "after", 0.01).id
    worker = start_worker("serial-async", settings=LIMITED)
    wait_for(lambda: rows([after])[after].status == TaskStatus.SUCCESSFUL, timeout=20, message="the next task ran")
    row = rows([hung])[hung]
    assert row.status == TaskStatus.FAILED and "TaskTimeLimitExceeded" in row.error
    worker.process.send_signal(signal.SIGTERM)
    assert exit_within(worker, 10) == 0
    assert lines(path) == ["begin:hung", "begin:after", "after"]  # "hung" never ended


def test_a_second_signal_ends_the_serial_worker_inside_an_async_task(start_worker, tmp_path):
    path = tmp_path / "runs"
    async_nap_and_note.enqueue(str(path), "long", 30)
    worker = start_worker("serial-async-forced")
    wait_for(lambda: lines(path) == ["begin:long"], message="the task started")
    worker.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)  # two signals sent back to back may reach the process as one
    worker.process.send_signal(signal.SIGTERM)
    assert exit_within(worker, 10) == 128 + signal.SIGTERM
    assert lines(path) == ["begin:long"]


@pytest.mark.parametrize("concurrency", ["1", "4"])
def test_a_thread_an_async_task_left_past_its_limit_does_not_hold_the_exit(start_worker, tmp_path, concurrency):
    """asyncio.to_thread(time.sleep, 30): the await is given up at the limit,
    the thread sleeps on, and the interpreter joined it at exit."""
    path = tmp_path / "runs"
    stuck = async_sleeps_in_a_thread.enqueue(str(path), 30).id
    worker = start_worker("to-thread", "--concurrency", concurrency, settings=LIMITED)
    wait_for(lambda: rows([stuck])[stuck].status == TaskStatus.FAILED, timeout=20, message="recorded timed out")
    worker.process.send_signal(signal.SIGTERM)
    assert exit_within(worker, 10) == 0
    assert "event=threads_left count=1" in worker.log()
    assert lines(path) == ["started"]
