"""Cancellation (DESIGN section 9): a READY, delayed or batched task never
runs; a RUNNING one is told through its context; a finished one is refused."""

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from tasks.exceptions import TaskAlreadyFinished
from tasks.models import TaskRecord, TaskStatus
from tasks.queue.backend import cancel, queue_for
from tasks.worker.loop import Worker
from tests.fixture_tasks import append_to_file, until_cancelled
from tests.processes import manage, run_manage, stop, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

AUTH = {"HTTP_AUTHORIZATION": "Bearer test-token"}


def runs(path):
    return path.read_text().split() if path.exists() else []


def status(result):
    return TaskRecord.objects.get(id=result.id).status


def test_a_cancelled_ready_task_never_runs(redis_client, tmp_path):
    log = tmp_path / "runs.txt"
    doomed = append_to_file.enqueue(str(log), "doomed")
    kept = append_to_file.enqueue(str(log), "kept")
    assert cancel(doomed.id) == TaskStatus.CANCELLED
    Worker(burst=True).run()
    assert runs(log) == ["kept"]
    assert status(doomed) == TaskStatus.CANCELLED and status(kept) == TaskStatus.SUCCESSFUL
    assert append_to_file.get_result(doomed.id).status == "FAILED"  # through the Tasks API


def test_a_cancelled_delayed_task_never_runs(redis_client, tmp_path):
    log = tmp_path / "runs.txt"
    later = append_to_file.using(run_after=timezone.now() + timedelta(seconds=30)).enqueue(str(log), "later")
    assert cancel(later.id) == TaskStatus.CANCELLED
    queue_for("default").promote_due(now=time.time() + 3600)  # it becomes due anyway
    Worker(burst=True).run()
    assert runs(log) == []
    assert status(later) == TaskStatus.CANCELLED


@pytest.mark.slow
def test_cancelled_tasks_in_a_workers_batch_never_run(redis_url, tmp_path):
    started, log = tmp_path / "started.txt", tmp_path / "runs.txt"
    # A worker's first batch is one task; the next grows to MQ_MAX_BATCH when the
    # first ran well inside MQ_BATCH_TARGET_SECONDS, which a long target makes
    # sure of however loaded the machine is.
    append_to_file.enqueue(str(tmp_path / "warm-up.txt"), "warm-up")
    first = until_cancelled.enqueue(str(started), 2.0)  # holds the batch while the others are cancelled
    rest = [append_to_file.enqueue(str(log), f"line{n}") for n in range(3)]
    settings = {"MQ_MAX_BATCH": 10, "MQ_BATCH_TARGET_SECONDS": 60}
    worker = manage(redis_url, "listen_queue", "--burst", settings=settings)
    try:
        wait_for(lambda: runs(started), message="the first task to start")
        assert all(status(r) == TaskStatus.RUNNING for r in rest)  # claimed with the batch
        for result in rest:
            assert cancel(result.id) == TaskStatus.RUNNING  # asked; not started yet
        assert worker.wait(60) == 0
    finally:
        stop(worker)
    assert runs(log) == []
    assert [status(r) for r in rest] == [TaskStatus.CANCELLED] * 3
    assert status(first) == TaskStatus.SUCCESSFUL


@pytest.mark.slow
def test_a_running_task_that_checks_its_context_stops(redis_url, client, tmp_path):
    started = tmp_path / "started.txt"
    result = until_cancelled.enqueue(str(started), 60.0)
    worker = manage(redis_url, "listen_queue")
    try:
        wait_for(lambda: runs(started), message="the task to start")
        response = client.post(f"/api/tasks/{result.id}/cancel", **AUTH)
        assert response.status_code == 200
        assert response.json()["status"] == TaskStatus.RUNNING and response.json()["cancel_requested"] is True
        # It would run 60 s if it did not hear the request.
        wait_for(lambda: status(result) == TaskStatus.CANCELLED, timeout=10, message="the task to stop")
    finally:
        stop(worker)
    assert TaskRecord.objects.get(id=result.id).result == "stopped"


def test_cancel_api_answers(redis_client, client, tmp_path):
    result = append_to_file.enqueue(str(tmp_path / "x"), "x")
    response = client.post(f"/api/tasks/{result.id}/cancel", **AUTH)
    assert response.status_code == 200 and response.json()["status"] == TaskStatus.CANCELLED
    again = client.post(f"/api/tasks/{result.id}/cancel", **AUTH)
    assert again.status_code == 409 and "already finished" in again.json()["error"]
    assert client.post("/api/tasks/nope/cancel", **AUTH).status_code == 404
    assert client.post(f"/api/tasks/{result.id}/cancel").status_code == 401
    with pytest.raises(TaskAlreadyFinished):
        cancel(result.id)


def test_queue_status_counts_cancelled(redis_url, tmp_path, capsys):
    result = append_to_file.enqueue(str(tmp_path / "x"), "x")
    cancel(result.id)
    assert TaskRecord.objects.history_counts()[TaskStatus.CANCELLED] == 1
    out = run_manage(redis_url, "queue_status").stdout
    assert "CANCELLED" in out.upper()


def test_the_admin_action_cancels_only_for_operators(django_user_model, admin_client, redis_client, tmp_path):
    from tests.test_task_admin import run_action, staff_client

    waiting = append_to_file.enqueue(str(tmp_path / "x"), "x")
    done = append_to_file.enqueue(str(tmp_path / "y"), "y")
    TaskRecord.objects.filter(id=done.id).update(status=TaskStatus.SUCCESSFUL)
    viewer = staff_client(django_user_model, "view_taskrecord")
    run_action(viewer, "cancel_tasks", waiting.id)
    assert status(waiting) == TaskStatus.READY
    page = run_action(admin_client, "cancel_tasks", waiting.id, done.id).content.decode()
    assert "Cancelled 1 task(s)" in page and "skipped 1 finished" in page
    assert status(waiting) == TaskStatus.CANCELLED and status(done) == TaskStatus.SUCCESSFUL


@pytest.mark.slow
def test_a_running_task_that_ignores_the_request_is_stopped_at_its_time_limit(redis_url, tmp_path):
    from tests.fixture_tasks import sleep_for

    result = sleep_for.enqueue(60)
    options = {"MQ_TASK_OPTIONS": {"tests.fixture_tasks.sleep_for": {"time_limit": 3, "max_attempts": 3}}}
    worker = manage(redis_url, "listen_queue", settings=options)
    try:
        wait_for(lambda: status(result) == TaskStatus.RUNNING, message="the task to start")
        assert cancel(result.id) == TaskStatus.RUNNING
        wait_for(lambda: status(result) == TaskStatus.CANCELLED, timeout=30, message="the time limit to stop it")
    finally:
        stop(worker)
    row = TaskRecord.objects.get(id=result.id)
    assert row.attempts == 1  # stopped, not retried
