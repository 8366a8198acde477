"""The read model (tasks/web/status.py) behind /, /api/stats, queue_status
and /metrics, and the queue latency it reads (ReliableQueue.oldest_pending_age),
against the suite's Redis and test database."""

import json
from datetime import datetime, timezone
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import OperationalError
from redis.exceptions import RedisError

from tasks.queue import keys, presence
from tasks.queue.backend import queue_for
from tasks.queue.envelope import Envelope
from tasks.tasks import add
from tasks.web import status
from tasks.web.status import read_snapshot

QUEUE = "task:prodcons:queue"
CHANNEL = "task:pubsub:channel"
NOW = 1_800_000_000.0
# The stable JSON of `queue_status --json` (DESIGN.md section 3).
STATUS_KEYS = {"queues", "workers", "listeners", "channels", "history", "warnings", "redis"}
QUEUE_KEYS = {"key", "pending", "in_flight", "delayed", "dead"}


def envelope_at(seconds_ago, task_id="t1"):
    moment = datetime.fromtimestamp(NOW - seconds_ago, timezone.utc)
    return Envelope(id=task_id, task="tasks.tasks.add", queue="default", enqueued_at=moment.isoformat()).encode()


# --- the oldest pending task's age --------------------------------------------------
def naive_at(seconds_ago):
    """An enqueued_at without a zone, as another producer might write it."""
    moment = datetime.fromtimestamp(NOW - seconds_ago, timezone.utc).replace(tzinfo=None)
    return json.dumps({"id": "x", "task": "t", "enqueued_at": moment.isoformat()})


@pytest.mark.parametrize(
    "pushed, recovered, age",
    [
        ([], [], 0.0),
        ([envelope_at(30, "old"), envelope_at(5, "new")], [], 30.0),
        ([envelope_at(5)], [envelope_at(90, "back")], 90.0),  # a dead worker's item waits in the recovered list
        (["7", envelope_at(5)], [], None),  # the oldest is a raw payload: no time to tell
        ([envelope_at(5), "7"], [], 5.0),  # a raw payload that is not the oldest does not hide the age
        ([json.dumps({"id": "x", "task": "t", "enqueued_at": "not a time"})], [], None),
        ([json.dumps(["not", "an", "envelope"])], [], None),
        ([naive_at(60)], [], 60.0),  # a time without a zone is UTC, as mqsite writes it
        ([envelope_at(-10)], [], 0.0),  # a producer's clock ahead of this host's: never a negative age
    ],
)
def test_oldest_pending_age(redis_client, pushed, recovered, age):
    # Pushed oldest first, as producers LPUSH: the oldest ends at the tail.
    for item in pushed:
        redis_client.lpush(QUEUE, item)
    for item in recovered:
        redis_client.lpush(keys.recovered(QUEUE), item)
    found = queue_for("default").oldest_pending_age(NOW)
    if age is None:
        assert found is None
    else:
        assert found == pytest.approx(age)


@pytest.mark.django_db(transaction=True)
def test_oldest_pending_age_of_a_task_enqueued_through_the_api(redis_client):
    before = datetime.now(timezone.utc).timestamp()
    add.enqueue(1, 2)
    age = queue_for("default").oldest_pending_age(before + 60)
    assert 0 < age <= 60


# --- the snapshot ----------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_the_snapshot_holds_what_redis_and_the_database_hold(redis_client):
    add.enqueue(1, 2)
    queue = queue_for("default")
    queue.schedule(Envelope(id="later", task="tasks.tasks.add", queue="default"), NOW + 3600)
    redis_client.lpush(keys.dead(QUEUE), json.dumps({"reason": "test"}))
    redis_client.hset(keys.stats(QUEUE), mapping={"outcome:succeeded": 3, "duration_sum": 0.5})
    presence.announce(redis_client, "worker", "w1", {"queues": ["default"], "processed": 3}, 30)
    presence.announce(redis_client, "listener", "l1", {"channels": ["news"], "received": 1}, 30)

    snapshot = read_snapshot()

    assert snapshot.redis_up and snapshot.database_up
    default = snapshot.queues["default"]
    assert (default.key, default.pending, default.in_flight, default.delayed, default.dead) == (QUEUE, 1, 0, 1, 1)
    assert default.oldest_pending_age >= 0
    assert default.stats == {"outcome:succeeded": 3.0, "duration_sum": 0.5}
    assert [w["id"] for w in snapshot.workers] == ["w1"] and [listener["id"] for listener in snapshot.listeners] == ["l1"]
    assert snapshot.channels == {CHANNEL: 0, "news": 0}
    assert snapshot.history["READY"] == 1 and snapshot.warnings == []


@pytest.mark.django_db
def test_the_stable_json_keeps_its_keys_and_nothing_more(redis_client):
    redis_client.hset(keys.stats(QUEUE), "outcome:succeeded", 1)
    document = read_snapshot().as_status()
    assert set(document) == STATUS_KEYS
    assert all(set(q) == QUEUE_KEYS for q in document["queues"].values())
    json.dumps(document)  # it is JSON as it stands

    out = StringIO()
    call_command("queue_status", "--json", stdout=out)
    assert json.loads(out.getvalue()) == json.loads(json.dumps(document))


@pytest.mark.django_db
def test_queue_status_text_shows_the_oldest_pending_age(redis_client):
    redis_client.rpush(QUEUE, "5")
    out = StringIO()
    call_command("queue_status", stdout=out)
    assert f"queue default ({QUEUE}): pending=1 in_flight=0 delayed=0 dead=0 oldest_pending_age=unknown" in out.getvalue()


@pytest.mark.django_db
def test_redis_down_leaves_the_redis_parts_out(redis_down):
    snapshot = read_snapshot()
    assert not snapshot.redis_up and snapshot.database_up
    assert snapshot.queues is None and snapshot.workers is None
    assert set(snapshot.as_status()) == {"history"}
    snapshot.raise_if_down(redis=False)
    with pytest.raises(RedisError):
        snapshot.raise_if_down()


@pytest.mark.django_db
def test_database_down_leaves_the_history_out(monkeypatch):
    def refuse():
        raise OperationalError("database is locked")

    monkeypatch.setattr(status, "history_counts", refuse)
    snapshot = read_snapshot()
    assert snapshot.redis_up and not snapshot.database_up
    assert set(snapshot.as_status()) == STATUS_KEYS - {"history"}
    snapshot.raise_if_down(database=False)
    with pytest.raises(OperationalError):
        snapshot.raise_if_down()
