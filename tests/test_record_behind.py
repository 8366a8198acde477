"""A batch recorded and acknowledged on a thread of its own while the worker
runs the next (tasks.worker.record_behind): the thread's hand-over, and the
redelivery that must wait for it. The kill while a batch is behind is in
tests/faults/test_workers_killed.py."""

import threading
import time
from collections import Counter

import pytest
from django.db import connection

from tasks.models import TaskRecord, TaskStatus
from tasks.queue import keys
from tasks.queue.backend import queue_for
from tasks.worker.loop import Worker
from tasks.worker.record_behind import RecordBehind
from tests.fixture_tasks import append_to_file


@pytest.fixture
def behind():
    recorder = RecordBehind()
    yield recorder
    recorder.close()


def blocked_call(release, seen):
    def call(name):
        seen.append((name, threading.current_thread().name))
        release.wait(10)

    return call


@pytest.mark.no_redis
def test_the_call_runs_on_its_own_thread_and_wait_blocks_until_it_is_done(behind):
    release, seen = threading.Event(), []
    behind.submit(["a", "b"], blocked_call(release, seen), "first")
    threading.Timer(0.3, release.set).start()
    behind.wait()
    assert release.is_set()
    assert seen == [("first", "mq-record-behind")]


@pytest.mark.no_redis
def test_wait_for_ids_blocks_only_when_the_call_in_flight_settles_one_of_them(behind):
    release, seen = threading.Event(), []
    behind.submit(["a", "b"], blocked_call(release, seen), "first")
    behind.wait(["c", "d"])  # returns at once: the call in flight is still blocked
    assert not release.is_set()
    threading.Timer(0.3, release.set).start()
    behind.wait(["d", "b"])
    assert release.is_set()


@pytest.mark.no_redis
def test_a_call_waits_for_the_one_before_it(behind):
    release, seen = threading.Event(), []
    behind.submit(["a"], blocked_call(release, seen), "first")
    threading.Timer(0.3, release.set).start()
    behind.submit(["b"], seen.append, "second")  # returns once the first is done
    assert release.is_set()
    behind.wait()
    assert [entry if isinstance(entry, str) else entry[0] for entry in seen] == ["first", "second"]


@pytest.mark.no_redis
def test_the_calls_error_is_raised_at_the_next_wait_once(behind):
    def refuse():
        raise ConnectionError("refused")

    behind.submit(["a"], refuse)
    with pytest.raises(ConnectionError, match="refused"):
        behind.wait()
    behind.wait()  # handed over once; the thread goes on serving
    done = []
    behind.submit(["b"], done.append, "next")
    behind.wait()
    assert done == ["next"]


@pytest.mark.no_redis
def test_a_call_is_started_even_when_the_one_before_it_failed(behind):
    """The worker hands over a batch that ran while the previous batch's
    acknowledgement failed: it must be recorded before the worker gives its
    items back, or they would run again."""

    def refuse():
        raise ConnectionError("refused")

    done = []
    behind.submit(["a"], refuse)
    with pytest.raises(ConnectionError, match="refused"):
        behind.submit(["b"], done.append, "ran meanwhile")
    behind.wait()
    assert done == ["ran meanwhile"]


@pytest.mark.no_redis
def test_close_ends_the_thread():
    recorder = RecordBehind()
    done = []
    recorder.submit(["a"], done.append, "last")
    recorder.close()
    assert done == ["last"]
    assert not recorder._thread.is_alive()


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="batches are recorded behind on PostgreSQL only")
def test_a_redelivery_of_the_batch_behind_waits_for_its_record(redis_client, tmp_path):
    """Task x is redelivered (as the sweeper resends) into the batch right
    after its own, while that batch is still being recorded: its row is
    RUNNING, and a claim then would run it a second time. The worker waits
    for the record, finds the row final and acknowledges x unrun."""
    runs = tmp_path / "runs.txt"
    x, a = append_to_file.enqueue(str(runs), "x"), append_to_file.enqueue(str(runs), "a")
    queue = queue_for("default")
    raw_x = next(raw for raw in redis_client.lrange(queue.key, 0, -1) if x.id.encode() in raw)
    worker = Worker(worker_id="behind")
    worker.begin()
    recorder, finish = worker.recorder, worker.recorder.finish

    def slow_finish(outcomes):
        time.sleep(0.5)
        finish(outcomes)

    recorder.finish = slow_finish
    worker.batch_size = 10
    try:
        assert worker.step() == 2  # x and a, recorded behind
        redis_client.lpush(queue.key, raw_x)
        b = append_to_file.enqueue(str(runs), "b")
        assert worker.step() == 2  # b, and x (acknowledged unrun: see below)
    finally:
        worker.executor.close()
    assert Counter(runs.read_text().split()) == {"x": 1, "a": 1, "b": 1}
    rows = TaskRecord.objects.filter(id__in=[x.id, a.id, b.id])
    assert {(row.status, row.attempts) for row in rows} == {(TaskStatus.SUCCESSFUL, 1)}
    assert redis_client.llen(queue.key) == 0
    assert redis_client.llen(keys.processing(queue.key, "behind")) == 0

