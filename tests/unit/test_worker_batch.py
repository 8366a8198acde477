"""The worker one step at a time: fakeredis (with Lua) and an injected clock.

Each test enqueues as a producer does (an outbox row, then the ENQUEUE
script), runs ``Worker.step()`` (the chores due at the clock's time, then
one batch) and checks the Redis keys and the history rows it leaves. The
clock is set years away from the real time, so a due time or a chore that
went by the real clock would show.
"""

import json

import fakeredis
import pytest
from django.utils import timezone

from tasks.conf import mq_settings
from tasks.models import TaskRecord, TaskStatus
from tasks.queue import keys
from tasks.queue.backend import new_task_id
from tasks.queue.envelope import Envelope, now_iso
from tasks.queue.recorder import Recorder
from tasks.queue.reliable import ReliableQueue
from tasks.worker.chores import RECOVER, Chore, Chores
from tasks.worker.loop import Worker

pytestmark = [pytest.mark.no_redis, pytest.mark.django_db(transaction=True)]

START = 2_000_000_000.0  # May 2033


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock(START)


@pytest.fixture
def redis():
    client = fakeredis.FakeRedis()
    yield client
    client.close()


@pytest.fixture
def queue(redis):
    return ReliableQueue(redis, "default", mq_settings.queue_key("default"))


@pytest.fixture
def worker(queue, clock):
    worker = Worker(worker_id="unit", burst=True, queues=[queue], clock=clock)
    worker.begin()
    yield worker
    worker.executor.close()  # the thread that records behind, on PostgreSQL, with its connection


def enqueue(queue, task, *args):
    """As a producer does: the outbox row, then the push."""
    envelope = Envelope(id=new_task_id(), task=task, queue=queue.name, args=list(args), enqueued_at=now_iso())
    Recorder().insert_enqueued([envelope], "default", timezone.now())
    queue.push([envelope])
    return envelope


def in_flight(redis, queue, worker_id="unit"):
    return redis.lrange(keys.processing(queue.key, worker_id), 0, -1)


def indexed(redis, queue):
    """Ids the sweeper's index holds: tasks Redis still has to deliver."""
    return {member.decode() for member in redis.smembers(queue.ids_key)}


def test_success_is_recorded_and_acknowledged(worker, queue, redis):
    envelope = enqueue(queue, "tasks.tasks.add", 2, 3)

    assert worker.step() == 1

    row = TaskRecord.objects.get(id=envelope.id)
    assert (row.status, row.result, row.attempts, row.worker) == (TaskStatus.SUCCESSFUL, 5, 1, "unit")
    assert redis.llen(queue.key) == 0
    assert in_flight(redis, queue) == []
    assert indexed(redis, queue) == set()
    assert queue.stats()["outcome:succeeded"] == 1
    assert (worker.processed, worker.failed) == (1, 0)


def test_failure_with_attempts_left_is_delayed_from_the_injected_clock(worker, queue, redis):
    envelope = enqueue(queue, "tasks.tasks.always_fails", "boom")

    assert worker.step() == 1

    row = TaskRecord.objects.get(id=envelope.id)
    assert (row.status, row.attempts) == (TaskStatus.READY, 1)
    assert [(error["exception"], error["attempt"]) for error in row.errors] == [("builtins.RuntimeError", 1)]
    [(item, due)] = redis.zrange(queue.delayed_key, 0, -1, withscores=True)
    assert json.loads(item)["attempt"] == 2
    # The first retry waits between half the base delay and all of it.
    base = mq_settings.MQ_RETRY_BASE_SECONDS
    assert START + base / 2 <= due <= START + base
    assert in_flight(redis, queue) == []
    assert indexed(redis, queue) == {envelope.id}  # still on its way
    assert queue.dead_letters() == []
    assert (worker.processed, worker.failed) == (1, 0)


def test_failure_past_the_limit_is_dead_lettered_and_failed(worker, queue, redis, settings):
    settings.MQ_MAX_ATTEMPTS = 1
    envelope = enqueue(queue, "tasks.tasks.always_fails", "boom")

    assert worker.step() == 1

    row = TaskRecord.objects.get(id=envelope.id)
    assert row.status == TaskStatus.FAILED and row.finished_at is not None
    assert "RuntimeError: boom" in row.error
    [dead] = queue.dead_letters()
    assert (dead["id"], dead["reason"], dead["worker"]) == (envelope.id, "builtins.RuntimeError", "unit")
    assert redis.zcard(queue.delayed_key) == 0
    assert in_flight(redis, queue) == []
    assert indexed(redis, queue) == set()
    assert queue.stats()["outcome:failed"] == 1
    assert (worker.processed, worker.failed) == (1, 1)


def test_a_task_whose_attempts_never_finished_is_dead(worker, queue, redis, settings):
    settings.MQ_MAX_ATTEMPTS = 1
    envelope = enqueue(queue, "tasks.tasks.add", 1, 1)
    TaskRecord.objects.filter(id=envelope.id).update(attempts=1)  # one attempt lost with its worker

    assert worker.step() == 1

    row = TaskRecord.objects.get(id=envelope.id)
    assert row.status == TaskStatus.DEAD and row.result is None
    assert [error["exception"] for error in row.errors] == ["mqsite.WorkerLost"]
    assert [dead["id"] for dead in queue.dead_letters()] == [envelope.id]
    assert queue.stats()["outcome:dead"] == 1


def test_a_message_for_an_unknown_task_is_dead_and_never_run(worker, queue, redis):
    envelope = Envelope(id=new_task_id(), task="nowhere.unknown", queue="default", enqueued_at=now_iso())
    queue.push([envelope])

    assert worker.step() == 0

    row = TaskRecord.objects.get(id=envelope.id)
    assert (row.status, row.task_path, row.worker) == (TaskStatus.DEAD, "nowhere.unknown", "unit")
    assert "unknown task 'nowhere.unknown'" in row.error
    [dead] = queue.dead_letters()
    assert dead["id"] == envelope.id and dead["reason"].startswith("unknown task")
    assert in_flight(redis, queue) == []
    assert indexed(redis, queue) == set()


def test_the_promote_chore_goes_by_the_injected_clock(worker, queue, redis, clock):
    envelope = Envelope(id=new_task_id(), task="tasks.tasks.add", queue="default", args=[1, 2], enqueued_at=now_iso())
    Recorder().insert_enqueued([envelope], "default", timezone.now())
    queue.schedule(envelope, START + 100)

    assert worker.step() is None  # burst: nothing due within a block
    assert redis.zcard(queue.delayed_key) == 1
    assert TaskRecord.objects.get(id=envelope.id).status == TaskStatus.READY

    clock.now = START + 101
    assert worker.step() == 1

    assert redis.zcard(queue.delayed_key) == 0
    assert TaskRecord.objects.get(id=envelope.id).result == 3


def test_the_recover_chore_takes_back_an_expired_workers_tasks(worker, queue, redis):
    envelope = enqueue(queue, "tasks.tasks.add", 4, 5)
    # Another worker took it and died: its lease expired, its list is left.
    assert queue.take("gone", 1, mq_settings.MQ_MAX_MESSAGE_BYTES)[0] == [envelope.encode().encode()]
    Recorder().claim([envelope.id], "gone")
    queue.register("gone", 10)
    redis.delete(keys.lease(queue.key, "gone"))

    assert worker.step() == 1  # a worker's first step runs every chore

    assert in_flight(redis, queue, "gone") == []
    assert b"gone" not in redis.smembers(queue.workers_key)
    row = TaskRecord.objects.get(id=envelope.id)
    assert (row.status, row.result, row.attempts, row.worker) == (TaskStatus.SUCCESSFUL, 9, 2, "unit")


def test_the_recover_chore_alone_moves_the_list_to_the_recovered_list(worker, queue, redis, clock):
    envelope = enqueue(queue, "tasks.tasks.add", 4, 5)
    queue.take("gone", 1, mq_settings.MQ_MAX_MESSAGE_BYTES)
    queue.register("gone", 10)
    redis.delete(keys.lease(queue.key, "gone"))

    worker.chores[RECOVER].run(clock())

    assert in_flight(redis, queue, "gone") == []
    assert redis.lrange(queue.recovered_key, 0, -1) == [envelope.encode().encode()]
    assert worker.chores[RECOVER].next_run == START + mq_settings.MQ_LEASE_SECONDS / 2


def test_each_chore_runs_on_its_own_interval():
    runs = []
    chores = Chores(
        [
            Chore("often", 1.0, lambda now: runs.append(("often", now))),
            Chore("rarely", 10.0, lambda now: runs.append(("rarely", now))),
            Chore("soon", 10.0, lambda now: runs.append(("soon", now)) or now + 2.0),
        ]
    )
    for now in (100.0, 100.5, 101.0, 102.0, 110.0):
        chores.run_due(now)
    assert runs == [
        ("often", 100.0),
        ("rarely", 100.0),
        ("soon", 100.0),
        ("often", 101.0),
        ("often", 102.0),
        ("soon", 102.0),  # asked for 2 s, sooner than its interval
        ("often", 110.0),
        ("rarely", 110.0),
        ("soon", 110.0),
    ]
    chores.expedite("rarely")
    chores.run_due(110.5)
    assert runs[-1] == ("rarely", 110.5)


def test_a_burst_run_takes_what_its_last_promotion_put_on_the_queue(worker, queue, clock):
    """The promotion a burst run makes before deciding it is done may move
    the last retry onto the queue; the run takes it rather than ending with
    the task left waiting for the next worker."""
    assert worker.step() is None  # nothing anywhere: the promote chore ran, next in one interval
    envelope = Envelope(id=new_task_id(), task="tasks.tasks.add", queue=queue.name, args=[2, 3], enqueued_at=now_iso())
    Recorder().insert_enqueued([envelope], "default", timezone.now())
    queue.schedule(envelope, clock.now - 1)  # already due, but the chore is not
    assert worker.step() == 1
    assert TaskRecord.objects.get(id=envelope.id).status == TaskStatus.SUCCESSFUL


def test_a_batch_taken_back_while_the_cancel_check_waited_is_not_run(worker, queue, redis, monkeypatch):
    """The database query before a task (the cancel check) may outlast the
    lease: a host cut off from the network waits in it while the others take
    its batch back and run it. Ownership is asked after that wait, not before."""
    from tasks.worker import executor

    monkeypatch.setattr(executor, "CANCEL_CHECK_SECONDS", 0)  # asked before the first task
    worker.batch_size = 5
    envelopes = [enqueue(queue, "tasks.tasks.add", n, n) for n in range(3)]

    def taken_back_meanwhile(ids):
        redis.delete(keys.lease(queue.key, "unit"))  # the lease lapsed...
        worker.heartbeat.held_until = 0.0  # ...unrenewed...
        assert queue.recover_expired()  # ...and another worker took the batch back
        return set()

    monkeypatch.setattr(worker.executor.recorder, "cancel_requested_among", taken_back_meanwhile)
    assert worker.step() == 0
    worker.executor.settle()  # on PostgreSQL the unclaim is written behind
    rows = TaskRecord.objects.filter(id__in=[e.id for e in envelopes])
    assert not rows.filter(status=TaskStatus.SUCCESSFUL).exists()
    assert set(rows.values_list("status", flat=True)) == {TaskStatus.READY}  # unclaimed, for whoever took them
    assert in_flight(redis, queue) == []
