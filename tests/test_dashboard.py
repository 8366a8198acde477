"""The index's charts, running tasks and dead letters, and the staff's
re-enqueue button, against the suite's real Redis and a real (in-process)
worker whose acknowledgements write the counters the charts read."""

import re

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from tasks.models import TaskRecord, TaskStatus
from tasks.queue.backend import queue_for
from tasks.tasks import always_fails, cook_dish
from tasks.web.charts import QueueChart, bars, per_second, percentile, rate_polylines
from tasks.worker.loop import Worker

pytestmark = pytest.mark.django_db(transaction=True)
QUEUE = "task:prodcons:queue"


def user(name, *codenames, staff=False):
    account = get_user_model().objects.create_user(name, password=f"pw-{name}-123", is_staff=staff)
    account.user_permissions.add(*Permission.objects.filter(content_type__app_label="tasks", codename__in=codenames))
    return account


def section(page, start, end):
    return page[page.index(start):page.index(end, page.index(start))]


@pytest.fixture
def ran(settings):
    """Five successes and two failures (one attempt each), run by a worker."""
    settings.MQ_MAX_ATTEMPTS = 1
    results = [cook_dish.enqueue(n) for n in range(5)] + [always_fails.enqueue() for _ in range(2)]
    assert Worker(burst=True, worker_id="chart-worker").run() == 7
    return results


def test_the_charts_render_with_no_data(client):
    page = client.get("/").content.decode()
    charts = section(page, '<section id="charts"', "</section>")
    assert charts.count("<svg") >= 1 and "<polyline" in charts  # a flat line at zero
    assert "0 succeeded, 0 failed" in charts
    assert "No task has started lately." in charts
    assert "No task is running." in section(page, '<table id="running-tasks"', "</table>")
    assert "No dead letters." in section(page, '<ul id="dead-letters"', "</ul>")


def test_a_worker_run_writes_the_counters_and_the_index_draws_them(client, ran, redis_client):
    queue = queue_for("default")
    rates = queue.rates()
    assert (sum(rates["ok"]), sum(rates["err"])) == (5, 2)
    latencies = queue.latencies()
    assert len(latencies) == 7 and all(ms >= 0 for ms in latencies)
    assert all(0 < redis_client.ttl(key) <= 420 for key in redis_client.scan_iter(f"{{{QUEUE}}}:rates:*"))

    page = client.get("/").content.decode()
    charts = section(page, '<section id="charts"', "</section>")
    assert "5 succeeded, 2 failed" in charts
    ok_line = re.search(r'<polyline class="line-ok" points="([^"]+)"', charts).group(1)
    heights = [float(point.split(",")[1]) for point in ok_line.split()]
    assert min(heights) < max(heights)  # the successes rise above the zero line
    latency = section(page, '<table id="latency"', "</table>")
    assert re.search(r"<td>default</td>(<td class=\"num\">[\d.]+ ms</td>){3}<td class=\"num\">7</td>", latency)
    dead = section(page, '<ul id="dead-letters"', "</ul>")
    assert dead.count("<li>") == 2 and "tasks.tasks.always_fails" in dead and "RuntimeError" in dead
    assert 'name="requeue"' not in dead  # anonymous: no button


def test_running_tasks_show_their_worker_and_how_long(client):
    started = timezone.now() - timezone.timedelta(seconds=42)
    TaskRecord.objects.create(
        id="running-1", task_path="tasks.tasks.noop", queue="default", status=TaskStatus.RUNNING,
        enqueued_at=started, started_at=started, worker="w-busy", attempts=1,
    )
    running = section(client.get("/").content.decode(), '<table id="running-tasks"', "</table>")
    assert '<a href="/tasks/running-1">' in running and "w-busy" in running
    assert re.search(r">4[2-9]\.\d s<", running)  # seconds it has run, read at render time
    assert re.search(r'<time datetime="[^"]+" title="[^"]+">4\d s ago</time>', running)


def test_ages_are_times_with_the_iso_moment_on_hover(client, ran):
    # The worker's heartbeat: "last seen" reads as an age, not raw ISO.
    Worker(burst=True, worker_id="seen-worker")
    page = client.get("/").content.decode()
    assert re.search(r'<time datetime="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00" title="\d{4}-[^"]+">\d+ s ago</time>', page)


def test_staff_with_the_operate_permission_see_a_requeue_button_per_failed_letter(ran):
    staff = Client()
    staff.force_login(user("ops", "change_taskrecord", staff=True))
    dead = section(staff.get("/").content.decode(), '<ul id="dead-letters"', "</ul>")
    failed = [r.id for r in ran[5:]]
    for task_id in failed:
        assert f'<button type="submit" name="requeue" value="{task_id}"' in dead
    not_staff = Client()
    not_staff.force_login(user("viewer", "change_taskrecord"))
    assert 'name="requeue"' not in not_staff.get("/").content.decode()


def test_requeue_needs_login_permission_staff_and_csrf_and_get_changes_nothing(ran, redis_client):
    task_id = ran[5].id
    before = redis_client.llen(QUEUE)

    def unchanged():
        assert TaskRecord.objects.get(id=task_id).status == TaskStatus.FAILED
        assert redis_client.llen(QUEUE) == before

    anonymous = Client()
    response = anonymous.post("/dead-letters/requeue", {"requeue": task_id})
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    unchanged()
    for account in (user("plain", staff=True), user("nonstaff", "change_taskrecord")):
        client = Client()
        client.force_login(account)
        assert client.post("/dead-letters/requeue", {"requeue": task_id}).status_code == 403
        unchanged()
    ops = Client(enforce_csrf_checks=True)
    ops.force_login(user("ops", "change_taskrecord", staff=True))
    assert ops.post("/dead-letters/requeue", {"requeue": task_id}).status_code == 403  # no CSRF token
    unchanged()
    assert ops.get("/dead-letters/requeue", {"requeue": task_id}).status_code == 405
    unchanged()

    ops.get("/")
    token = ops.cookies["csrftoken"].value
    response = ops.post("/dead-letters/requeue", {"requeue": task_id, "csrfmiddlewaretoken": token})
    assert response.status_code == 303 and response["Location"] == "/#dead-letters"
    assert TaskRecord.objects.get(id=task_id).status == TaskStatus.READY
    assert redis_client.llen(QUEUE) == before + 1
    assert f"Re-enqueued task {task_id}." in ops.get("/").content.decode()


@pytest.mark.parametrize("task_id", ["", "missing", "a\x00b", "x" * 5000])
def test_requeue_of_an_unknown_or_hostile_id_changes_nothing(task_id, redis_client):
    ops = Client()
    ops.force_login(user("ops", "change_taskrecord", staff=True))
    response = ops.post("/dead-letters/requeue", {"requeue": task_id}, follow=True)
    assert response.status_code == 200 and "No task with that id is in the history." in response.content.decode()
    assert redis_client.llen(QUEUE) == 0


def test_requeue_of_a_successful_task_is_refused(ran, redis_client):
    ops = Client()
    ops.force_login(user("ops", "change_taskrecord", staff=True))
    done = ran[0].id
    page = ops.post("/dead-letters/requeue", {"requeue": done}, follow=True).content.decode()
    assert "Only a failed or dead task" in page
    assert TaskRecord.objects.get(id=done).status == TaskStatus.SUCCESSFUL and redis_client.llen(QUEUE) == 0


@pytest.mark.no_redis
def test_chart_arithmetic():
    assert percentile([5, 1, 4, 2, 3], 50) == 3 and percentile([5, 1, 4, 2, 3], 99) == 5 and percentile([7], 90) == 7
    assert per_second([1, 1, 1, 1, 1, 0, 0, 0, 0, 5], step=5) == [1.0, 1.0]
    assert bars([("a", 0), ("b", 0)]) == [("a", 0, 0), ("b", 0, 0)]
    assert bars([("a", 5), ("b", 10)]) == [("a", 5, 50.0), ("b", 10, 100.0)]
    flat = rate_polylines(QueueChart("q", [0.0] * 60, [0.0] * 60, {}, 0))
    assert flat["top"] == 1 and len(flat["ok"].split()) == 60
    peak = rate_polylines(QueueChart("q", [0.0] * 59 + [37.0], [0.0] * 60, {}, 0))
    assert peak["top"] == 50 and peak["ok"].split()[-1] == "600.0,38.6"  # 10 + 110 - 37/50 * 110
