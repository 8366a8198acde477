"""The worker loop driven in-process (burst mode) against the real Redis server."""

import json
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from tasks.queue import keys
from tasks.queue.backend import new_task_id, queue_for
from tasks.queue.envelope import BadMessage, Envelope, decode
from tasks.models import TaskRecord, TaskStatus
from tasks.exceptions import ArgumentsNotStorable, MessageTooLarge
from tasks.storable import MAX_ARGS_DEPTH
from tasks.queue.recorder import Recorder
from tasks.tasks import add, always_fails, cook_dish, report_attempt
from tasks.worker.loop import Worker
from tests.conftest import nested

pytestmark = pytest.mark.django_db(transaction=True)


def drain(**kwargs):
    return Worker(burst=True, worker_id="test-worker", **kwargs).run()


def test_enqueue_then_burst_records_success():
    result = add.enqueue(2, 3)
    row = TaskRecord.objects.get(id=result.id)
    assert row.status == TaskStatus.READY
    assert drain() == 1
    row.refresh_from_db()
    assert (row.status, row.result, row.attempts, row.worker) == (TaskStatus.SUCCESSFUL, 5, 1, "test-worker")
    fetched = add.get_result(result.id)
    assert fetched.return_value == 5 and fetched.attempts == 1


def test_context_sees_id_and_attempt():
    result = report_attempt.enqueue()
    drain()
    assert TaskRecord.objects.get(id=result.id).result == {"id": result.id, "attempt": 1}


def test_failing_task_retries_then_fails_with_every_error(redis_client):
    result = always_fails.enqueue("boom")
    drain()
    row = TaskRecord.objects.get(id=result.id)
    assert row.status == TaskStatus.FAILED
    assert row.attempts == 3
    assert [e["attempt"] for e in row.errors] == [1, 2, 3]
    assert "RuntimeError: boom" in row.error
    dead = queue_for("default").dead_letters()
    assert [d["id"] for d in dead] == [result.id]
    assert redis_client.llen("task:prodcons:queue") == 0


def test_raw_seed_payload_runs_raw_task(redis_client):
    redis_client.lpush("task:prodcons:queue", "5")
    drain()
    row = TaskRecord.objects.get()
    assert row.task_path == "tasks.tasks.cook_dish"
    assert row.status == TaskStatus.SUCCESSFUL
    assert row.result == {"number": 5, "dish": "tagine"}


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"\xff\xfe not utf-8", "not UTF-8"),
        (json.dumps({"id": "abc", "task": "os.system", "args": ["echo hi"]}), "unknown task"),
        (json.dumps({"id": "abd", "task": "tasks.tasks.add", "args": {"a": 1}}), "args must be a list"),
        (json.dumps({"task": "tasks.tasks.add"}), "no valid id"),
    ],
)
def test_bad_messages_are_dead_lettered_and_worker_goes_on(redis_client, payload, reason):
    redis_client.lpush("task:prodcons:queue", payload)
    good = add.enqueue(1, 1)
    drain()
    assert TaskRecord.objects.get(id=good.id).status == TaskStatus.SUCCESSFUL
    bad = TaskRecord.objects.exclude(id=good.id).get()
    assert bad.status == TaskStatus.DEAD and reason in bad.error
    [entry] = queue_for("default").dead_letters()
    assert reason in entry["reason"]


def test_oversized_item_is_dead_lettered_unread(redis_client, settings):
    settings.MQ_MAX_MESSAGE_BYTES = 1000
    redis_client.lpush("task:prodcons:queue", "x" * 5000)
    good = add.enqueue(1, 2)
    drain()
    assert TaskRecord.objects.get(id=good.id).status == TaskStatus.SUCCESSFUL
    assert TaskRecord.objects.filter(status=TaskStatus.DEAD, error__contains="oversized").count() == 1


def _enqueue_oversized(how):
    big = ("x" * 300, 1)
    if how == "enqueue":
        add.enqueue(*big)
    elif how == "enqueue_many":  # one small call and one too large: none is queued
        add.get_backend().enqueue_many(add, [((1, 2), {}), (big, {})])
    elif how == "in_a_transaction":
        with transaction.atomic():
            add.enqueue(*big)
    else:  # deferred: would go to the delayed set
        add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(*big)


@pytest.mark.parametrize("how", ["enqueue", "enqueue_many", "in_a_transaction", "deferred"])
def test_oversized_task_is_refused_before_anything_is_written(redis_client, settings, how):
    settings.MQ_MAX_MESSAGE_BYTES = 300
    with pytest.raises(MessageTooLarge, match=r"oversized: \d+ bytes, over the limit of 300"):
        _enqueue_oversized(how)
    assert TaskRecord.objects.count() == 0
    assert redis_client.llen("task:prodcons:queue") == 0
    assert redis_client.zcard(keys.delayed("task:prodcons:queue")) == 0
    assert redis_client.scard(keys.task_ids("task:prodcons:queue")) == 0


def test_the_deepest_arguments_a_worker_runs_are_accepted_and_run(redis_client):
    # args is one list, a's value the rest: MAX_ARGS_DEPTH lists in all.
    result = add.enqueue(nested(MAX_ARGS_DEPTH - 1), [])
    drain()
    assert TaskRecord.objects.get(id=result.id).status == TaskStatus.SUCCESSFUL


# 101 was dead-lettered unrun by the worker; 500 to 950 also exhausted the
# recursion limit building the caller's TaskResult, after the row and the
# push; 5000 exhausted it before anything was written.
@pytest.mark.parametrize("depth", [MAX_ARGS_DEPTH, 500, 950, 5000])
@pytest.mark.parametrize("how", ["enqueue", "enqueue_many", "in_a_transaction", "deferred"])
def test_arguments_nested_deeper_than_a_worker_runs_are_refused_before_anything_is_written(redis_client, depth, how):
    deep = (nested(depth), 1)
    with pytest.raises(ArgumentsNotStorable, match=rf"nested deeper than {MAX_ARGS_DEPTH} levels"):
        if how == "enqueue":
            add.enqueue(*deep)
        elif how == "enqueue_many":
            add.get_backend().enqueue_many(add, [((1, 2), {}), (deep, {})])
        elif how == "in_a_transaction":
            with transaction.atomic():
                add.enqueue(*deep)
        else:
            add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(*deep)
    assert TaskRecord.objects.count() == 0
    assert redis_client.llen("task:prodcons:queue") == 0
    assert redis_client.zcard(keys.delayed("task:prodcons:queue")) == 0


def _foreign(envelope):
    return json.dumps({"id": envelope.id, "task": envelope.task, "args": envelope.args})


@pytest.mark.parametrize("encode", [Envelope.encode, _foreign])
def test_oversized_envelope_ends_its_own_row_dead(redis_client, settings, encode):
    """A producer that knows nothing of the limit wrote a row and pushed the
    envelope with a raw LPUSH (mqsite's encoding, or a foreign one with spaces)."""
    settings.MQ_MAX_MESSAGE_BYTES = 1000
    envelope = Envelope(id=new_task_id(), task="tasks.tasks.add", queue="default", args=["x" * 5000, 1])
    Recorder().insert_enqueued([envelope], "default", timezone.now())
    redis_client.sadd(keys.task_ids("task:prodcons:queue"), envelope.id)
    redis_client.lpush("task:prodcons:queue", encode(envelope))
    good = add.enqueue(1, 2)
    drain()
    assert TaskRecord.objects.get(id=good.id).status == TaskStatus.SUCCESSFUL
    assert TaskRecord.objects.count() == 2, "no row under a new id"
    row = TaskRecord.objects.get(id=envelope.id)
    assert row.status == TaskStatus.DEAD
    assert row.error.startswith("oversized: ") and row.error.endswith("bytes, over the limit of 1000")
    [entry] = queue_for("default").dead_letters()
    assert entry["id"] == envelope.id and entry["reason"] == row.error
    assert not redis_client.sismember(keys.task_ids("task:prodcons:queue"), envelope.id)


def test_an_oversized_item_taken_whole_keeps_its_id():
    """The blocking take hands the worker the whole item; decode names its id."""
    raw = Envelope(id="big-1", task="tasks.tasks.add", queue="default", args=["x" * 500, 1]).encode().encode()
    assert decode(raw, "default", 100) == BadMessage(f"oversized: {len(raw)} bytes, over the limit of 100", id="big-1")
    assert decode(b'{"args": ["' + b"x" * 500 + b'"]}', "default", 100).id == ""


def test_duplicate_delivery_of_finished_task_does_not_run_again(redis_client):
    result = add.enqueue(1, 2)
    raw = redis_client.lindex("task:prodcons:queue", 0)
    drain()
    redis_client.lpush("task:prodcons:queue", raw)
    assert drain() == 0
    row = TaskRecord.objects.get(id=result.id)
    assert (row.status, row.attempts) == (TaskStatus.SUCCESSFUL, 1)
    assert redis_client.llen(keys.processing("task:prodcons:queue", "test-worker")) == 0


def test_batches_when_queue_is_deep():
    cook_dish.get_backend().enqueue_many(add, [((i, i), {}) for i in range(500)])
    worker = Worker(burst=True, worker_id="batcher")
    assert worker.run() == 500
    assert worker.batch_size > 1
    assert TaskRecord.objects.filter(status=TaskStatus.SUCCESSFUL).count() == 500
