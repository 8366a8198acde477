"""The Tasks API signals (DESIGN section 9), each received in the process
where it happens: task_enqueued in the producer, task_started and
task_finished in the worker."""

import json
import os

import pytest

from tasks.models import TaskRecord, TaskStatus
from tasks.queue.backend import cancel
from tasks.signals import listened, task_enqueued, task_finished, task_started
from tasks.tasks import add
from tests import signal_receivers
from tests.fixture_tasks import nap_and_note, nap_then_fail
from tests.processes import manage, run_manage, stop, wait_for

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


@pytest.mark.slow
@pytest.mark.parametrize("concurrency", ["1", "4"])
def test_a_task_cancelled_while_it_runs_finishes_failed_whatever_it_does(
    redis_url, redis_client, receivers, monkeypatch, tmp_path, concurrency
):
    """Its row ends CANCELLED (the record decides), which the Tasks API
    reads FAILED. task_finished said SUCCESSFUL for the one that returned,
    and never came for the one that raised with attempts left."""
    returns, raises = tmp_path / "returns", tmp_path / "raises"
    returning = nap_and_note.enqueue(str(returns), "x", 1.0).id
    raising = nap_then_fail.enqueue(str(raises), 1.0).id
    monkeypatch.setenv("MQ_TEST_SIGNALS", "1")
    modules = ["tests.fixture_tasks", "tests.faults.fault_tasks", "tests.signal_receivers"]
    worker = manage(redis_url, "listen_queue", "--concurrency", concurrency, settings={"MQ_TASK_MODULES": modules})
    try:
        for path, task_id in ((returns, returning), (raises, raising)):
            wait_for(lambda: path.exists() and "begin" in path.read_text(), message="the task runs")
            assert cancel(task_id) == TaskStatus.RUNNING
        wait_for(lambda: len([e for e in received(redis_client) if e["signal"] == "task_finished"]) == 2, message="two task_finished")
    finally:
        assert stop(worker) == 0
    finished = {e["id"]: e["status"] for e in received(redis_client) if e["signal"] == "task_finished"}
    assert finished == {returning: "FAILED", raising: "FAILED"}
    assert {row.status for row in TaskRecord.objects.filter(id__in=[returning, raising])} == {TaskStatus.CANCELLED}
