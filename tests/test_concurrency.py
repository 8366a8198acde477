"""listen_queue --concurrency N as real processes: many tasks at once in one
worker, every guarantee of the serial worker kept (kills, warm shutdown,
time limits), and async def tasks on the worker's event loop."""

import collections
import signal
import time

import pytest

from tasks.models import TaskRecord, TaskStatus
from tasks.queue.backend import cancel
from tests.fixture_tasks import (
    async_fail,
    async_forever,
    async_nap,
    async_timed_nap,
    async_until_cancelled,
    nap_and_note,
    raise_base,
    spin,
    timed_nap,
)
from tests.processes import manage, run_manage, stop, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

QUEUE = "task:prodcons:queue"


def lines(path):
    return collections.Counter(path.read_text().split()) if path.exists() else collections.Counter()


def ends(path):
    return collections.Counter({k: v for k, v in lines(path).items() if not k.startswith("begin:")})


def begins(path):
    return collections.Counter({k: v for k, v in lines(path).items() if k.startswith("begin:")})


def rows(ids):
    return {row.id: row for row in TaskRecord.objects.filter(id__in=ids)}


def burst(redis_url, *args, settings=None, timeout=120):
    """A --burst worker to completion: (wall seconds, CompletedProcess)."""
    started = time.monotonic()
    done = run_manage(redis_url, "listen_queue", "--burst", *args, settings=settings, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return time.monotonic() - started, done


def test_eighty_io_bound_tasks_share_eight_slots(redis_url, redis_client, tmp_path):
    path = tmp_path / "runs"
    ids = [nap_and_note.enqueue(str(path), str(i), 0.2).id for i in range(80)]

    wall, _ = burst(redis_url, "--concurrency", "8", "--worker-id", "c8")

    # Serially this is 16 s of sleeping alone; half of it is a bound a slow
    # machine (and the process's start) keeps well inside.
    assert wall < 8, f"80 x 200 ms at --concurrency 8 took {wall:.1f} s"
    assert ends(path) == collections.Counter({str(i): 1 for i in range(80)})
    found = rows(ids)
    assert {(r.status, r.attempts, r.worker) for r in found.values()} == {(TaskStatus.SUCCESSFUL, 1, "c8")}
    assert len(found) == 80 and redis_client.llen(QUEUE) == 0


def spans(path):
    """{line: (start, end)} of timed_nap's lines; a line written twice fails."""
    found = {}
    for text in path.read_text().splitlines():
        line, start, end = text.split()
        assert line not in found, f"task {line} ran twice"
        found[line] = (float(start), float(end))
    return found


def most_at_once(found):
    # An end sorts before a start at the same instant: back to back is not at once.
    events = sorted([(start, 1) for start, _ in found.values()] + [(end, -1) for _, end in found.values()])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


def test_the_reserve_never_runs_more_than_n_tasks_at_once(redis_url, redis_client, tmp_path):
    # Fast tasks, so the pool hands out more than its slots (the reserve),
    # threads and async def mixed: the two kinds share the N slots.
    path = tmp_path / "spans"
    ids = [(timed_nap if i % 2 else async_timed_nap).enqueue(str(path), str(i), 0.02).id for i in range(160)]

    burst(redis_url, "--concurrency", "4", "--worker-id", "c4")

    found = spans(path)
    assert set(found) == {str(i) for i in range(160)}
    assert most_at_once(found) == 4
    assert {(r.status, r.attempts) for r in rows(ids).values()} == {(TaskStatus.SUCCESSFUL, 1)}
    assert redis_client.llen(QUEUE) == 0


def test_warm_shutdown_gives_back_what_waited_in_the_reserve(redis_url, redis_client, tmp_path):
    path = tmp_path / "spans"
    ids = [timed_nap.enqueue(str(path), str(i), 0.02).id for i in range(400)]
    worker = manage(redis_url, "listen_queue", "--concurrency", "4", "--worker-id", "reserve")
    wait_for(lambda: path.exists() and len(path.read_text().splitlines()) >= 60, message="sixty tasks done")
    assert stop(worker, signal.SIGTERM) == 0

    ran = spans(path)  # each at most once
    found = rows(ids)
    for i, task_id in enumerate(ids):
        row = found[task_id]
        if str(i) in ran:
            assert (row.status, row.attempts) == (TaskStatus.SUCCESSFUL, 1), i
        else:  # never started: unclaimed, its attempt not counted
            assert (row.status, row.attempts) == (TaskStatus.READY, 0), i
    assert redis_client.llen(QUEUE) == 400 - len(ran)
    assert not list(redis_client.scan_iter(match="{task:prodcons:queue}:processing:*"))


def test_a_task_cancelled_while_its_thread_waits_for_a_slot_never_starts(redis_url, tmp_path):
    """Two async def tasks hold both slots; two plain tasks taken into the
    reserve are each held by a thread blocked on the slots, where a cancel
    check that looked only at the threads' queue missed them: they ran, and
    were recorded CANCELLED."""
    marks, slow, log = tmp_path / "marks", tmp_path / "slow", tmp_path / "worker.log"
    # A batch target of 2 s keeps a reserve while the slow tasks run.
    worker = manage(
        redis_url, "listen_queue", "--concurrency", "2", "--worker-id", "held",
        settings={"MQ_BATCH_TARGET_SECONDS": 2.0}, log_path=log,
    )
    try:
        warm = [nap_and_note.enqueue(str(tmp_path / "warm"), str(i), 0.005).id for i in range(10)]
        wait_for(lambda: all(row.finished_at for row in rows(warm).values()), message="the warm-up done (a recent run time)")
        holders = [async_until_cancelled.enqueue(str(slow), 60).id for _ in range(2)]
        wait_for(lambda: lines(slow)["started"] == 2, message="both slots held")
        held = [nap_and_note.enqueue(str(marks), f"m{i}", 0.01).id for i in range(2)]
        wait_for(lambda: {row.status for row in rows(held).values()} == {TaskStatus.RUNNING}, message="both claimed into the reserve")
        for task_id in held:
            assert cancel(task_id) == TaskStatus.RUNNING
        wait_for(lambda: log.read_text().count("event=cancelled_before_start") == 2, message="the worker heard both cancels")
        for task_id in holders:
            cancel(task_id)  # the slots free: the threads get them
        wait_for(lambda: all(row.finished_at for row in rows(held + holders).values()), message="all four recorded")
    finally:
        assert stop(worker, signal.SIGTERM) == 0
    assert {row.status for row in rows(held).values()} == {TaskStatus.CANCELLED}
    assert not marks.exists(), f"a task cancelled before it started ran: {marks.read_text()}"
    assert {row.status for row in rows(holders).values()} == {TaskStatus.CANCELLED}


def test_slow_tasks_get_no_reserve(redis_url, redis_client, tmp_path):
    # A worker holds only what it runs when its tasks are slow: the rest stays
    # on the queue for any other worker.
    path = tmp_path / "runs"
    [nap_and_note.enqueue(str(path), str(i), 0.4) for i in range(12)]
    worker = manage(redis_url, "listen_queue", "--concurrency", "2", "--worker-id", "slow")
    processing = "{task:prodcons:queue}:processing:slow"
    try:
        wait_for(lambda: len(ends(path)) >= 2, message="two tasks done")
        held = []
        while len(ends(path)) < 10:
            held.append(redis_client.llen(processing))
            time.sleep(0.01)
    finally:
        assert stop(worker) == 0
    assert max(held) == 2, f"the worker held {max(held)} items with 2 slots"


def test_sigkill_mid_run_loses_nothing(redis_url, redis_client, tmp_path):
    path = tmp_path / "runs"
    ids = [nap_and_note.enqueue(str(path), str(i), 0.3).id for i in range(40)]
    first = manage(redis_url, "listen_queue", "--concurrency", "8", "--worker-id", "doomed")
    try:
        wait_for(lambda: len(begins(path)) >= 12, message="a dozen tasks started")
    finally:
        stop(first, signal.SIGKILL)
    # Another worker takes the killed one's items back once its lease lapses.
    second = manage(redis_url, "listen_queue", "--concurrency", "8", "--worker-id", "heir")
    try:
        wait_for(
            lambda: TaskRecord.objects.filter(id__in=ids, status=TaskStatus.SUCCESSFUL).count() == 40,
            timeout=60,
            message="every task recorded",
        )
    finally:
        assert stop(second) == 0
    assert set(ends(path)) == {str(i) for i in range(40)}  # at least once each
    assert redis_client.llen(QUEUE) == 0
    assert not list(redis_client.scan_iter(match="{task:prodcons:queue}:processing:*"))


def test_warm_shutdown_finishes_every_running_slot(redis_url, redis_client, tmp_path):
    path = tmp_path / "runs"
    ids = [nap_and_note.enqueue(str(path), str(i), 1.5).id for i in range(20)]
    worker = manage(redis_url, "listen_queue", "--concurrency", "8", "--worker-id", "warm")
    wait_for(lambda: len(begins(path)) == 8, message="eight tasks running")
    assert stop(worker, signal.SIGTERM) == 0

    started = {name.partition(":")[2] for name in begins(path)}
    assert len(started) == 8, "a worker took more than its free slots"
    assert ends(path) == collections.Counter({name: 1 for name in started})
    found = rows(ids)
    done = {found[ids[int(i)]].status for i in started}
    assert done == {TaskStatus.SUCCESSFUL}
    untouched = [task_id for i, task_id in enumerate(ids) if str(i) not in started]
    assert {found[task_id].status for task_id in untouched} == {TaskStatus.READY}
    assert redis_client.llen(QUEUE) == 12
    assert not list(redis_client.scan_iter(match="{task:prodcons:queue}:processing:*"))


def test_a_thread_spinning_in_python_is_stopped_while_the_others_work(redis_url, tmp_path):
    path = tmp_path / "runs"
    options = {"MQ_TASK_OPTIONS": {"tests.fixture_tasks.spin": {"time_limit": 3, "max_attempts": 1}}}
    spinner = spin.enqueue(str(path), "spinner").id
    naps = [nap_and_note.enqueue(str(path), str(i), 0.2).id for i in range(28)]

    _, done = burst(redis_url, "--concurrency", "8", settings=options)

    row = TaskRecord.objects.get(id=spinner)
    assert row.status == TaskStatus.FAILED
    assert "TaskTimeLimitExceeded" in row.error
    found = rows(naps)
    assert {r.status for r in found.values()} == {TaskStatus.SUCCESSFUL}
    # 28 x 200 ms over seven free slots is under a second: the others did not
    # wait for the spinning one (its limit is three).
    assert max(r.finished_at for r in found.values()) < row.finished_at
    assert "event=time_limit" in done.stderr


def test_base_exceptions_from_tasks_in_threads_are_failures(redis_url, tmp_path):
    path = tmp_path / "runs"
    options = {"MQ_MAX_ATTEMPTS": 1}
    exits = raise_base.enqueue("exit").id
    interrupts = raise_base.enqueue("interrupt").id
    after = [nap_and_note.enqueue(str(path), str(i), 0.01).id for i in range(10)]

    burst(redis_url, "--concurrency", "4", settings=options)

    found = rows([exits, interrupts, *after])
    assert found[exits].status == TaskStatus.FAILED and "SystemExit" in found[exits].error
    assert found[interrupts].status == TaskStatus.FAILED and "KeyboardInterrupt" in found[interrupts].error
    assert {found[i].status for i in after} == {TaskStatus.SUCCESSFUL}


def test_two_hundred_async_tasks_at_once(redis_url, tmp_path):
    path = tmp_path / "runs"
    ids = [async_nap.enqueue(str(path), str(i), 0.1).id for i in range(200)]

    wall, _ = burst(redis_url, "--concurrency", "100")

    # 20 s serially; well under 3 s when they overlap, and 10 s is a bound
    # a loaded machine keeps.
    assert wall < 10, f"200 async tasks of 100 ms at --concurrency 100 took {wall:.1f} s"
    assert ends(path) == collections.Counter({str(i): 1 for i in range(200)})
    assert {r.status for r in rows(ids).values()} == {TaskStatus.SUCCESSFUL}
    assert {r.result for r in rows(ids[:3]).values()} == {"0", "1", "2"}


def test_async_failures_and_time_limits(redis_url, tmp_path):
    path = tmp_path / "runs"
    options = {"MQ_MAX_ATTEMPTS": 1, "MQ_TASK_OPTIONS": {"tests.fixture_tasks.async_forever": {"time_limit": 1}}}
    failing = async_fail.enqueue("no luck").id
    forever = async_forever.enqueue().id
    fine = [async_nap.enqueue(str(path), str(i), 0.05).id for i in range(5)]

    burst(redis_url, "--concurrency", "4", settings=options)

    found = rows([failing, forever, *fine])
    assert found[failing].status == TaskStatus.FAILED and "ValueError" in found[failing].error
    assert found[forever].status == TaskStatus.FAILED and "TaskTimeLimitExceeded" in found[forever].error
    assert {found[i].status for i in fine} == {TaskStatus.SUCCESSFUL}


@pytest.mark.parametrize("value", ["0", "-3"])
def test_concurrency_below_one_is_a_clear_error(redis_url, value):
    done = run_manage(redis_url, "listen_queue", "--concurrency", value)
    assert done.returncode != 0
    assert "--concurrency must be at least 1" in done.stderr and "Traceback" not in done.stderr


def test_busy_slots_in_metrics(redis_url, client, tmp_path):
    from tests.test_metrics import scrape, value

    path = tmp_path / "runs"
    for i in range(4):
        nap_and_note.enqueue(str(path), str(i), 4)
    worker = manage(redis_url, "listen_queue", "--concurrency", "6", "--worker-id", "gauge")
    try:
        busy = ("mqsite_worker_busy_slots", frozenset({("worker", "gauge")}))
        samples = wait_for(lambda: (s := scrape(client)).get(busy) == 4 and s, timeout=30, message="four busy slots")
        assert value(samples, "mqsite_worker_slots", worker="gauge") == 6
    finally:
        assert stop(worker) == 0


def test_the_readme_async_example_runs_as_pasted(tmp_path, monkeypatch):
    import re
    import sys

    import django

    from tasks.worker.loop import Worker
    from tests.test_readme import README

    example = next(block for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if "async def" in block)
    if django.VERSION >= (6,):
        example = example.replace("from django_tasks import", "from django.tasks import")
    package = tmp_path / "readme_async"
    package.mkdir()
    (package / "__init__.py").touch()
    (package / "tasks.py").write_text(example)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        from readme_async.tasks import ping_partner

        ids = [ping_partner.enqueue(f"https://example.com/{i}").id for i in range(20)]
        Worker(burst=True, worker_id="readme-async", concurrency=100).run()
    finally:
        for name in ("readme_async", "readme_async.tasks"):
            sys.modules.pop(name, None)
    found = rows(ids)
    assert {r.status for r in found.values()} == {TaskStatus.SUCCESSFUL}
    assert found[ids[3]].result == "https://example.com/3"


def test_a_thread_stuck_in_a_blocking_call_is_given_up_at_its_limit(redis_url, tmp_path):
    """time.sleep is one C call: no exception reaches the thread until it
    returns. The task is recorded as timed out and the slot goes on."""
    from tests.fixture_tasks import sleep_for

    path = tmp_path / "runs"
    options = {"MQ_TASK_OPTIONS": {"tests.fixture_tasks.sleep_for": {"time_limit": 1, "max_attempts": 1}}}
    stuck = sleep_for.enqueue(3600).id
    after = [nap_and_note.enqueue(str(path), str(i), 0.05).id for i in range(12)]

    _, done = burst(redis_url, "--concurrency", "2", settings=options)

    row = TaskRecord.objects.get(id=stuck)
    assert row.status == TaskStatus.FAILED
    assert "TaskTimeLimitExceeded" in row.error and "abandoned" in row.error
    assert {r.status for r in rows(after).values()} == {TaskStatus.SUCCESSFUL}
    assert "event=thread_abandoned" in done.stderr


def test_jobs_waiting_behind_abandoned_threads_still_run(redis_url, tmp_path):
    """Fast tasks fill the reserve; both threads then get stuck in a call past
    its limit and are abandoned. The jobs that waited for them get new
    threads: nothing else would come to start them once the queue is empty."""
    from tests.fixture_tasks import sleep_for

    path = tmp_path / "runs"
    options = {"MQ_TASK_OPTIONS": {"tests.fixture_tasks.sleep_for": {"time_limit": 1, "max_attempts": 1}}}
    before = [nap_and_note.enqueue(str(path), f"b{i}", 0.01).id for i in range(30)]
    stuck = [sleep_for.enqueue(3600).id for _ in range(2)]
    after = [nap_and_note.enqueue(str(path), f"a{i}", 0.01).id for i in range(2)]

    _, done = burst(redis_url, "--concurrency", "2", settings=options, timeout=60)

    assert {r.status for r in rows(stuck).values()} == {TaskStatus.FAILED}
    assert {r.status for r in rows(before + after).values()} == {TaskStatus.SUCCESSFUL}
    assert done.stderr.count("event=thread_abandoned") == 2


def test_an_async_task_reports_progress_and_hears_a_cancel(redis_url, tmp_path):
    from tasks.queue.backend import cancel
    from tests.fixture_tasks import async_until_cancelled

    started = tmp_path / "started"
    result = async_until_cancelled.enqueue(str(started), 60.0)
    worker = manage(redis_url, "listen_queue", "--concurrency", "4", "--worker-id", "aio")
    try:
        wait_for(lambda: (TaskRecord.objects.get(id=result.id).progress or {}).get("done", 0) >= 2,
                 message="progress from the async task")
        assert cancel(result.id) == TaskStatus.RUNNING
        # It would await for 60 s if its context could not read the request.
        wait_for(lambda: TaskRecord.objects.get(id=result.id).status == TaskStatus.CANCELLED, timeout=15,
                 message="the async task to stop")
    finally:
        assert stop(worker) == 0
    row = TaskRecord.objects.get(id=result.id)
    assert row.result == "stopped" and row.progress["text"].startswith("turn ")
    assert "SynchronousOnlyOperation" not in (row.error or "")
