"""The task history in the admin: read-only pages and the two actions."""

import re

import pytest
from django.contrib.admin.utils import quote  # admin URLs escape "_" and friends in ids
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission
from django.test import Client

from tasks.queue.backend import queue_for
from django.utils import timezone

from tasks.models import PublishedMessage, ReceivedMessage, TaskRecord, TaskStatus
from tasks.tasks import add
from tasks.worker.loop import Worker
from tests.fixture_tasks import append_to_file
from tests.outage import cut_off_redis

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "/admin/tasks/taskrecord/"
QUEUE = "task:prodcons:queue"


def drain():
    return Worker(burst=True, worker_id="admin-test-worker").run()


@pytest.fixture
def failed_write(tmp_path, settings):
    """A task that failed because its directory is missing; one attempt allowed."""
    settings.MQ_MAX_ATTEMPTS = 1
    target = tmp_path / "missing" / "out.txt"
    result = append_to_file.enqueue(str(target), "written")
    drain()
    row = TaskRecord.objects.get(id=result.id)
    assert (row.status, row.attempts) == (TaskStatus.FAILED, 1)
    return row, target


def staff_client(django_user_model, *codenames):
    user = django_user_model.objects.create_user("staff", password="pw-staff-123", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="tasks", codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def run_action(client, action, *ids):
    return client.post(CHANGELIST, {"action": action, ACTION_CHECKBOX_NAME: list(ids)}, follow=True)


# --- pages -------------------------------------------------------------------
def test_changelist_search_filter_and_dates_render_for_superuser(admin_client):
    done = add.enqueue(2, 3)
    drain()
    pending = add.enqueue(1, 1)
    page = admin_client.get(CHANGELIST)
    assert page.status_code == 200
    assert done.id in page.content.decode() and pending.id in page.content.decode()
    searched = admin_client.get(CHANGELIST, {"q": done.id}).content.decode()
    assert done.id in searched and pending.id not in searched
    filtered = admin_client.get(CHANGELIST, {"status__exact": "READY"}).content.decode()
    assert pending.id in filtered and done.id not in filtered
    row = TaskRecord.objects.get(id=done.id)
    by_day = admin_client.get(CHANGELIST, {"enqueued_at__year": row.enqueued_at.year, "enqueued_at__month": row.enqueued_at.month})
    assert by_day.status_code == 200
    assert admin_client.get(CHANGELIST, {"task_path": "tasks.tasks.add", "queue": "default"}).status_code == 200


def test_changelist_filters_by_priority_and_delay(admin_client):
    from datetime import timedelta

    from django.utils import timezone

    urgent = add.using(priority=5).enqueue(1, 2)
    plain = add.enqueue(1, 2)
    later = add.using(priority=-5, run_after=timezone.now() + timedelta(hours=1)).enqueue(1, 2)
    page = admin_client.get(CHANGELIST).content.decode()
    assert "Priority" in page and "Delayed until" in page
    by_priority = {value: admin_client.get(CHANGELIST, {"priority": value}).content.decode() for value in ("above", "zero", "below")}
    assert urgent.id in by_priority["above"] and plain.id not in by_priority["above"] and later.id not in by_priority["above"]
    assert plain.id in by_priority["zero"] and urgent.id not in by_priority["zero"]
    assert later.id in by_priority["below"] and plain.id not in by_priority["below"]
    delayed = admin_client.get(CHANGELIST, {"delayed": "later"}).content.decode()
    assert later.id in delayed and urgent.id not in delayed and plain.id not in delayed


def test_change_view_is_read_only_and_pretty_prints(admin_client, failed_write):
    row, _ = failed_write
    page = admin_client.get(f"{CHANGELIST}{quote(row.id)}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'name="_save"' not in html  # nothing to edit
    assert "FileNotFoundError" in html and "Traceback (most recent call last)" in html
    assert "<pre" in html and "&quot;written&quot;" in html
    assert admin_client.get(f"{CHANGELIST}add/").status_code == 403


def test_non_staff_is_sent_to_login(client, django_user_model):
    user = django_user_model.objects.create_user("visitor", password="pw-visitor-123")
    client.force_login(user)
    response = client.get(CHANGELIST)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_view_only_staff_sees_history_but_cannot_requeue(django_user_model, failed_write, redis_client):
    row, _ = failed_write
    client = staff_client(django_user_model, "view_taskrecord")
    page = client.get(CHANGELIST)
    assert page.status_code == 200 and row.id in page.content.decode()
    assert "requeue_tasks" not in page.content.decode()
    assert client.get(f"{CHANGELIST}{quote(row.id)}/change/").status_code == 200
    run_action(client, "requeue_tasks", row.id)
    run_action(client, "purge_dead_letters", row.id)
    row.refresh_from_db()
    assert row.status == TaskStatus.FAILED
    assert redis_client.llen(QUEUE) == 0
    assert len(queue_for("default").dead_letters()) == 1


# --- actions -----------------------------------------------------------------
def test_requeue_runs_a_failed_task_again_under_the_same_id(admin_client, failed_write, redis_client):
    row, target = failed_write
    response = run_action(admin_client, "requeue_tasks", row.id)
    assert "Re-enqueued 1 task." in response.content.decode()
    requeued = TaskRecord.objects.get(id=row.id)
    assert (requeued.status, requeued.attempts, requeued.finished_at) == (TaskStatus.READY, 0, None)
    assert len(requeued.errors) == 1  # the failed attempt stays in the history
    assert redis_client.llen(QUEUE) == 1
    target.parent.mkdir()  # the operator fixed the cause
    assert drain() == 1
    done = TaskRecord.objects.get(id=row.id)
    assert (done.status, done.result, done.attempts) == (TaskStatus.SUCCESSFUL, "written", 1)
    assert [e["attempt"] for e in done.errors] == [1]
    assert target.read_text() == "written\n"
    assert TaskRecord.objects.count() == 1


def test_staff_with_change_permission_may_requeue(django_user_model, failed_write):
    row, _ = failed_write
    client = staff_client(django_user_model, "view_taskrecord", "change_taskrecord")
    assert "requeue_tasks" in client.get(CHANGELIST).content.decode()
    run_action(client, "requeue_tasks", row.id)
    assert TaskRecord.objects.get(id=row.id).status == TaskStatus.READY


def test_requeue_skips_tasks_that_did_not_fail(admin_client, redis_client):
    pending = add.enqueue(1, 2)
    response = run_action(admin_client, "requeue_tasks", pending.id)
    assert "Skipped 1 task" in response.content.decode()
    assert redis_client.llen(QUEUE) == 1  # only the original push


def test_requeue_with_redis_down_changes_nothing(admin_client, failed_write, settings):
    row, _ = failed_write
    cut_off_redis(settings)
    response = run_action(admin_client, "requeue_tasks", row.id)
    assert "Redis refused the task" in response.content.decode()
    after = TaskRecord.objects.get(id=row.id)
    assert (after.status, after.attempts, after.finished_at) == (TaskStatus.FAILED, 1, row.finished_at)


def test_purge_dead_letters_empties_the_queue_dead_list(admin_client, failed_write):
    row, _ = failed_write
    assert [entry["id"] for entry in queue_for("default").dead_letters()] == [row.id]
    response = run_action(admin_client, "purge_dead_letters", row.id)
    assert "Purged the dead-letter list of queue(s): default." in response.content.decode()
    assert queue_for("default").dead_letters() == []
    assert TaskRecord.objects.get(id=row.id).status == TaskStatus.FAILED  # history stays


def test_the_list_shows_short_ids_coloured_statuses_duration_and_seconds(admin_client):
    started = timezone.now().replace(microsecond=0)
    row = TaskRecord.objects.create(
        id="abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", task_path="tasks.tasks.add", queue="default",
        status=TaskStatus.SUCCESSFUL, enqueued_at=started, started_at=started,
        finished_at=started + timezone.timedelta(seconds=1.25), attempts=2,
    )
    page = admin_client.get(CHANGELIST).content.decode()
    assert '<span title="abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG">abcdefgh…</span>' in page
    assert '<span class="mq-status mq-status-successful">Successful</span>' in page
    assert "1.250 s" in page
    finished = timezone.localtime(row.finished_at)
    assert f'title="{finished:%Y-%m-%d %H:%M:%S}">{finished:%H:%M:%S}</time>' in page  # today: the time alone
    headers = re.findall(r'<th scope="col" class="[^"]*column-(\w+)', page)
    assert headers == ["short_id", "status_badge", "task_path", "queue", "priority", "attempts", "task_progress", "duration", "run_after_s", "finished"]
    old = timezone.now() - timezone.timedelta(days=3)
    TaskRecord.objects.filter(id=row.id).update(finished_at=old)
    assert f">{timezone.localtime(old):%Y-%m-%d %H:%M:%S}</time>" in admin_client.get(CHANGELIST).content.decode()
    assert "<title>Select task record to view | mqsite</title>" in page and ">mqsite</a>" in page
    assert "/static/tasks/admin.css" in page


def _column_by_row(page, column):
    """{task id: the cell of ``column``} of each row of a changelist page."""
    rows = re.findall(r"<tr>(.*?)</tr>", page, re.S)
    cells = {}
    for row in rows:
        task_id = re.search(r'name="_selected_action" value="([^"]+)"', row)
        cell = re.search(rf'<td class="field-{column}">(.*?)</td>', row, re.S)
        if task_id and cell:
            cells[task_id.group(1)] = cell.group(1)
    return cells


def test_delayed_until_shows_only_for_open_tasks(admin_client):
    """A finished task's run_after is when it was once due: stale, so its row
    shows the admin's empty value there; an open task's shows the time."""
    from django.contrib import admin
    from django.contrib.admin.utils import display_for_field

    now = timezone.now().replace(microsecond=0)
    later, earlier = now + timezone.timedelta(hours=1), now - timezone.timedelta(minutes=5)
    rows = {
        "delayed-task": (TaskStatus.READY, later),
        "running-task": (TaskStatus.RUNNING, earlier),
        "finished-task": (TaskStatus.SUCCESSFUL, earlier),
        "failed-task": (TaskStatus.FAILED, earlier),
        "cancelled-task": (TaskStatus.CANCELLED, later),  # cancelled while it waited: never runs
        "plain-task": (TaskStatus.READY, None),
    }
    for task_id, (status, run_after) in rows.items():
        finished_at = None if status in (TaskStatus.READY, TaskStatus.RUNNING) else now
        TaskRecord.objects.create(
            id=task_id, task_path="tasks.tasks.add", status=status, enqueued_at=now - timezone.timedelta(hours=1),
            run_after=run_after, finished_at=finished_at,
        )
    cells = _column_by_row(admin_client.get(CHANGELIST).content.decode(), "run_after_s")
    assert set(cells) == set(rows)

    def shown(moment):
        local = timezone.localtime(moment)
        return f'<time datetime="{moment.isoformat()}" title="{local:%Y-%m-%d %H:%M:%S}">'

    assert cells["delayed-task"].startswith(shown(later))
    assert cells["running-task"].startswith(shown(earlier))
    empty = admin.site.empty_value_display
    assert [cells[i] for i in ("finished-task", "failed-task", "cancelled-task", "plain-task")] == [empty] * 4
    # The task's own page keeps the value: there it is history, not a promise.
    page = admin_client.get(f"{CHANGELIST}cancelled-task/change/").content.decode()
    value = display_for_field(later, TaskRecord._meta.get_field("run_after"), empty)
    assert re.search(r"<label>Delayed until:</label>\s*<div class=\"readonly\">" + re.escape(value) + "</div>", page)


def test_message_titles_say_what_was_said_and_to_how_many():
    now = timezone.now()
    message = PublishedMessage(channel="orders", payload='{"id": 7, "items": ["tea", "cake", "more"]}', published_at=now, receivers=2)
    assert str(message) == 'orders: {"id": 7, "items": ["tea... -> 2 listeners'
    assert str(PublishedMessage(channel="c", payload="hi\nthere", published_at=now, receivers=1)) == "c: hi there -> 1 listener"
    assert str(ReceivedMessage(listener="l1", channel="c", payload="short", received_at=now)) == "l1 <- c: short"
