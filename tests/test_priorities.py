"""Priorities (DESIGN section 9) through real workers and the suite's Redis:
higher first, first-in first-out among equals, raw LPUSH at 0, and the
priority kept through a retry, a sweeper resend and a graceful stop."""

import json
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from tasks.models import TaskRecord, TaskStatus
from tasks.queue import keys
from tasks.queue.backend import queue_for
from tasks.worker.loop import Worker
from tasks.worker.sweeper import sweep
from tests.fixture_tasks import append_to_file
from tests.processes import run_manage

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = "task:prodcons:queue"


def lane_ids(redis_client, priority):
    return [json.loads(item)["id"] for item in redis_client.lrange(keys.lane(QUEUE, priority), 0, -1)]


@pytest.mark.slow
@pytest.mark.parametrize("max_batch", [1, 1000], ids=["one-at-a-time", "batched"])
def test_a_backlog_runs_highest_priority_first_and_in_order_within_one(redis_url, tmp_path, max_batch):
    log = tmp_path / "runs.txt"
    expected = {10: [], 0: [], -10: []}
    for n in range(100):
        for priority in (0, -10, 10):  # interleaved: plain FIFO would run them mixed
            line = f"{priority}:{n}"
            append_to_file.using(priority=priority).enqueue(str(log), line)
            expected[priority].append(line)
    worker = run_manage(redis_url, "listen_queue", "--burst", settings={"MQ_MAX_BATCH": max_batch}, timeout=120)
    assert worker.returncode == 0, worker.stderr
    assert log.read_text().split() == expected[10] + expected[0] + expected[-10]
    assert set(TaskRecord.objects.values_list("status", flat=True)) == {TaskStatus.SUCCESSFUL}
    assert set(TaskRecord.objects.values_list("priority", flat=True)) == {-10, 0, 10}


@pytest.mark.slow
def test_a_raw_lpush_is_consumed_at_priority_0(redis_url, redis_client, tmp_path):
    log = tmp_path / "runs.txt"
    redis_client.lpush(QUEUE, "5")
    urgent = append_to_file.using(priority=1).enqueue(str(log), "urgent")
    late = append_to_file.using(priority=-1).enqueue(str(log), "late")
    assert run_manage(redis_url, "listen_queue", "--burst", settings={"MQ_MAX_BATCH": 1}).returncode == 0
    raw = TaskRecord.objects.get(task_path="tasks.tasks.cook_dish")
    assert (raw.status, raw.priority) == (TaskStatus.SUCCESSFUL, 0)
    rows = {row.id: row for row in TaskRecord.objects.filter(id__in=[urgent.id, late.id])}
    assert rows[urgent.id].finished_at <= raw.started_at and raw.finished_at <= rows[late.id].started_at


def test_a_retry_goes_back_to_its_lane(redis_client, settings):
    from tasks.tasks import always_fails

    settings.MQ_MAX_ATTEMPTS = 3
    result = always_fails.using(priority=7).enqueue("boom")
    assert Worker(burst=True, max_tasks=1).run() == 1
    row = TaskRecord.objects.get(id=result.id)
    assert row.status == TaskStatus.READY and row.run_after is not None
    queue_for("default").promote_due(now=time.time() + 3600)
    assert lane_ids(redis_client, 7) == [result.id]
    assert json.loads(redis_client.lindex(keys.lane(QUEUE, 7), 0))["attempt"] == 2


def test_a_sweeper_resend_goes_to_the_rows_lane(redis_client):
    result = append_to_file.using(priority=-4).enqueue("/dev/null", "x")
    redis_client.flushdb()  # Redis lost its data; the row is the outbox
    TaskRecord.objects.filter(id=result.id).update(enqueued_at=timezone.now() - timedelta(minutes=5))
    assert sweep(queue_for("default"), grace_seconds=60, lock_seconds=5) == 1
    assert lane_ids(redis_client, -4) == [result.id]


def test_a_stopping_worker_returns_priority_items_to_their_lane(redis_client):
    queue = queue_for("default")
    first = append_to_file.using(priority=2).enqueue("/dev/null", "a")
    second = append_to_file.using(priority=2).enqueue("/dev/null", "b")
    queue.register("w1", 30)
    items, _, _ = queue.take("w1", 1, 10_000)
    assert [json.loads(i)["id"] for i in items] == [first.id]
    queue.release("w1")
    assert [json.loads(i)["id"] for i in queue.take("w2", 10, 10_000)[0]] == [first.id, second.id]


def test_a_schedule_firing_carries_the_tasks_priority(redis_client):
    from tasks.queue.enqueue_once import enqueue_once

    [task_id] = enqueue_once(append_to_file.using(priority=9), [("tick-1", ["/dev/null", "x"], {})])
    assert TaskRecord.objects.get(id=task_id).priority == 9
    assert lane_ids(redis_client, 9) == [task_id]


def test_an_out_of_range_priority_is_refused_before_anything_is_written(redis_client):
    from tasks.compat import InvalidTaskError

    with pytest.raises(InvalidTaskError, match="priority"):
        append_to_file.using(priority=101).enqueue("/dev/null", "x")
    assert TaskRecord.objects.count() == 0
