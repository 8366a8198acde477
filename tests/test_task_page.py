"""/tasks/<id>: one task's page, for people who may read the history."""

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone

from tasks.models import TaskRecord, TaskStatus

pytestmark = pytest.mark.django_db


def reader():
    user = User.objects.create_user("reader", password="pw")
    user.user_permissions.add(Permission.objects.get(codename="view_taskrecord"))
    return user


def row(status, **fields):
    now = timezone.now()
    return TaskRecord.objects.create(
        id=f"page-{status.lower()}", task_path="tasks.tasks.add", queue="default", status=status, enqueued_at=now, **fields
    )


def test_anonymous_users_go_to_the_login_page_and_others_need_the_view_permission(client):
    task = row(TaskStatus.READY)
    response = client.get(f"/tasks/{task.id}")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/?next=/tasks/")
    client.force_login(User.objects.create_user("nobody", password="pw"))
    assert client.get(f"/tasks/{task.id}").status_code == 403


def test_an_unfinished_task_is_polled_live_and_shows_its_progress(client):
    task = row(TaskStatus.RUNNING, attempts=1, worker="w1", started_at=timezone.now(), progress={"done": 3, "total": 10, "text": "resizing"})
    client.force_login(reader())
    page = client.get(f"/tasks/{task.id}").content.decode()
    assert "http-equiv" not in page  # no reload: task.js polls the status JSON
    assert f'data-status-url="/tasks/{task.id}/status"' in page and "data-final" not in page
    assert '<span id="task-status" class="status status-running" data-status="RUNNING">Running</span>' in page
    assert 'id="task-progress-bar" value="3" max="10"' in page and "resizing" in page
    assert 'id="task-progress" hidden' not in page
    # The running attempt is on the timeline, without a duration yet.
    attempts = page[page.index('id="task-attempts"'):]
    assert "Attempt 1" in attempts and "w1" in attempts and "running" in attempts


def test_a_finished_task_stops_reloading_and_shows_its_result_duration_and_failed_attempts(client):
    started = timezone.now()
    errors = [{"exception": "builtins.ValueError", "traceback": "Traceback: boom", "worker": "w1", "at": "then"}]
    task = row(
        TaskStatus.SUCCESSFUL, attempts=2, worker="w2", started_at=started,
        finished_at=started + timezone.timedelta(seconds=1.5), result={"sum": 5}, errors=errors,
    )
    client.force_login(reader())
    page = client.get(f"/tasks/{task.id}").content.decode()
    assert "data-final" in page and 'data-status="SUCCESSFUL"' in page
    assert 'id="task-progress" hidden' in page and 'id="task-result"' in page
    assert "1.500 s" in page and "{&#x27;sum&#x27;: 5}" in page
    assert "builtins.ValueError" in page and "Traceback: boom" in page
    assert f"/admin/tasks/taskrecord/{task.id}/change/" in page


def test_the_admin_link_quotes_the_id_as_the_admin_reads_it(client):
    # Task ids use "_": unquoted, the admin reads "_5B" in an id as "[" and
    # answers with a redirect instead of the task.
    task = row(TaskStatus.READY)
    task.id = "page_5Bx"
    task.save()
    client.force_login(reader())
    page = client.get(f"/tasks/{task.id}").content.decode()
    assert '/admin/tasks/taskrecord/page_5F5Bx/change/' in page


def test_delayed_until_shows_only_while_the_task_waits(client):
    # A finished task's run_after is when it was once due: stale on its page.
    later = timezone.now() + timezone.timedelta(hours=1)
    delayed, done = row(TaskStatus.READY, run_after=later), row(TaskStatus.SUCCESSFUL, run_after=later, finished_at=timezone.now())
    client.force_login(reader())
    assert "delayed until" in client.get(f"/tasks/{delayed.id}").content.decode()
    assert "delayed until" not in client.get(f"/tasks/{done.id}").content.decode()


@pytest.mark.parametrize("task_id", ["missing", "a%00b", "x" * 5000])
def test_an_unknown_or_impossible_id_is_404(client, task_id):
    client.force_login(reader())
    assert client.get(f"/tasks/{task_id}").status_code == 404


def test_get_only(client):
    task = row(TaskStatus.READY)
    client.force_login(reader())
    assert client.post(f"/tasks/{task.id}").status_code == 405


def test_the_timeline_lists_every_attempt_with_worker_start_duration_and_error(client):
    started = timezone.now()
    errors = [
        {"exception": "builtins.ValueError", "traceback": "tb1", "attempt": 1, "worker": "w1", "at": started.isoformat(), "duration": 0.25},
        # An entry written before workers kept durations: no start, no duration, still listed.
        {"exception": "builtins.KeyError", "traceback": "tb2", "attempt": 2, "worker": "w2", "at": "not a time"},
    ]
    task = row(TaskStatus.SUCCESSFUL, attempts=3, worker="w3", started_at=started, finished_at=started + timezone.timedelta(seconds=2), errors=errors)
    client.force_login(reader())
    page = client.get(f"/tasks/{task.id}").content.decode()
    timeline = page[page.index('id="task-attempts"'):page.index('id="task-result"')]
    assert [timeline.index(f"Attempt {n}") for n in (1, 2, 3)] == sorted(timeline.index(f"Attempt {n}") for n in (1, 2, 3))
    assert "0.250 s" in timeline and "2.000 s" in timeline
    assert "builtins.ValueError" in timeline and "builtins.KeyError" in timeline
    assert timeline.count("<time datetime=") == 2  # attempts 1 and 3 know their start


def test_a_failed_tasks_last_error_is_its_last_attempt_not_a_second_entry(client):
    errors = [{"exception": "builtins.ValueError", "traceback": "tb", "attempt": 1, "worker": "w1", "at": timezone.now().isoformat(), "duration": 1}]
    task = row(TaskStatus.FAILED, attempts=1, worker="w1", started_at=timezone.now(), finished_at=timezone.now(), errors=errors)
    client.force_login(reader())
    page = client.get(f"/tasks/{task.id}").content.decode()
    assert page.count("Attempt ") == 1 and "No result" in page


def test_the_status_json_gives_the_machine_status_its_label_and_progress(client):
    task = row(TaskStatus.RUNNING, attempts=1, worker="w1", progress={"done": 1, "total": 4})
    client.force_login(reader())
    response = client.get(f"/tasks/{task.id}/status")
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    assert response.json() == {
        "id": task.id, "status": "RUNNING", "label": "Running", "final": False, "attempts": 1, "worker": "w1",
        "progress": {"done": 1, "total": 4},
    }
    TaskRecord.objects.filter(id=task.id).update(status=TaskStatus.SUCCESSFUL)
    assert client.get(f"/tasks/{task.id}/status").json()["final"] is True
    korean = client.get(f"/tasks/{task.id}/status", HTTP_ACCEPT_LANGUAGE="ko").json()
    assert korean["status"] == "SUCCESSFUL" and korean["label"] == "성공"


def test_the_status_json_refuses_with_json_not_a_login_redirect(client):
    task = row(TaskStatus.READY)
    response = client.get(f"/tasks/{task.id}/status")
    assert response.status_code == 403 and response.json() == {"error": "forbidden"}
    client.force_login(User.objects.create_user("nobody", password="pw"))
    assert client.get(f"/tasks/{task.id}/status").status_code == 403


@pytest.mark.parametrize("task_id", ["missing", "a%00b", "x" * 5000, "%ED%A0%80", "<script>", "' OR 1=1 --"])
def test_the_status_json_of_an_unknown_or_hostile_id_is_a_json_404(client, task_id):
    client.force_login(reader())
    response = client.get(f"/tasks/{task_id}/status")
    assert response.status_code == 404 and response.json() == {"error": "not_found"}


def test_a_path_outside_the_route_is_a_plain_404(client):
    client.force_login(reader())
    assert client.get("/tasks/..%2F..%2Fetc/status").status_code == 404


def test_the_status_json_is_read_only(client):
    task = row(TaskStatus.READY)
    client.force_login(reader())
    assert client.post(f"/tasks/{task.id}/status").status_code == 405
    assert TaskRecord.objects.get(id=task.id).status == TaskStatus.READY
