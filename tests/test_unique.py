"""Unique tasks (DESIGN section 9): while a copy is READY, delayed or
RUNNING, another enqueue returns it; the database's unique index decides,
also between processes enqueueing at once."""

import json
import subprocess
import sys

import pytest

from tasks.models import TaskRecord, TaskStatus
from tasks.worker.loop import Worker
from tests.fixture_tasks import append_to_file
from tests.processes import BASE_DIR, child_env, run_manage, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

AUTH = {"HTTP_AUTHORIZATION": "Bearer test-token"}
UNIQUE = {"tests.fixture_tasks.append_to_file": {"unique": True}}

ENQUEUE = """
import os, sys, time, django
django.setup()
from tests.fixture_tasks import append_to_file
go = sys.argv[1]
open(f"{go}.ready.{os.getpid()}", "w").close()  # at the starting line
while not os.path.exists(go):
    time.sleep(0.001)
print(append_to_file.enqueue(sys.argv[2], "once").id)
"""


def runs(path):
    return path.read_text().split() if path.exists() else []


@pytest.mark.slow
def test_eight_processes_enqueue_one_unique_task(redis_url, tmp_path, settings):
    settings.MQ_TASK_OPTIONS = UNIQUE
    go, log = tmp_path / "go", tmp_path / "runs.txt"
    env = child_env(redis_url, MQ_TASK_OPTIONS=UNIQUE)
    producers = [
        subprocess.Popen([sys.executable, "-c", ENQUEUE, str(go), str(log)], env=env, cwd=BASE_DIR, stdout=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    # Go once all eight have started Django and wait at the line.
    wait_for(lambda: len(list(tmp_path.glob("go.ready.*"))) == 8, timeout=60, message="eight producers ready")
    go.touch()
    ids = {producer.communicate(timeout=60)[0].strip() for producer in producers}
    assert all(producer.returncode == 0 for producer in producers)
    assert len(ids) == 1 and TaskRecord.objects.count() == 1
    assert run_manage(redis_url, "listen_queue", "--burst", settings={"MQ_TASK_OPTIONS": UNIQUE}).returncode == 0
    assert runs(log) == ["once"]
    [first] = ids
    assert TaskRecord.objects.get(id=first).status == TaskStatus.SUCCESSFUL
    again = append_to_file.enqueue(str(log), "once")  # the copy finished: a new task
    assert again.id != first and TaskRecord.objects.count() == 2


def test_a_unique_task_returns_its_open_copy_until_it_finishes(redis_client, tmp_path, settings):
    settings.MQ_TASK_OPTIONS = UNIQUE
    log = str(tmp_path / "runs.txt")
    first = append_to_file.enqueue(log, "a")
    assert append_to_file.enqueue(log, "a").id == first.id
    other = append_to_file.enqueue(log, "b")  # other arguments, another task
    assert other.id != first.id
    assert Worker(burst=True).run() == 2
    assert append_to_file.enqueue(log, "a").id != first.id


def test_an_explicit_key_through_the_backend_and_the_api(redis_client, client, tmp_path):
    log = str(tmp_path / "runs.txt")
    backend = append_to_file.get_backend()
    first, created = backend.enqueue_unique(append_to_file, [log, "x"], {}, key="nightly")
    assert created
    same, created = backend.enqueue_unique(append_to_file, [log, "other args"], {}, key="nightly")
    assert (same.id, created) == (first.id, False)
    body = {"task": "tests.fixture_tasks.append_to_file", "args": [log, "y"], "unique_key": "nightly"}
    response = client.post("/api/tasks", json.dumps(body), content_type="application/json", **AUTH)
    assert response.status_code == 200 and response.json()["id"] == first.id
    body["unique_key"] = "another"
    response = client.post("/api/tasks", json.dumps(body), content_type="application/json", **AUTH)
    assert response.status_code == 202 and response.json()["id"] != first.id
    body["unique_key"] = 5
    assert client.post("/api/tasks", json.dumps(body), content_type="application/json", **AUTH).status_code == 400


# --- every other way in: bulk, the shell, a schedule, the admin's re-enqueue ---------
def test_a_bulk_enqueue_of_a_unique_task_opens_one_copy_per_key(redis_client, tmp_path, settings):
    settings.MQ_TASK_OPTIONS = UNIQUE
    log = str(tmp_path / "runs.txt")
    first = append_to_file.enqueue(log, "a")
    results = append_to_file.get_backend().enqueue_many(append_to_file, [((log, "a"), {}), ((log, "b"), {}), ((log, "b"), {})])
    assert results[0].id == first.id and results[1].id == results[2].id != first.id
    assert TaskRecord.objects.filter(status=TaskStatus.READY).count() == 2
    assert redis_client.llen("task:prodcons:queue") == 2


def test_the_enqueue_command_prints_the_open_copy_of_a_unique_task(redis_url, tmp_path, settings):
    settings.MQ_TASK_OPTIONS = UNIQUE
    log = str(tmp_path / "runs.txt")
    first = append_to_file.enqueue(log, "a")
    argv = ["enqueue", "tests.fixture_tasks.append_to_file", "--args", json.dumps([log, "a"]), "--count", "2"]
    done = run_manage(redis_url, *argv, settings={"MQ_TASK_OPTIONS": UNIQUE})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [first.id, first.id]
    assert TaskRecord.objects.count() == 1


def test_a_schedule_does_not_open_a_second_copy_of_a_unique_task(redis_client, tmp_path, settings):
    from datetime import datetime, timedelta, timezone

    from tasks.worker.scheduler import fire_due

    log = str(tmp_path / "runs.txt")
    settings.MQ_TASK_OPTIONS = UNIQUE
    settings.MQ_SCHEDULES = {"tick": {"task": "tests.fixture_tasks.append_to_file", "cron": "* * * * * *", "args": [log, "t"]}}
    start = datetime(2030, 1, 1, tzinfo=timezone.utc)
    fire_due(start)  # the schedule is seen: it starts from then
    first = fire_due(start + timedelta(seconds=1))
    assert len(first) == 1
    assert fire_due(start + timedelta(seconds=2)) == []  # the first tick's copy is still READY
    assert TaskRecord.objects.filter(status=TaskStatus.READY).count() == 1
    Worker(burst=True).run()
    assert len(fire_due(start + timedelta(seconds=3))) == 1  # done: the next tick fires


def test_re_enqueueing_a_failed_copy_while_another_is_open_is_skipped(redis_client, admin_client, tmp_path, settings):
    """The open copy's key held the database's unique index: an IntegrityError,
    a 500, and the rest of the selection not re-enqueued."""
    settings.MQ_TASK_OPTIONS = UNIQUE
    log = str(tmp_path / "runs.txt")
    failed = append_to_file.enqueue(log, "a").id
    TaskRecord.objects.filter(id=failed).update(status=TaskStatus.FAILED)
    open_copy = append_to_file.enqueue(log, "a").id
    other = append_to_file.enqueue(log, "b").id
    TaskRecord.objects.filter(id=other).update(status=TaskStatus.FAILED)
    page = admin_client.post("/admin/tasks/taskrecord/", {"action": "requeue_tasks", "_selected_action": [failed, other]}, follow=True)
    assert page.status_code == 200
    assert "Re-enqueued 1 task." in page.content.decode() and "Skipped 1 task" in page.content.decode()
    statuses = dict(TaskRecord.objects.values_list("id", "status"))
    assert statuses == {failed: TaskStatus.FAILED, open_copy: TaskStatus.READY, other: TaskStatus.READY}
