"""Progress (DESIGN section 9): reported through the context, stored without
a write per call, shown by the API and the admin while the task runs."""

import asyncio
import threading

import pytest
from django.contrib.admin.utils import quote  # admin URLs escape "_" and friends in ids

from tasks.models import TaskRecord, TaskStatus
from tasks.queue.recorder import Recorder
from tasks.worker import context as task_context
from tasks.worker.loop import Worker
from tests.fixture_tasks import async_until_cancelled, count_with_progress
from tests.processes import manage, stop, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

AUTH = {"HTTP_AUTHORIZATION": "Bearer test-token"}


@pytest.mark.slow
def test_progress_is_visible_through_the_api_while_a_worker_runs_the_task(redis_url, client, admin_client, tmp_path):
    marker = tmp_path / "marker.txt"
    result = count_with_progress.enqueue(str(marker), 10, 4.0)
    worker = manage(redis_url, "listen_queue", "--burst")
    try:
        wait_for(marker.exists, message="the task to reach halfway")
        body = wait_for(lambda: client.get(f"/api/tasks/{result.id}", **AUTH).json(), message="the task's JSON")
        assert body["status"] == TaskStatus.RUNNING
        assert body["progress"]["total"] == 10 and 1 <= body["progress"]["done"] <= 5
        page = admin_client.get(f"/admin/tasks/taskrecord/{quote(result.id)}/change/").content.decode()
        assert f"{body['progress']['done']}/10" in page
        assert worker.wait(60) == 0
    finally:
        stop(worker)
    assert client.get(f"/api/tasks/{result.id}", **AUTH).json()["progress"] == {"done": 10, "total": 10, "text": "step 10"}


def test_a_tight_loop_is_throttled_and_the_last_value_written(redis_client, tmp_path, monkeypatch):
    writes = []
    real = Recorder.record_progress

    def counting(recorder, task_id, progress):
        writes.append(progress["done"])
        return real(recorder, task_id, progress)

    monkeypatch.setattr(Recorder, "record_progress", counting)
    result = count_with_progress.enqueue(str(tmp_path / "m"), 1000)
    assert Worker(burst=True).run() == 1
    row = TaskRecord.objects.get(id=result.id)
    assert row.status == TaskStatus.SUCCESSFUL
    assert row.progress == {"done": 1000, "total": 1000, "text": "step 1000"}
    assert len(writes) < 10 and writes[-1] == 1000 and writes[0] == 1


def test_progress_must_be_numbers():
    control = task_context.TaskControl("x", recorder=None)
    with pytest.raises(TypeError):
        control.set_progress("3")
    with pytest.raises(TypeError):
        control.set_progress(3, total="10")



def test_an_async_task_s_context_helper_ends_with_the_worker_s_loop(redis_client, tmp_path):
    """An async def task's context queries run on a helper thread with its own
    connection; a worker that stops ends it, so no connection outlives it (in
    this process, it kept the test database busy at teardown)."""
    result = async_until_cancelled.enqueue(str(tmp_path / "started"), 0.2)
    assert Worker(burst=True, concurrency=2).run() == 1
    row = TaskRecord.objects.get(id=result.id)
    assert row.status == TaskStatus.SUCCESSFUL and row.progress["text"].startswith("turn ")
    assert not [t.name for t in threading.enumerate() if t.name.startswith("mq-context-db")]
    # A second worker in the same process starts a new helper.
    again = async_until_cancelled.enqueue(str(tmp_path / "again"), 0.05)
    assert Worker(burst=True, concurrency=2).run() == 1
    assert TaskRecord.objects.get(id=again.id).progress["text"].startswith("turn ")
    assert task_context._off_loop is None


def test_a_busy_context_helper_does_not_hold_up_the_stop(caplog):
    """A query still running on the helper (for a thread abandoned at its
    limit, its database hanging) does not keep a stopping worker waiting."""
    entered, release = threading.Event(), threading.Event()

    def hanging_query():
        entered.set()
        release.wait(30)

    async def context_call_from_a_loop():
        task_context._query(hanging_query)  # from a running loop: it goes to the helper

    caller = threading.Thread(target=asyncio.run, args=(context_call_from_a_loop(),), daemon=True)
    caller.start()
    try:
        assert entered.wait(10)
        task_context.shutdown_off_loop(wait_seconds=0.1)
        # Returned while the query still runs: the stop did not wait for it.
        assert caller.is_alive() and not release.is_set()
        assert task_context._off_loop is None
        assert "event=context_helper_busy" in caplog.text
    finally:
        release.set()
        caller.join(10)
    assert not caller.is_alive()
