"""GET /api/tasks: newest first, filters, cursor pages, refusals."""

from datetime import timedelta

import pytest
from django.utils import timezone

from tasks.models import TaskRecord, TaskStatus

pytestmark = pytest.mark.django_db

AUTH = {"HTTP_AUTHORIZATION": "Bearer test-token"}


def make(task_id, minutes_ago, status=TaskStatus.SUCCESSFUL, task="tasks.tasks.noop", queue="default", at=None):
    at = at or timezone.now() - timedelta(minutes=minutes_ago)
    return TaskRecord.objects.create(id=task_id, task_path=task, queue=queue, status=status, enqueued_at=at)


def get(client, path="/api/tasks", **params):
    return client.get(path, params, **AUTH)


def ids(response):
    assert response.status_code == 200, response.content
    return [row["id"] for row in response.json()["results"]]


def test_newest_first_with_the_detail_json_per_row(client):
    for n in range(3):
        make(f"t{n}", minutes_ago=10 - n)
    response = get(client)
    assert ids(response) == ["t2", "t1", "t0"]
    assert response.json()["next"] is None
    detail = client.get("/api/tasks/t1", **AUTH).json()
    assert response.json()["results"][1] == detail


def test_each_filter(client):
    make("ok", 5)
    make("failed", 4, status=TaskStatus.FAILED)
    make("mail", 3, queue="mail")
    make("add", 2, task="tasks.tasks.add")
    assert ids(get(client, status="FAILED")) == ["failed"]
    assert ids(get(client, queue="mail")) == ["mail"]
    assert ids(get(client, task="tasks.tasks.add")) == ["add"]
    assert ids(get(client, task="tasks.tasks.noop", status="SUCCESSFUL", queue="default")) == ["ok"]
    assert ids(get(client, status="DEAD")) == []


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"status": "DONE"}, "'status' must be one of"),
        ({"queue": ""}, "'queue' must be"),
        ({"task": "x" * 256}, "'task' must be"),
        ({"task": "a\x00b"}, "'task' must be"),
        ({"limit": "0"}, "'limit'"),
        ({"limit": "201"}, "'limit'"),
        ({"limit": "ten"}, "'limit'"),
        ({"cursor": "not-a-cursor"}, "'cursor'"),
        ({"cursor": "WzEsMl0"}, "'cursor'"),  # [1,2]: base64 JSON, not a cursor
        # Offsets at the ends of the calendar, with no UTC time: a 500 on SQLite.
        ({"cursor": "WyIwMDAxLTAxLTAxVDAwOjAwOjAwKzE0OjAwIiwgIngiXQ"}, "'cursor'"),
        ({"cursor": "WyI5OTk5LTEyLTMxVDIzOjU5OjU5LTE0OjAwIiwgIngiXQ"}, "'cursor'"),
        ({"sort": "id"}, "unknown parameter"),
    ],
)
def test_bad_values_are_400(client, params, fragment):
    response = get(client, **params)
    assert response.status_code == 400
    assert fragment in response.json()["error"]


def test_a_repeated_filter_is_400(client):
    response = client.get("/api/tasks?status=READY&status=FAILED", **AUTH)
    assert response.status_code == 400


def test_token_required(client):
    assert client.get("/api/tasks").status_code == 401
    assert client.get("/api/tasks", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401


def test_cursor_walk_sees_every_row_once_while_rows_are_added(client):
    same_moment = timezone.now() - timedelta(hours=1)
    # Ties on enqueued_at (a bulk enqueue stamps one time) are broken by id.
    for n in range(12):
        make(f"tie-{n:02}", 0, at=same_moment)
    for n in range(13):
        make(f"old-{n:02}", 120 + n)
    expected = sorted(TaskRecord.objects.values_list("enqueued_at", "id"), reverse=True)
    seen, url, added = [], "/api/tasks?limit=5&queue=default", 0
    while url:
        response = client.get(url, **AUTH)
        seen += ids(response)
        url = response.json()["next"]
        assert url is None or url.startswith("http://testserver/api/tasks?")
        make(f"new-{added}", 0)  # newer than every cursor: not in this walk
        added += 1
    assert seen == [task_id for _, task_id in expected]
    assert len(seen) == len(set(seen)) == 25
    assert added == 5


def test_head_and_post_still_answer(client):
    assert client.head("/api/tasks", **AUTH).status_code == 200
    response = client.post("/api/tasks", {"task": "nope"}, content_type="application/json", **AUTH)
    assert response.status_code == 400 and "unknown task" in response.json()["error"]
