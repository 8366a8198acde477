"""The Tasks API signals (DESIGN section 9), each received in the process
where it happens: task_enqueued in the producer, task_started and
task_finished in the worker."""

import json
import os

import pytest

from tasks.signals import listened, task_enqueued, task_finished, task_started
from tasks.tasks import add
from tests import signal_receivers
from tests.processes import run_manage

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def receivers():
    signal_receivers.connect()
    yield
    signal_receivers.disconnect()


def received(redis_client):
    return [json.loads(entry) for entry in redis_client.lrange(signal_receivers.RECEIVED, 0, -1)]


def test_only_djangos_own_loggers_do_not_count_as_listening():
    assert not any(listened(signal) for signal in (task_enqueued, task_started, task_finished))
    signal_receivers.connect()
    try:
        assert all(listened(signal) for signal in (task_enqueued, task_started, task_finished))
    finally:
        signal_receivers.disconnect()


@pytest.mark.slow
def test_each_signal_is_sent_in_the_process_where_it_happens(redis_url, redis_client, receivers, monkeypatch):
    result = add.enqueue(2, 3)
    [enqueued] = received(redis_client)
    assert enqueued == {"signal": "task_enqueued", "sender": "RedisTaskBackend", "id": result.id, "status": "READY", "pid": os.getpid()}
    monkeypatch.setenv("MQ_TEST_SIGNALS", "1")
    modules = ["tests.fixture_tasks", "tests.faults.fault_tasks", "tests.signal_receivers"]
    worker = run_manage(redis_url, "listen_queue", "--burst", settings={"MQ_TASK_MODULES": modules})
    assert worker.returncode == 0, worker.stderr
    _, started, finished = received(redis_client)
    assert started["signal"] == "task_started" and started["status"] == "RUNNING"
    assert finished["signal"] == "task_finished" and finished["status"] == "SUCCESSFUL" and finished["return_value"] == 5
    assert started["id"] == finished["id"] == result.id
    assert started["pid"] == finished["pid"] != os.getpid()
    assert started["sender"] == finished["sender"] == "RedisTaskBackend"
