"""The outbox sweeper on the suite's real Redis, one sweep at a time with
the clock it is given: its lock, its suspects, its cursor, and what it never
resends (a row Redis holds, a live worker's RUNNING row, a finished row)."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from tasks.models import TaskRecord, TaskStatus
from tasks.queue import keys
from tasks.queue.backend import queue_for
from tasks.queue.envelope import Envelope
from tasks.tasks import add
from tasks.worker.sweeper import sweep

pytestmark = pytest.mark.django_db

QUEUE = "task:prodcons:queue"
GRACE, LOCK = 10, 1.0
T0 = timezone.now().replace(microsecond=0) - timedelta(hours=1)
NOW = T0 + timedelta(seconds=GRACE + 60)


@pytest.fixture
def queue(redis_client):
    return queue_for("default")


def row(task_id, status=TaskStatus.READY, at=T0, **fields):
    return TaskRecord.objects.create(id=task_id, task_path=add.module_path, queue="default", status=status, enqueued_at=at, **fields)


def in_redis(queue, *ids):
    queue.push([Envelope(id=i, task=add.module_path, queue="default", args=[1, 1]) for i in ids])


def queued_ids(redis_client):
    return sorted(Envelope(**json.loads(raw)).id for raw in redis_client.lrange(QUEUE, 0, -1))


def run(queue, redis_client, now=NOW, **kwargs):
    redis_client.delete(keys.sweep_lock(QUEUE))  # as if the previous sweep's lock had lapsed
    return sweep(queue, GRACE, LOCK, now=now, **kwargs)


def test_resends_only_open_rows_redis_lost(queue, redis_client):
    row("lost"), row("held"), row("finished", TaskStatus.SUCCESSFUL)
    row("young", at=NOW - timedelta(seconds=GRACE / 2))
    in_redis(queue, "held")
    assert run(queue, redis_client) == 1
    assert queued_ids(redis_client) == ["held", "lost"]
    assert run(queue, redis_client) == 0, "now Redis holds it"


def test_the_resent_envelope_counts_the_next_attempt(queue, redis_client):
    row("lost", args=[2, 3], attempts=2)
    run(queue, redis_client)
    [raw] = redis_client.lrange(QUEUE, 0, -1)
    envelope = Envelope(**json.loads(raw))
    assert (envelope.args, envelope.attempt) == ([2, 3], 3)


def test_one_sweeper_at_a_time(queue, redis_client):
    row("lost")
    assert queue.try_sweep_lock(LOCK)
    assert sweep(queue, GRACE, LOCK, now=NOW) == 0, "locked: nothing swept"
    assert redis_client.llen(QUEUE) == 0
    assert 0 < redis_client.pttl(keys.sweep_lock(QUEUE)) <= LOCK * 1000, "the lock lapses by itself"


def test_a_live_workers_running_row_is_never_resent(queue, redis_client):
    row("running", TaskStatus.RUNNING, worker="alive", attempts=1)
    row("orphan", TaskStatus.RUNNING, worker="gone", attempts=1)
    queue.register("alive", 3600)
    assert run(queue, redis_client) == 1
    assert queued_ids(redis_client) == ["orphan"]


def test_suspects_wait_for_confirmation_before_a_resend(queue, redis_client):
    row("lost")
    confirm = 5.0
    assert run(queue, redis_client, confirm_seconds=confirm) == 0
    suspects = queue.sweep_suspects()
    assert suspects == {"lost": NOW.timestamp()}
    assert redis_client.pttl(keys.sweep_suspects(QUEUE)) > 0, "kept only for a while"
    assert run(queue, redis_client, now=NOW + timedelta(seconds=confirm / 2), confirm_seconds=confirm) == 0
    assert run(queue, redis_client, now=NOW + timedelta(seconds=confirm), confirm_seconds=confirm) == 1
    assert queue.sweep_suspects() == {}, "a confirmed suspect is forgotten"


def test_a_suspect_found_again_in_redis_is_forgotten(queue, redis_client):
    row("lost"), row("other-lost")
    run(queue, redis_client, confirm_seconds=5.0)
    assert set(queue.sweep_suspects()) == {"lost", "other-lost"}
    in_redis(queue, "lost")
    run(queue, redis_client, now=NOW + timedelta(seconds=1), confirm_seconds=5.0)
    assert set(queue.sweep_suspects()) == {"other-lost"}


def test_the_cursor_goes_on_from_the_last_page_and_wraps(queue, redis_client):
    for i in range(5):
        row(f"r{i}", at=T0 + timedelta(seconds=i))
    in_redis(queue, *[f"r{i}" for i in range(5)])
    # A zero budget reads one page per sweep.
    run(queue, redis_client, limit=2, budget_seconds=0)
    assert queue.sweep_cursor() == (T0 + timedelta(seconds=1), "r1")
    run(queue, redis_client, limit=2, budget_seconds=0)
    assert queue.sweep_cursor() == (T0 + timedelta(seconds=3), "r3")
    TaskRecord.objects.filter(id="r0").delete()
    redis_client.delete(QUEUE)
    redis_client.delete(keys.task_ids(QUEUE))  # Redis loses everything now
    assert run(queue, redis_client, limit=2, budget_seconds=0) == 1, "the page after the cursor: r4 only"
    assert queue.sweep_cursor() is None, "past the newest row: next time from the oldest"
    assert run(queue, redis_client, limit=2, budget_seconds=0) == 2
    assert queued_ids(redis_client) == ["r1", "r2", "r4"]


def test_a_lost_cursor_starts_from_the_oldest(queue, redis_client):
    redis_client.set(keys.sweep_cursor(QUEUE), "not json")
    assert queue.sweep_cursor() is None
    row("lost")
    assert run(queue, redis_client) == 1


def test_a_row_too_large_to_send_ends_dead(queue, redis_client, settings):
    settings.MQ_MAX_MESSAGE_BYTES = 200
    row("big", args=["x" * 300])
    assert run(queue, redis_client) == 0
    big = TaskRecord.objects.get(id="big")
    assert big.status == TaskStatus.DEAD and big.error.startswith("oversized: ")
    assert redis_client.llen(QUEUE) == 0
