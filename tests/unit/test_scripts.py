"""The queue's Lua scripts, one edge at a time, through ReliableQueue.

Each test runs on the suite's real Redis and on fakeredis (with Lua through
lupa): the protocol must not depend on a server detail fakeredis lacks, and
a later unit test of the worker can trust fakeredis where these agree.
Redis state is read back through the key names of keys.py, never through
the queue's private helpers, so the tests outlive a refactor of reliable.py.
"""

import json
import time

import fakeredis
import pytest

from tasks.queue import keys
from tasks.queue.envelope import DeadLetter, Envelope
from tasks.queue.reliable import QueueFull, ReliableQueue

QUEUE = "test:queue"


@pytest.fixture(params=["redis", pytest.param("fakeredis", marks=pytest.mark.no_redis)])
def client(request):
    if request.param == "redis":
        yield request.getfixturevalue("redis_client")
        return
    fake = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    yield fake
    fake.close()


@pytest.fixture
def queue(client):
    return ReliableQueue(client, "default", QUEUE)


def envelope(n, **changes):
    return Envelope(id=f"t{n}", task="tests.fixture_tasks.add", queue="default", **changes)


def payloads(*numbers):
    return [envelope(n).encode().encode() for n in numbers]


def pending(client):
    """The queue oldest first (producers push on the left, workers take from the right)."""
    return client.lrange(QUEUE, 0, -1)[::-1]


def processing(client, worker_id):
    return client.lrange(keys.processing(QUEUE, worker_id), 0, -1)


def ids(client):
    return {member.decode() for member in client.smembers(keys.task_ids(QUEUE))}


def dead_entries(client):
    return [json.loads(entry) for entry in client.lrange(keys.dead(QUEUE), 0, -1)]


def lease_and_membership(client, worker_id):
    """(lease held, member of the queue's worker set), each 0 or 1."""
    return client.exists(keys.lease(QUEUE, worker_id)), client.sismember(keys.queue_workers(QUEUE), worker_id)


def expire_lease(client, worker_id):
    """What a lease's TTL does once the worker stops renewing it."""
    client.delete(keys.lease(QUEUE, worker_id))


# --- ENQUEUE (push) ----------------------------------------------------------


def test_push_queues_in_order_and_indexes_the_ids(client, queue):
    assert queue.push([envelope(1), envelope(2)]) == 2
    assert queue.push([envelope(3)]) == 3
    assert pending(client) == payloads(1, 2, 3)
    assert ids(client) == {"t1", "t2", "t3"}


def test_a_push_of_thousands_keeps_order_and_lanes(client, queue):
    """Past the script's chunks of 1,000 variadic arguments: every id indexed,
    priority-0 items in order, the others in their lanes, counted right."""
    numbers = range(2500)
    batch = [envelope(n, priority=5 if n % 500 == 0 else 0) for n in numbers]
    assert queue.push(batch, max_length=10_000) == 2500
    assert pending(client) == [e.encode().encode() for e in batch if not e.priority]
    assert client.llen(keys.lane(QUEUE, 5)) == 5
    assert ids(client) == {f"t{n}" for n in numbers}
    assert queue.push([envelope(9999)]) == 2501


def test_push_uses_the_payloads_it_is_given(client, queue):
    queue.push([envelope(1)], payloads=["as the producer wrote it"])
    assert pending(client) == [b"as the producer wrote it"]
    assert ids(client) == {"t1"}


@pytest.mark.parametrize("max_length", [None, 0])
def test_push_without_a_limit_is_unbounded(queue, max_length):
    assert queue.push([envelope(n) for n in range(50)], max_length=max_length) == 50


def test_push_up_to_the_limit_fits(queue):
    assert queue.push([envelope(1), envelope(2)], max_length=2) == 2


def test_push_past_the_limit_writes_nothing(client, queue):
    queue.push([envelope(1)], max_length=2)
    with pytest.raises(QueueFull):
        queue.push([envelope(2), envelope(3)], max_length=2)
    assert pending(client) == payloads(1)
    assert ids(client) == {"t1"}


def test_a_batch_larger_than_the_limit_is_refused_whole_on_an_empty_queue(client, queue):
    with pytest.raises(QueueFull):
        queue.push([envelope(n) for n in range(3)], max_length=2)
    assert client.exists(QUEUE, keys.task_ids(QUEUE)) == 0


# --- TAKE_BATCH (take) ---------------------------------------------------------


def test_take_from_an_empty_queue_takes_nothing(client, queue):
    assert queue.take("w1", 10, 1000) == ([], [], False)
    assert processing(client, "w1") == []


def test_take_moves_the_oldest_items_into_the_processing_list(client, queue):
    queue.push([envelope(n) for n in range(1, 6)])
    items, oversized, _ = queue.take("w1", 3, 1000)
    assert (items, oversized) == (payloads(1, 2, 3), [])
    assert pending(client) == payloads(4, 5)
    # Taken onto the head: the oldest sits at the tail.
    assert processing(client, "w1") == payloads(3, 2, 1)
    assert ids(client) == {f"t{n}" for n in range(1, 6)}  # still somewhere in the queue


def test_take_more_than_there_is_takes_all(queue):
    queue.push([envelope(1), envelope(2)])
    assert queue.take("w1", 100, 1000) == (payloads(1, 2), [], False)
    assert queue.take("w1", 100, 1000) == ([], [], False)


def test_an_oversized_item_is_dead_lettered_with_its_id(client, queue):
    big = envelope(2, kwargs={"blob": "x" * 3000})
    queue.push([envelope(1), big, envelope(3)])
    size = len(big.encode())
    items, oversized, _ = queue.take("w1", 10, 1000)
    assert items == payloads(1, 3)
    assert oversized == [(size, "t2")]
    assert processing(client, "w1") == payloads(3, 1)
    assert ids(client) == {"t1", "t3"}
    [entry] = dead_entries(client)
    assert entry["id"] == "t2"
    assert entry["reason"] == f"oversized: {size} bytes, over the limit of 1000"
    assert entry["item"] == big.encode()[:1024]
    assert entry["at"]


@pytest.mark.parametrize(
    "raw",
    [
        '{"task": "a.b", "id": "t9", "pad": "' + "x" * 2000 + '"}',  # the id not in front
        '{"id": "' + "x" * 65 + '", "pad": "' + "x" * 2000 + '"}',  # longer than an id may be
        "plain text " * 200,
    ],
    ids=["id-not-first", "id-too-long", "not-json"],
)
def test_an_oversized_item_without_a_readable_id_is_dead_lettered_without_one(client, queue, raw):
    client.lpush(QUEUE, raw)
    assert queue.take("w1", 10, 1000) == ([], [(len(raw), "")], False)
    assert [entry["id"] for entry in dead_entries(client)] == [""]


def test_recovered_items_are_taken_one_at_a_time_before_the_queue(client, queue):
    queue.register("dead-worker", 30)
    queue.push([envelope(n) for n in range(1, 4)])
    queue.take("dead-worker", 10, 1000)
    queue.push([envelope(4)])
    expire_lease(client, "dead-worker")
    assert queue.recover_expired() == {"dead-worker": 3}
    # One of them may be what killed its worker: alone, it takes nothing down with it.
    # The take says so, so a worker with slots runs it alone too.
    assert queue.take("w2", 10, 1000) == (payloads(1), [], True)
    assert queue.take("w2", 10, 1000) == (payloads(2), [], True)
    assert queue.take("w2", 10, 1000) == (payloads(3), [], True)
    assert queue.take("w2", 10, 1000) == (payloads(4), [], False)


def test_take_blocking_takes_one_item(client, queue):
    queue.push([envelope(1), envelope(2)])
    assert queue.take_blocking("w1", 1) == payloads(1)[0]
    assert processing(client, "w1") == payloads(1)


def test_take_blocking_gives_up_on_an_empty_queue(queue):
    assert queue.take_blocking("w1", 0.05) is None


# --- ACK -----------------------------------------------------------------------


def taken(queue, *numbers):
    queue.push([envelope(n) for n in numbers])
    items, _, _ = queue.take("w1", len(numbers), 10_000)
    return items


def test_ack_of_nothing_changes_nothing(client, queue):
    items = taken(queue, 1)
    queue.ack("w1", [])
    assert processing(client, "w1") == items


def test_ack_drops_done_items_and_their_ids(client, queue):
    one, two, three = taken(queue, 1, 2, 3)
    queue.ack("w1", [one, three], finished_ids=["t1", "t3"])
    assert processing(client, "w1") == [two]
    assert ids(client) == {"t2"}


def test_ack_removes_one_copy_per_done_item(client, queue):
    """A message pushed twice is taken twice: each ack drops one copy."""
    queue.push([envelope(1), envelope(1)])
    items, _, _ = queue.take("w1", 2, 10_000)
    queue.ack("w1", items[:1])
    assert processing(client, "w1") == payloads(1)


def test_ack_schedules_a_retry_of_an_item_still_held(client, queue):
    [item] = taken(queue, 1)
    retry = envelope(1).next_attempt()
    queue.ack("w1", [item], retries=[(item, retry, 1234.5)])
    assert processing(client, "w1") == []
    assert client.zrange(keys.delayed(QUEUE), 0, -1, withscores=True) == [(retry.encode().encode(), 1234.5)]
    assert ids(client) == {"t1"}  # on its way back: still indexed


def test_ack_schedules_no_retry_of_an_item_another_worker_took_back(client, queue):
    queue.register("w1", 30)
    [item] = taken(queue, 1)
    expire_lease(client, "w1")
    queue.recover_expired()
    queue.ack("w1", [item], retries=[(item, envelope(1).next_attempt(), 1234.5)])
    assert client.zcard(keys.delayed(QUEUE)) == 0
    assert client.llen(keys.recovered(QUEUE)) == 1


def test_ack_dead_letters_entries_newest_first_trimmed_to_the_maximum(client, queue):
    items = taken(queue, 1, 2, 3)
    entries = [DeadLetter(reason="gave up", id=f"t{n}", task="tasks.tasks.add", item=f"item {n}") for n in (1, 2, 3)]
    queue.ack("w1", items, finished_ids=["t1", "t2", "t3"], dead=entries, dead_max=2)
    assert [(e["id"], e["reason"], e["item"]) for e in dead_entries(client)] == [("t3", "gave up", "item 3"), ("t2", "gave up", "item 2")]


def test_ack_adds_up_stats(client, queue):
    first, second = taken(queue, 1, 2)
    queue.ack("w1", [first], stats={"succeeded": 1, "seconds": 0.25})
    queue.ack("w1", [second], stats={"succeeded": 1, "seconds": 0.5})
    assert queue.stats() == {"succeeded": 2.0, "seconds": 0.75}


def test_ack_counts_outcomes_per_second_in_an_expiring_hash_and_reads_them_back(client, queue):
    first, second = taken(queue, 1, 2)
    queue.ack("w1", [first], rates={"ok": 2, "err": 1})
    queue.ack("w1", [second], rates={"ok": 3})
    now = int(time.time())
    minute_keys = [keys.rates(QUEUE, m) for m in (now - now % 60, now - now % 60 - 60)]
    assert any(0 < client.ttl(key) <= 420 for key in minute_keys)
    series = queue.rates(now, window=10)
    assert len(series["ok"]) == len(series["err"]) == 10
    assert (sum(series["ok"]), sum(series["err"])) == (5, 1)
    # Outside the window: nothing, however the seconds fall into minutes.
    assert queue.rates(now + 3600, window=10) == {"ok": [0] * 10, "err": [0] * 10}


def test_rates_ignore_fields_no_worker_writes(client, queue):
    now = int(time.time())
    client.hset(keys.rates(QUEUE, now - now % 60), mapping={"junk": 1, f"{now}:other": 4, f"x{now}:ok": 2, f"{now}:ok": 1})
    assert queue.rates(now, window=5)["ok"] == [0, 0, 0, 0, 1]


def test_ack_keeps_the_latest_latencies_newest_first_capped(client, queue, monkeypatch):
    monkeypatch.setattr("tasks.queue.reliable.LATENCIES_KEPT", 3)
    first, second = taken(queue, 1, 2)
    queue.ack("w1", [first], latencies=[1.5, 2.5])
    queue.ack("w1", [second], latencies=[3.5, 4.5])
    assert queue.latencies() == [4.5, 3.5, 2.5]


def test_latencies_ignore_entries_no_worker_writes(client, queue):
    client.lpush(keys.latencies(QUEUE), "12.5", "junk", "nan", "inf", "", "7")
    assert queue.latencies() == [7.0, 12.5]


# --- RECOVER (recover_expired, recover_own, release) ------------------------------


def test_a_live_lease_keeps_its_items(client, queue):
    queue.register("w1", 30)
    items = taken(queue, 1, 2)
    assert queue.recover_expired() == {}
    assert processing(client, "w1") == items[::-1]


def test_an_expired_lease_loses_its_items_oldest_first(client, queue):
    queue.register("w1", 30)
    taken(queue, 1, 2, 3)
    expire_lease(client, "w1")
    assert queue.recover_expired() == {"w1": 3}
    assert processing(client, "w1") == []
    assert client.lrange(keys.recovered(QUEUE), 0, -1)[::-1] == payloads(1, 2, 3)
    assert lease_and_membership(client, "w1") == (0, 0)
    assert queue.recover_expired() == {}


def test_a_worker_does_not_recover_itself_as_expired(client, queue):
    queue.register("w1", 30)
    taken(queue, 1)
    expire_lease(client, "w1")
    assert queue.recover_expired(except_worker="w1") == {}
    assert processing(client, "w1") == payloads(1)


def test_an_expired_worker_with_nothing_in_flight_is_deregistered(client, queue):
    queue.register("w1", 30)
    expire_lease(client, "w1")
    assert queue.recover_expired() == {}
    assert client.smembers(keys.queue_workers(QUEUE)) == set()


def test_recover_own_takes_back_even_under_a_live_lease(client, queue):
    queue.register("w1", 30)
    taken(queue, 1, 2)
    assert queue.recover_own("w1") == 2
    assert client.lrange(keys.recovered(QUEUE), 0, -1)[::-1] == payloads(1, 2)


def test_release_returns_untouched_items_to_be_taken_next(client, queue):
    queue.register("w1", 30)
    taken(queue, 1, 2)
    queue.push([envelope(3)])
    assert queue.release("w1") == 2
    assert pending(client) == payloads(1, 2, 3)
    assert lease_and_membership(client, "w1") == (0, 0)


# --- CONFIRM_HELD and the lease ----------------------------------------------------


def test_confirm_held_renews_the_lease_of_an_item_still_held(client, queue):
    queue.register("w1", 30)
    [item] = taken(queue, 1)
    expire_lease(client, "w1")
    assert queue.confirm_held("w1", item, 30) is True
    assert lease_and_membership(client, "w1") == (1, 1)


def test_confirm_held_refuses_an_item_taken_back_and_keeps_no_lease(client, queue):
    queue.register("w1", 30)
    [item] = taken(queue, 1)
    expire_lease(client, "w1")
    queue.recover_expired()
    assert queue.confirm_held("w1", item, 30) is False
    assert lease_and_membership(client, "w1") == (0, 0)


def test_renewing_a_lapsed_lease_fails(client, queue):
    assert queue.register("w1", 30) is True
    assert queue.register("w1", 30, renew_only=True) is True
    expire_lease(client, "w1")
    assert queue.register("w1", 30, renew_only=True) is False
    assert lease_and_membership(client, "w1")[0] == 0


# --- PROMOTE_DUE ----------------------------------------------------------------------


def test_promote_with_nothing_delayed(queue):
    assert queue.promote_due(now=1000) is None


def test_promote_moves_due_items_earliest_first_and_tells_the_next_due(client, queue):
    queue.schedule(envelope(2), 200)
    queue.schedule(envelope(1), 100)
    queue.schedule(envelope(3), 300)
    assert queue.promote_due(now=250) == 300
    assert pending(client) == payloads(1, 2)
    assert queue.promote_due(now=300) is None
    assert pending(client) == payloads(1, 2, 3)
    assert ids(client) == {"t1", "t2", "t3"}


def test_promote_not_yet_due_moves_nothing(client, queue):
    queue.schedule(envelope(1), 500.5)
    assert queue.promote_due(now=500) == 500.5
    assert pending(client) == []


def test_promote_moves_at_most_its_limit(client, queue):
    for n in range(1, 6):
        queue.schedule(envelope(n), n)
    # What is left is due already: the next due time says so.
    assert queue.promote_due(now=10, limit=2) == 3
    assert pending(client) == payloads(1, 2)
    assert queue.promote_due(now=10, limit=2) == 5
    assert queue.promote_due(now=10, limit=2) is None
    assert pending(client) == payloads(1, 2, 3, 4, 5)


def test_promote_without_a_time_uses_the_clock(client, queue):
    queue.schedule(envelope(1), time.time() - 1)
    queue.schedule(envelope(2), time.time() + 3600)
    assert queue.promote_due() > time.time()
    assert pending(client) == payloads(1)
