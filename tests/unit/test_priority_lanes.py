"""Priority lanes (scripts.LANES), one edge at a time, through ReliableQueue.

As tests/unit/test_scripts.py: on the suite's real Redis and on fakeredis,
and Redis state read back through the key names of keys.py.
"""

import json

import pytest

from tasks.queue import keys
from tasks.queue.envelope import BadMessage, Envelope, decode
from tasks.queue.reliable import WAKE_TOKEN, QueueFull
from tests.unit.test_scripts import QUEUE, client, queue  # noqa: F401  (fixtures)


def envelope(n, priority=0):
    return Envelope(id=f"t{n}", task="tests.fixture_tasks.add", queue="default", priority=priority)


def taken_ids(items):
    return [json.loads(item)["id"] for item in items]


def lane(client, priority):
    """A lane oldest first."""
    return client.lrange(keys.lane(QUEUE, priority), 0, -1)[::-1]


def lane_members(client):
    return [int(p) for p in client.zrevrange(keys.lanes(QUEUE), 0, -1)]


# --- the envelope --------------------------------------------------------------


def test_priority_0_is_left_out_of_the_encoding():
    assert "priority" not in json.loads(envelope(1).encode())
    assert json.loads(envelope(1, priority=-5).encode())["priority"] == -5


@pytest.mark.parametrize("priority", [-100, 0, 7, 100])
def test_a_priority_in_range_decodes(priority):
    assert decode(envelope(1, priority).encode(), "default", 10_000).priority == priority


@pytest.mark.parametrize("priority", [-101, 101, 1.5, "3", True, None])
def test_a_priority_out_of_range_is_a_bad_message_with_its_id(priority):
    raw = json.dumps({"id": "t1", "task": "tests.fixture_tasks.add", "priority": priority})
    message = decode(raw, "default", 10_000)
    assert isinstance(message, BadMessage) and "priority" in message.reason and message.id == "t1"


# --- ENQUEUE --------------------------------------------------------------------


def test_priority_0_goes_to_the_queue_key_itself_and_others_to_their_lanes(client, queue):
    assert queue.push([envelope(1), envelope(2, 10), envelope(3, -10)]) == 3
    assert [json.loads(i)["id"] for i in lane(client, 0)] == ["t1"]
    assert [json.loads(i)["id"] for i in lane(client, 10)] == ["t2"]
    assert [json.loads(i)["id"] for i in lane(client, -10)] == ["t3"]
    assert lane_members(client) == [10, -10]


def test_a_laned_push_onto_an_empty_queue_leaves_one_wake_token(client, queue):
    queue.push([envelope(1, 5)])
    queue.push([envelope(2, 5)])
    assert client.lrange(QUEUE, 0, -1) == [WAKE_TOKEN]


def test_a_priority_0_push_leaves_no_wake_token(client, queue):
    queue.push([envelope(1)])
    assert WAKE_TOKEN not in client.lrange(QUEUE, 0, -1)


def test_the_length_limit_counts_every_lane_but_not_the_wake_token(client, queue):
    queue.push([envelope(1, 5), envelope(2, -5)])
    with pytest.raises(QueueFull):
        queue.push([envelope(3)], max_length=2)
    assert queue.push([envelope(3)], max_length=3) == 3


# --- TAKE_BATCH ----------------------------------------------------------------


def test_take_goes_by_priority_then_first_in_first_out(client, queue):
    queue.push([envelope(1, -10), envelope(2), envelope(3, 10), envelope(4, -10), envelope(5), envelope(6, 10), envelope(7, 3)])
    items, _, _ = queue.take("w1", 100, 10_000)
    assert taken_ids(items) == ["t3", "t6", "t7", "t2", "t5", "t1", "t4"]


def test_take_one_at_a_time_goes_by_priority(client, queue):
    queue.push([envelope(1), envelope(2, -1), envelope(3, 1)])
    order = [taken_ids(queue.take("w1", 1, 10_000)[0]) for _ in range(4)]
    assert order == [["t3"], ["t1"], ["t2"], []]


def test_take_drops_the_wake_token_and_lanes_found_empty(client, queue):
    queue.push([envelope(1, 5)])
    items, _, _ = queue.take("w1", 10, 10_000)
    assert taken_ids(items) == ["t1"]
    assert client.lrange(keys.processing(QUEUE, "w1"), 0, -1) == items
    assert client.llen(QUEUE) == 0
    assert lane_members(client) == []


def test_a_foreign_lpush_is_priority_0(client, queue):
    client.lpush(QUEUE, "raw payload")
    queue.push([envelope(1, -1), envelope(2, 1)])
    items, _, _ = queue.take("w1", 10, 10_000)
    assert items[1] == b"raw payload" and taken_ids([items[0], items[2]]) == ["t2", "t1"]


def test_recovered_items_still_go_before_every_lane(client, queue):
    queue.register("dead", 30)
    queue.push([envelope(1)])
    queue.take("dead", 10, 10_000)
    queue.push([envelope(2, 50)])
    client.delete(keys.lease(QUEUE, "dead"))
    queue.recover_expired()
    assert taken_ids(queue.take("w1", 10, 10_000)[0]) == ["t1"]
    assert taken_ids(queue.take("w1", 10, 10_000)[0]) == ["t2"]


# --- the blocking take ------------------------------------------------------------


def test_take_blocking_drops_a_wake_token_and_returns_nothing(client, queue):
    queue.push([envelope(1, 5)])
    assert queue.take_blocking("w1", 1) is None
    assert client.llen(keys.processing(QUEUE, "w1")) == 0
    assert taken_ids(queue.take("w1", 10, 10_000)[0]) == ["t1"]


# --- PROMOTE_DUE, RELEASE, counts -------------------------------------------------------


def test_promote_puts_each_item_in_its_lane(client, queue):
    queue.schedule(envelope(1, -3), 100)
    queue.schedule(envelope(2, 3), 100)
    client.zadd(keys.delayed(QUEUE), {"not an envelope": 100})
    queue.promote_due(now=200)
    assert taken_ids(lane(client, 3)) == ["t2"] and taken_ids(lane(client, -3)) == ["t1"]
    assert lane(client, 0) == [b"not an envelope"]  # not empty: no wake token needed


def test_release_returns_items_to_the_tails_of_their_lanes(client, queue):
    queue.register("w1", 30)
    queue.push([envelope(1, 2), envelope(2), envelope(3, 2)])
    queue.take("w1", 2, 10_000)  # t1, t3
    queue.push([envelope(4, 2)])
    assert queue.release("w1") == 2
    assert taken_ids(queue.take("w2", 10, 10_000)[0]) == ["t1", "t3", "t4", "t2"]


def test_counts_and_oldest_age_see_every_lane(client, queue):
    queue.push([envelope(1, 5), envelope(2, -5)])
    assert queue.counts()["pending"] == 2  # the wake token is no task
    assert queue.oldest_pending_age() is None  # these envelopes carry no time
