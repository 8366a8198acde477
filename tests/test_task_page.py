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


def test_an_unfinished_task_reloads_itself_and_shows_its_progress(client):
    task = row(TaskStatus.RUNNING, attempts=1, worker="w1", started_at=timezone.now(), progress={"done": 3, "total": 10, "text": "resizing"})
    client.force_login(reader())
    page = client.get(f"/tasks/{task.id}").content.decode()
    assert '<meta http-equiv="refresh" content="2">' in page
    assert "RUNNING" in page and "w1" in page
    assert '<progress value="3" max="10">' in page and "resizing" in page


def test_a_finished_task_stops_reloading_and_shows_its_result_duration_and_failed_attempts(client):
    started = timezone.now()
    errors = [{"exception": "builtins.ValueError", "traceback": "Traceback: boom", "worker": "w1", "at": "then"}]
    task = row(
        TaskStatus.SUCCESSFUL, attempts=2, worker="w2", started_at=started,
        finished_at=started + timezone.timedelta(seconds=1.5), result={"sum": 5}, errors=errors,
    )
    client.force_login(reader())
    page = client.get(f"/tasks/{task.id}").content.decode()
    assert "http-equiv" not in page
    assert "1.500 s" in page and "{&#x27;sum&#x27;: 5}" in page
    assert "builtins.ValueError" in page and "Traceback: boom" in page
    assert f"/admin/tasks/taskrecord/{task.id}/change/" in page


@pytest.mark.parametrize("task_id", ["missing", "a%00b", "x" * 5000])
def test_an_unknown_or_impossible_id_is_404(client, task_id):
    client.force_login(reader())
    assert client.get(f"/tasks/{task_id}").status_code == 404


def test_get_only(client):
    task = row(TaskStatus.READY)
    client.force_login(reader())
    assert client.post(f"/tasks/{task.id}").status_code == 405
