"""Scenario 7 (the hang; the crash loop is in tests/test_worker_processes.py)
and retries: a task hanging past its time limit is stopped, retried, then
failed, and the worker goes on; retries back off exponentially with jitter
and keep every attempt's error."""

import random
from datetime import datetime

import pytest

from tasks import keys
from tasks.models import TaskRecord, TaskStatus
from tasks.tasks import always_fails, append_to_file, sleep_for
from tasks.worker import Worker, retry_delay
from tests.faults.conftest import QUEUE, all_final, executions
from tests.faults.fault_tasks import stubborn_sleep
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
