"""The HTML pages: index, /prodcons and /pubsub, through Django's test client."""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from tasks.models import PublishedMessage, TaskRecord, TaskStatus
from tasks.worker import Worker

# Transactional: a request outside a transaction pushes to Redis at once,
# which is what these tests look at (inside one, the push waits for commit).
pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = "task:prodcons:queue"
CHANNEL = "task:pubsub:channel"


def csrf_client(path, user=None):
    """A client that enforces CSRF, and the token its GET of ``path`` received."""
    client = Client(enforce_csrf_checks=True)
    if user is not None:
        client.force_login(user)
    client.get(path)
    return client, client.cookies["csrftoken"].value




# --- index -------------------------------------------------------------------
def test_index_shows_links_and_figures(client):
    response = client.get("/")
    assert response.status_code == 200
    page = response.content.decode()
    for fragment in ('href="/prodcons"', 'href="/pubsub"', 'href="/admin/"', QUEUE, 'data-stats-url="/api/stats"', CHANNEL):
        assert fragment in page
    assert 'id="redis-down" class="banner error" role="alert" hidden' in page


def test_index_degrades_when_redis_is_down(client, redis_down):
    response = client.get("/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "Redis is not answering" in page
    assert 'role="alert" hidden' not in page
    assert "SUCCESSFUL" in page  # the history comes from the database and still shows


def test_every_page_names_a_favicon_that_is_served(client):
    page = client.get("/").content.decode()
    assert '<link rel="icon" href="/favicon.ico" type="image/svg+xml">' in page
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/svg+xml"
    assert b"<svg" in b"".join(response.streaming_content)


# --- /prodcons -----------------------------------------------------------------
def test_get_prodcons_shows_form_and_never_enqueues(client, redis_client):
    response = client.get("/prodcons")
    assert response.status_code == 200
    assert b'name="count"' in response.content and b'name="number"' in response.content
    assert TaskRecord.objects.count() == 0
    assert redis_client.llen(QUEUE) == 0


def test_post_without_csrf_token_is_refused_and_enqueues_nothing(redis_client):
    response = Client(enforce_csrf_checks=True).post("/prodcons", {"count": 1})
    assert response.status_code == 403
    assert TaskRecord.objects.count() == 0
    assert redis_client.llen(QUEUE) == 0


def test_post_with_csrf_enqueues_and_redirects_with_links(redis_client):
    client, token = csrf_client("/prodcons")
    response = client.post("/prodcons", {"number": 5, "count": 3, "csrfmiddlewaretoken": token})
    assert response.status_code == 303
    assert response["Location"] == "/prodcons"
    rows = list(TaskRecord.objects.all())
    assert len(rows) == 3
    assert {(r.task_path, tuple(r.args), r.status) for r in rows} == {("tasks.tasks.cook_dish", (5,), TaskStatus.READY)}
    assert redis_client.llen(QUEUE) == 3
    page = client.get("/prodcons").content.decode()
    assert "Enqueued 3 tasks.tasks.cook_dish tasks" in page
    for row in rows:
        assert f'<a href="/admin/tasks/taskrecord/{row.id}/change/">{row.id}</a>' in page


def test_one_task_message_names_its_id(client):
    response = client.post("/prodcons", {"count": 1}, follow=True)
    row = TaskRecord.objects.get()
    assert row.args == []  # no number: the task picks one
    assert f"Enqueued task tasks.tasks.cook_dish with id <a href=\"/admin/tasks/taskrecord/{row.id}/change/\">" in (
        response.content.decode()
    )


@pytest.mark.parametrize("data", [{"count": 0}, {"count": 101}, {"count": "many"}, {"count": 1, "number": -1}])
def test_invalid_form_enqueues_nothing(client, redis_client, data):
    response = client.post("/prodcons", data)
    assert response.status_code == 200
    assert b'class="errorlist' in response.content
    assert TaskRecord.objects.count() == 0
    assert redis_client.llen(QUEUE) == 0


def test_page_task_runs_in_worker_and_is_recorded_successful(client):
    assert client.post("/prodcons", {"number": 5, "count": 1}).status_code == 303
    assert Worker(burst=True, worker_id="page-worker").run() == 1
    row = TaskRecord.objects.get()
    assert (row.status, row.result, row.worker, row.attempts) == (
        TaskStatus.SUCCESSFUL,
        {"number": 5, "dish": "tagine"},
        "page-worker",
        1,
    )


def test_prodcons_answers_503_when_redis_is_down(client, redis_down, settings):
    settings.MQ_RETRY_AFTER_SECONDS = 7
    response = client.post("/prodcons", {"count": 2})
    assert response.status_code == 503
    assert response["Retry-After"] == "7"
    assert "Redis, which carries the queues and channels, is not answering" in response.content.decode()
    assert TaskRecord.objects.count() == 0


def test_prodcons_answers_503_when_queue_is_full(client, redis_client, settings):
    settings.MQ_QUEUE_MAX_LENGTH = 2
    redis_client.lpush(QUEUE, "1")
    response = client.post("/prodcons", {"count": 2})
    assert response.status_code == 503
    assert "The queue is full" in response.content.decode()
    assert TaskRecord.objects.count() == 0
    assert redis_client.llen(QUEUE) == 1


# --- /pubsub -----------------------------------------------------------------
def test_get_pubsub_shows_form_and_never_publishes(client, subscriber):
    response = client.get("/pubsub")
    assert response.status_code == 200
    assert b'name="message"' in response.content
    assert PublishedMessage.objects.count() == 0
    assert subscriber.get_message(timeout=0.2) is None


def test_pubsub_post_without_csrf_token_is_refused(subscriber):
    response = Client(enforce_csrf_checks=True).post("/pubsub", {"message": "hi"})
    assert response.status_code == 403
    assert PublishedMessage.objects.count() == 0
    assert subscriber.get_message(timeout=0.2) is None


def test_pubsub_publishes_and_counts_one_listener(subscriber):
    user = get_user_model().objects.create_user("alice", password="pw-alice-123")
    client, token = csrf_client("/pubsub", user)
    response = client.post("/pubsub", {"message": "hello 7", "csrfmiddlewaretoken": token})
    assert response.status_code == 303
    assert response["Location"] == "/pubsub"
    message = subscriber.get_message(timeout=5, ignore_subscribe_messages=True)
    assert (message["channel"], message["data"]) == (CHANNEL.encode(), b"hello 7")
    row = PublishedMessage.objects.get()
    assert (row.channel, row.payload, row.receivers, row.publisher) == (CHANNEL, "hello 7", 1, "user:alice")
    assert f"Published to {CHANNEL}: received by 1 listener." in client.get("/pubsub").content.decode()


def test_pubsub_with_nobody_listening_says_zero_listeners(client):
    response = client.post("/pubsub", {"message": "into the void", "channel": "nobody-here"}, follow=True)
    page = response.content.decode()
    assert "Published to nobody-here: received by 0 listeners." in page
    assert "Nobody was listening" in page
    assert PublishedMessage.objects.get().publisher == "anonymous"


def test_pubsub_message_over_the_size_limit_is_a_form_error(client, settings, subscriber):
    settings.MQ_MAX_MESSAGE_BYTES = 100
    response = client.post("/pubsub", {"message": "x" * 200})
    assert response.status_code == 200
    assert "over the limit of 100" in response.content.decode()
    assert PublishedMessage.objects.count() == 0
    assert subscriber.get_message(timeout=0.2, ignore_subscribe_messages=True) is None


def test_pubsub_answers_503_when_redis_is_down(client, redis_down):
    response = client.post("/pubsub", {"message": "hi"})
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert "is not answering" in response.content.decode()
    assert PublishedMessage.objects.count() == 0
