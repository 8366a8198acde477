"""One dead-letter entry, whoever writes it: TAKE_BATCH for an oversized item
it never hands out, and ACK for what a worker gives up on (suite's Redis)."""

import json

import pytest

from tasks.exceptions import QueueUnavailable
from tasks.queue import keys
from tasks.queue.backend import purge_dead_letters, queue_for
from tasks.queue.connection import reset_clients
from tasks.queue.envelope import DEAD_EXCERPT_BYTES, DeadLetter
from tests.redis_server import free_port

QUEUE = "task:prodcons:queue"
FIELDS = {"reason", "id", "task", "worker", "at", "item"}


def test_take_and_ack_write_the_same_entry(redis_client):
    queue = queue_for("default")
    big = '{"id":"big-1","task":"x","pad":"' + "x" * 5000 + '"}'
    redis_client.lpush(QUEUE, "small", big)
    items, oversized, _ = queue.take("w1", 10, 1000)
    assert items == [b"small"] and oversized == [(len(big), "big-1")]
    queue.ack("w1", [b"small"], dead=[DeadLetter.of(b"small\xff", "unknown task", "t-1", "a.b", 1000)])
    by_writer, by_take = [json.loads(e) for e in redis_client.lrange(keys.dead(QUEUE), 0, -1)]
    assert set(by_writer) == set(by_take) == FIELDS
    assert by_take["worker"] == by_writer["worker"] == "w1"
    assert by_take["item"] == big[:DEAD_EXCERPT_BYTES] and by_take["task"] == ""
    assert (by_writer["reason"], by_writer["id"], by_writer["task"], by_writer["item"]) == ("unknown task", "t-1", "a.b", "small\\xff")


def test_an_oversized_item_keeps_an_excerpt():
    letter = DeadLetter.of(b"y" * 5000, "too big", "", "", 1000)
    assert letter.item == "y" * DEAD_EXCERPT_BYTES
    assert DeadLetter.of("fits", "r", "", "", 1000).item == "fits"


def test_purge_dead_letters(redis_client):
    redis_client.lpush(keys.dead(QUEUE), "{}")
    purge_dead_letters(["default"])
    assert redis_client.llen(keys.dead(QUEUE)) == 0


@pytest.mark.no_redis
def test_purge_without_redis_is_queue_unavailable(settings):
    settings.MQ_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    reset_clients()
    try:
        with pytest.raises(QueueUnavailable):
            purge_dead_letters(["default"])
    finally:
        reset_clients()
