"""Every key of a queue hashes to the queue's own slot on Redis Cluster.

One Lua script touches a queue and its companions at once, which Redis
Cluster allows only for keys in one hash slot; and the queue key keeps its
classic brace-less name. The companions' hash tag must therefore hash
exactly like the bare queue key.
"""

import inspect

import pytest
from redis.crc import key_slot

from tasks.queue import keys

pytestmark = pytest.mark.no_redis

QUEUE_KEYS = ["task:prodcons:queue", "emails", "q:with.dots-and_dashes:1"]


def per_queue_keys(queue_key):
    """Each key function of keys.py that takes a queue key, applied to it
    (any further argument, a worker id, filled in): found by signature, so a
    key added later is checked too."""
    built = {}
    for name, fn in inspect.getmembers(keys, inspect.isfunction):
        params = list(inspect.signature(fn).parameters)
        if params and params[0] == "queue_key":
            built[name] = fn(queue_key, *[f"worker-{n}" for n in range(len(params) - 1)])
    return built


def test_the_queue_companions_are_found():
    assert {"processing", "lease", "recovered", "delayed", "dead", "task_ids", "stats"} <= set(per_queue_keys("q"))


@pytest.mark.parametrize("queue_key", QUEUE_KEYS)
def test_every_queue_key_shares_the_queue_slot(queue_key):
    slot = key_slot(queue_key.encode())
    slots = {name: key_slot(key.encode()) for name, key in per_queue_keys(queue_key).items()}
    assert slots == dict.fromkeys(slots, slot)


@pytest.mark.parametrize("queue_key", QUEUE_KEYS)
def test_companions_are_distinct_from_each_other_and_the_queue(queue_key):
    built = per_queue_keys(queue_key)
    assert len({queue_key, *built.values()}) == len(built) + 1


def test_per_worker_keys_differ_per_worker():
    assert keys.processing("q", "a") != keys.processing("q", "b")
    assert keys.lease("q", "a") != keys.lease("q", "b")
    assert keys.processing("q", "a") != keys.lease("q", "a")


def test_queues_do_not_share_companions():
    assert not set(per_queue_keys("a").values()) & set(per_queue_keys("b").values())


def test_the_check_can_fail():
    """A key that forgets the hash tag lands elsewhere: the slot check bites."""
    assert key_slot(b"task:prodcons:queue:delayed") != key_slot(b"task:prodcons:queue")
