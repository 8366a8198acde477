"""The outbox sweeper behind a backlog: however many open rows sit ahead of
it, legitimately in Redis, a committed task whose Redis copy was lost is
resent within a few sweeps, and nothing else is. The sweeper is driven
directly, with the clock it is given, as a worker calls it every interval."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from tasks.queue import keys
from tasks.queue.backend import queue_for
from tasks.conf import mq_settings
from tasks.models import TaskRecord, TaskStatus
from tasks.worker.sweeper import sweep
from tasks.tasks import add

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

QUEUE = "task:prodcons:queue"
IDS = keys.task_ids(QUEUE)


def item_id(raw):
    return json.loads(raw)["id"]


def lose(client, task_id):
    """Redis loses one task: its item and its place in the sweeper's index."""
    [item] = [raw for raw in client.lrange(QUEUE, 0, -1) if item_id(raw) == task_id]
    client.lrem(QUEUE, 1, item)
    client.srem(IDS, task_id)


@pytest.fixture
def sweeps(redis_client):
    """sweeps(times, **kwargs): sweep that many times, one interval apart as
    a worker does, on a clock that starts once every row is past the grace
    period and goes on between calls; returns how many tasks were resent."""
    queue = queue_for("default")
    interval = mq_settings.MQ_SWEEP_INTERVAL_SECONDS
    clock = [timezone.now() + timedelta(seconds=mq_settings.MQ_SWEEP_GRACE_SECONDS + 1)]

    def run(times, **kwargs):
        resent = 0
        for _ in range(times):
            redis_client.delete(keys.sweep_lock(QUEUE))  # the previous sweep's lock has expired by now
            grace, confirm = mq_settings.MQ_SWEEP_GRACE_SECONDS, mq_settings.MQ_LEASE_SECONDS
            resent += sweep(queue, grace, interval, now=clock[0], confirm_seconds=confirm, **kwargs)
            clock[0] += timedelta(seconds=interval)
        return resent

    return run


def backlog(count):
    return [r.id for r in add.get_backend().enqueue_many(add, [((i, i), {}) for i in range(count)])]


def test_a_lost_task_behind_1500_open_rows_is_resent(redis_client, sweeps):
    ids = backlog(1500)
    # A live worker's RUNNING row that Redis lost: running now, never resent.
    running = ids[7]
    TaskRecord.objects.filter(id=running).update(status=TaskStatus.RUNNING, worker="alive", attempts=1)
    lose(redis_client, running)
    queue_for("default").register("alive", 3600)
    lost = add.enqueue(1, 2).id
    lose(redis_client, lost)
    assert redis_client.llen(QUEUE) == 1499

    assert sweeps(5) == 1
    assert redis_client.llen(QUEUE) == 1500, "only the lost task was pushed again"
    assert redis_client.sismember(IDS, lost) and not redis_client.sismember(IDS, running)
    assert item_id(redis_client.lindex(QUEUE, 0)) == lost


def test_the_sweeper_walks_any_backlog_in_pages_and_comes_back_round(redis_client, sweeps):
    ids = backlog(1500)
    lost_last = add.enqueue(1, 2).id
    lose(redis_client, lost_last)
    # One page of 100 rows a sweep: sixteen sweeps to the end of the backlog,
    # and then a few more to confirm the loss.
    assert sweeps(15, limit=100, budget_seconds=0) == 0
    assert sweeps(5, limit=100, budget_seconds=0) == 1
    assert redis_client.sismember(IDS, lost_last)
    # The oldest row, lost after the sweeper went past it, is found on its next round.
    lose(redis_client, ids[0])
    assert sweeps(20, limit=100, budget_seconds=0) == 1
    assert redis_client.llen(QUEUE) == 1501 and redis_client.scard(IDS) == 1501


def test_an_oversized_row_is_ended_dead_not_resent(redis_client, settings, sweeps):
    """Enqueued under a larger limit, then lost by Redis: the resend would be
    an item no worker takes, so the sweeper ends the row instead."""
    big = add.enqueue("x" * 2000, "y").id
    small = add.enqueue(1, 2).id
    redis_client.flushall()
    settings.MQ_MAX_MESSAGE_BYTES = 1000
    assert sweeps(4) == 1
    row = TaskRecord.objects.get(id=big)
    assert row.status == TaskStatus.DEAD and "over the limit of 1000" in row.error
    assert TaskRecord.objects.get(id=small).status == TaskStatus.READY
    assert [item_id(item) for item in redis_client.lrange(QUEUE, 0, -1)] == [small]
