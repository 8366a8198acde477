"""Scenario 7 (the hang; the crash loop is in tests/test_worker_processes.py)
and retries: a task hanging past its time limit is stopped, retried, then
failed, and the worker goes on; retries back off exponentially with jitter
and keep every attempt's error."""

import random
from datetime import datetime

import pytest

from tasks.queue import keys
from tasks.models import TaskRecord, TaskStatus
from tasks.tasks import always_fails
from tasks.worker.outcomes import retry_delay
from tasks.worker.loop import Worker
from tests.faults.conftest import QUEUE, all_final, executions, runs_counted
from tests.faults.fault_tasks import counted, raises_base_exception, stubborn_sleep
from tests.fixture_tasks import append_to_file, sleep_for
from tests.processes import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

HANG_LIMITS = {"time_limit": 1, "max_attempts": 2}


def test_hanging_tasks_are_stopped_retried_then_failed(start_worker, tmp_path):
    runs = tmp_path / "runs.txt"
    hangs = [sleep_for.enqueue(3600).id, stubborn_sleep.enqueue(str(runs), 3600).id]
    good = append_to_file.enqueue(str(runs), "good")
    options = {sleep_for.module_path: HANG_LIMITS, stubborn_sleep.module_path: HANG_LIMITS}
    worker = start_worker("patient", settings={"MQ_TASK_OPTIONS": options})
    wait_for(all_final(hangs, TaskStatus.FAILED), timeout=60, message="both hanging tasks FAILED")
    wait_for(all_final([good.id]), message="the worker went on")
    for row in TaskRecord.objects.filter(id__in=hangs):
        assert row.attempts == 2
        assert [e["attempt"] for e in row.errors] == [1, 2]
        assert all("time limit" in e["traceback"] for e in row.errors)
    assert executions(runs) == {"run": 2, "good": 1}  # the stubborn one ran twice, then no more
    assert worker.alive()


def test_retry_delay_is_exponential_with_jitter(settings):
    settings.MQ_RETRY_BASE_SECONDS = 1.0
    settings.MQ_RETRY_MAX_SECONDS = 300.0
    random.seed(4)
    for attempt in range(1, 15):
        base = min(300.0, 2.0 ** (attempt - 1))
        delays = [retry_delay(attempt) for _ in range(200)]
        assert all(base / 2 <= d <= base for d in delays), attempt
        assert len(set(delays)) == 200  # jitter: no two workers retry in step
        # Spread over the whole random half, not bunched at one end.
        assert min(delays) < base * 0.6 and max(delays) > base * 0.9
    assert 150 <= retry_delay(5000) <= 300  # a "retry for ever" task must not overflow
    random.seed(4)
    first = [retry_delay(3) for _ in range(5)]
    random.seed(4)
    assert [retry_delay(3) for _ in range(5)] == first


def test_a_retry_is_scheduled_with_backoff_and_every_error_is_kept(settings, redis_client):
    """In-process, deterministic: the due time of the retry in the delayed
    set is the failure time plus a delay within [base/2, base]."""
    settings.MQ_RETRY_BASE_SECONDS = 40.0  # nothing becomes due during the test
    settings.MQ_RETRY_MAX_SECONDS = 300.0
    failing = always_fails.enqueue("first")
    assert Worker(worker_id="retrier", max_tasks=1).run() == 1
    row = TaskRecord.objects.get(id=failing.id)
    assert (row.status, row.attempts, len(row.errors)) == (TaskStatus.READY, 1, 1)
    [(item, due)] = redis_client.zrange(keys.delayed(QUEUE), 0, -1, withscores=True)
    failed_at = datetime.fromisoformat(row.errors[0]["at"]).timestamp()
    assert 20.0 <= due - failed_at <= 40.0 + 1.0
    assert b'"attempt":2' in item

    settings.MQ_RETRY_BASE_SECONDS = 0.01  # now let the retries come due at once
    redis_client.zadd(keys.delayed(QUEUE), {item: 0})
    Worker(worker_id="retrier", burst=True).run()
    row.refresh_from_db()
    assert (row.status, row.attempts) == (TaskStatus.FAILED, 3)
    assert [e["attempt"] for e in row.errors] == [1, 2, 3]
    assert all("RuntimeError: first" in e["traceback"] for e in row.errors)


def test_tasks_raising_base_exceptions_fail_and_the_worker_goes_on(redis_client, start_worker):
    """sys.exit(), KeyboardInterrupt, GeneratorExit or any BaseException from
    task code is that task's failure: recorded with its traceback, retried,
    then FAILED; the tasks around it in the batch run once; the worker lives."""
    kinds = {
        "exit": "SystemExit",
        "interrupt": "KeyboardInterrupt",
        "generator_exit": "GeneratorExit",
        "custom": "NotAnException",
    }
    innocent, bad = {}, {}
    for i in range(12):
        innocent[f"innocent-{i}"] = counted.enqueue(f"innocent-{i}").id
        if i % 3 == 2:
            kind = list(kinds)[i // 3]
            bad[kind] = raises_base_exception.enqueue(f"bad-{kind}", kind).id
    options = {raises_base_exception.module_path: {"max_attempts": 2}}
    # A long batch target: after its first task the worker takes the rest at once.
    worker = start_worker("survivor", settings={"MQ_TASK_OPTIONS": options, "MQ_BATCH_TARGET_SECONDS": 30})

    def done():
        return all_final(innocent.values())() and all_final(bad.values(), TaskStatus.FAILED)()

    wait_for(lambda: done() or not worker.alive(), timeout=30, message="every task final")
    assert worker.alive(), "a task's BaseException ended the worker"
    assert done()
    runs = runs_counted(redis_client)
    assert {label: runs[label] for label in innocent} == dict.fromkeys(innocent, 1)
    assert {kind: runs[f"bad-{kind}"] for kind in kinds} == dict.fromkeys(kinds, 2)
    for kind, task_id in bad.items():
        row = TaskRecord.objects.get(id=task_id)
        assert row.attempts == 2 and [e["attempt"] for e in row.errors] == [1, 2]
        assert all(kinds[kind] in e["exception"] and "Traceback" in e["traceback"] for e in row.errors), row.errors
        assert "raises_base_exception" in row.errors[-1]["traceback"]

