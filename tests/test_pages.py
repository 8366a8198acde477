"""The HTML pages: index, /prodcons and /pubsub, through Django's test client."""

import importlib.util
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from tasks.models import PublishedMessage, TaskRecord, TaskStatus
from tasks.worker.loop import Worker

# Transactional: a request outside a transaction pushes to Redis at once,
# which is what these tests look at (inside one, the push waits for commit).
pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = "task:prodcons:queue"
CHANNEL = "task:pubsub:channel"
LOGIN = "/accounts/login/"
LAUNCHER = Path(__file__).resolve().parent.parent / "scripts" / "run.py"
# The permission each page asks of a user before it acts.
ENQUEUE = "add_taskrecord"
PUBLISH = "add_publishedmessage"


def csrf_client(path, user=None):
    """A client that enforces CSRF, and the token its GET of ``path`` received."""
    client = Client(enforce_csrf_checks=True)
    if user is not None:
        client.force_login(user)
    client.get(path)
    return client, client.cookies["csrftoken"].value


def make_user(name, *codenames, staff=False):
    user = get_user_model().objects.create_user(name, password=f"pw-{name}-123", is_staff=staff)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="tasks", codename__in=codenames))
    return user


def logged_in(user):
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def enqueuer():
    """A client logged in as a user who may enqueue tasks, and only that."""
    return logged_in(make_user("eve", ENQUEUE))


@pytest.fixture
def publisher():
    """A client logged in as a non-staff user who may publish, and only that."""
    return logged_in(make_user("paul", PUBLISH))


@pytest.fixture
def other_channel(redis_client):
    """A subscriber on a channel other than the default one."""
    pubsub = redis_client.pubsub()
    pubsub.subscribe("other")
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    yield pubsub
    pubsub.close()


def nothing_done(redis_client, *subscribers):
    """No task row, nothing pushed, no publish row, and no subscriber got a message."""
    assert TaskRecord.objects.count() == 0
    assert redis_client.llen(QUEUE) == 0
    assert PublishedMessage.objects.count() == 0
    for subscriber in subscribers:
        assert subscriber.get_message(timeout=0.2, ignore_subscribe_messages=True) is None


# --- index -------------------------------------------------------------------
def test_index_shows_links_and_figures(client):
    response = client.get("/")
    assert response.status_code == 200
    page = response.content.decode()
    for fragment in ('href="/prodcons"', 'href="/pubsub"', 'href="/admin/"', QUEUE, '<div id="live" data-refresh-ms="5000">', CHANNEL):
        assert fragment in page
    assert 'id="redis-down" class="banner error" role="alert" hidden' in page


def test_index_degrades_when_redis_is_down(client, redis_down):
    response = client.get("/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "Redis is not answering" in page
    assert 'role="alert" hidden' not in page
    assert "<td>Successful</td>" in page  # the history comes from the database and still shows


def test_every_page_names_a_favicon_that_is_served(client):
    page = client.get("/").content.decode()
    assert '<link rel="icon" href="/favicon.ico" type="image/svg+xml">' in page
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/svg+xml"
    assert b"<svg" in b"".join(response.streaming_content)


# --- /prodcons -----------------------------------------------------------------
def test_get_prodcons_shows_form_and_never_enqueues(enqueuer, redis_client):
    response = enqueuer.get("/prodcons")
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
    client, token = csrf_client("/prodcons", make_user("eve", ENQUEUE))
    response = client.post("/prodcons", {"number": 5, "count": 3, "csrfmiddlewaretoken": token})
    assert response.status_code == 303
    assert response["Location"] == "/prodcons"
    rows = list(TaskRecord.objects.all())
    assert len(rows) == 3
    assert {(r.task_path, tuple(r.args), r.status) for r in rows} == {("tasks.tasks.cook_dish", (5,), TaskStatus.READY)}
    assert redis_client.llen(QUEUE) == 3
    page = client.get("/prodcons").content.decode()
    assert "Enqueued 3 tasks.tasks.cook_dish tasks" in page
    # The new tasks, each linked to its page, with a status task.js keeps live.
    new_tasks = page[page.index('<ul id="new-tasks"'):]
    new_tasks = new_tasks[:new_tasks.index("</ul>")]
    for row in rows:
        assert f'<a href="/tasks/{row.id}">{row.id}</a>' in page
        assert f'<li data-task-id="{row.id}" data-status-url="/tasks/{row.id}/status">' in new_tasks
        assert f'<a href="/tasks/{row.id}"><code>{row.id}</code></a>' in new_tasks
    assert new_tasks.count('data-task-status="READY"') == 3
    # Shown once: a later visit forgets them.
    assert 'id="new-tasks"' not in client.get("/prodcons").content.decode()


def test_one_task_message_names_its_id(enqueuer):
    response = enqueuer.post("/prodcons", {"count": 1}, follow=True)
    row = TaskRecord.objects.get()
    assert row.args == []  # no number: the task picks one
    assert f"Enqueued task tasks.tasks.cook_dish with id <a href=\"/tasks/{row.id}\">" in (
        response.content.decode()
    )


@pytest.mark.parametrize("data", [{"count": 0}, {"count": 101}, {"count": "many"}, {"count": 1, "number": -1}])
def test_invalid_form_enqueues_nothing(enqueuer, redis_client, data):
    response = enqueuer.post("/prodcons", data)
    assert response.status_code == 200
    assert b'class="errorlist' in response.content
    assert TaskRecord.objects.count() == 0
    assert redis_client.llen(QUEUE) == 0


def test_page_task_runs_in_worker_and_is_recorded_successful(enqueuer):
    assert enqueuer.post("/prodcons", {"number": 5, "count": 1}).status_code == 303
    assert Worker(burst=True, worker_id="page-worker").run() == 1
    row = TaskRecord.objects.get()
    assert (row.status, row.result, row.worker, row.attempts) == (
        TaskStatus.SUCCESSFUL,
        {"number": 5, "dish": "tagine"},
        "page-worker",
        1,
    )


def test_prodcons_answers_503_when_redis_is_down(enqueuer, redis_down, settings):
    settings.MQ_RETRY_AFTER_SECONDS = 7
    response = enqueuer.post("/prodcons", {"count": 2})
    assert response.status_code == 503
    assert response["Retry-After"] == "7"
    assert "Redis, which carries the queues and channels, is not answering" in response.content.decode()
    assert TaskRecord.objects.count() == 0


def test_prodcons_answers_503_when_queue_is_full(enqueuer, redis_client, settings):
    settings.MQ_QUEUE_MAX_LENGTH = 2
    redis_client.lpush(QUEUE, "1")
    response = enqueuer.post("/prodcons", {"count": 2})
    assert response.status_code == 503
    assert "The queue is full" in response.content.decode()
    assert TaskRecord.objects.count() == 0
    assert redis_client.llen(QUEUE) == 1


# --- /pubsub -----------------------------------------------------------------
def test_get_pubsub_shows_form_and_never_publishes(publisher, subscriber):
    response = publisher.get("/pubsub")
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
    user = make_user("alice", PUBLISH)
    client, token = csrf_client("/pubsub", user)
    response = client.post("/pubsub", {"message": "hello 7", "csrfmiddlewaretoken": token})
    assert response.status_code == 303
    assert response["Location"] == "/pubsub"
    message = subscriber.get_message(timeout=5, ignore_subscribe_messages=True)
    assert (message["channel"], message["data"]) == (CHANNEL.encode(), b"hello 7")
    row = PublishedMessage.objects.get()
    assert (row.channel, row.payload, row.receivers, row.publisher) == (CHANNEL, "hello 7", 1, "user:alice")
    page = client.get("/pubsub").content.decode()
    assert f'<p id="publish-result" data-receivers="1" class="banner success" role="status">Published to {CHANNEL}: received by 1 listener.</p>' in page
    assert 'id="publish-result"' not in client.get("/pubsub").content.decode()


def test_pubsub_with_nobody_listening_says_zero_listeners():
    staff = logged_in(make_user("sam", PUBLISH, staff=True))
    response = staff.post("/pubsub", {"message": "into the void", "channel": "nobody-here"}, follow=True)
    page = response.content.decode()
    assert "Published to nobody-here: received by 0 listeners." in page and 'data-receivers="0"' in page
    assert "Nobody was listening" in page
    assert PublishedMessage.objects.get().publisher == "user:sam"


def test_pubsub_message_over_the_size_limit_is_a_form_error(publisher, settings, subscriber):
    settings.MQ_MAX_MESSAGE_BYTES = 100
    response = publisher.post("/pubsub", {"message": "x" * 200})
    assert response.status_code == 200
    assert "over the limit of 100" in response.content.decode()
    assert PublishedMessage.objects.count() == 0
    assert subscriber.get_message(timeout=0.2, ignore_subscribe_messages=True) is None


def test_pubsub_answers_503_when_redis_is_down(publisher, redis_down):
    response = publisher.post("/pubsub", {"message": "hi"})
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert "is not answering" in response.content.decode()
    assert PublishedMessage.objects.count() == 0


# --- who may act ---------------------------------------------------------------
# Anyone may look; a POST acts only for a logged-in user with the page's permission.
FORMS = {
    "/prodcons": ({"count": 100}, ENQUEUE),
    "/pubsub": ({"message": "hi", "channel": CHANNEL}, PUBLISH),
}


@pytest.mark.parametrize("path", FORMS)
def test_anonymous_post_goes_to_login_and_does_nothing(path, redis_client, subscriber):
    # With a valid CSRF token (from a page that has a form for anonymous
    # users), so it is the login check that stops it.
    client, token = csrf_client("/admin/login/")
    data, _ = FORMS[path]
    response = client.post(path, {**data, "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert response["Location"] == f"{LOGIN}?next={path}"
    nothing_done(redis_client, subscriber)


@pytest.mark.parametrize("path", FORMS)
def test_user_without_the_permission_gets_403_and_nothing_is_done(path, redis_client, subscriber):
    # Each page's permission does not open the other page.
    data, permission = FORMS[path]
    other = ENQUEUE if permission == PUBLISH else PUBLISH
    client = logged_in(make_user("nina", other))
    response = client.post(path, data)
    assert response.status_code == 403
    nothing_done(redis_client, subscriber)


@pytest.mark.parametrize("path", FORMS)
def test_user_with_the_permission_acts(path, redis_client, subscriber):
    data, permission = FORMS[path]
    response = logged_in(make_user("pat", permission)).post(path, data)
    assert response.status_code == 303
    if path == "/prodcons":
        assert redis_client.llen(QUEUE) == TaskRecord.objects.count() == 100
    else:
        assert subscriber.get_message(timeout=5, ignore_subscribe_messages=True)["data"] == b"hi"
        assert PublishedMessage.objects.get().publisher == "user:pat"


@pytest.mark.parametrize("path", FORMS)
def test_login_page_brings_the_user_back_to_the_form(path, redis_client):
    make_user("liz", ENQUEUE, PUBLISH)
    client = Client(enforce_csrf_checks=True)
    page = client.get(path).content.decode()
    # No form that would fail: a link to log in that comes back here.
    assert "<form" not in page.split("</header>")[1]
    assert f'<a href="{LOGIN}?next={path}">Log in</a>' in page
    login_page = client.get(f"{LOGIN}?next={path}")
    assert login_page.status_code == 200
    assert f'name="next" value="{path}"' in login_page.content.decode()
    token = client.cookies["csrftoken"].value
    credentials = {"username": "liz", "password": "pw-liz-123", "next": path, "csrfmiddlewaretoken": token}
    response = client.post(LOGIN, credentials)
    assert (response.status_code, response["Location"]) == (302, path)
    page = client.get(path).content.decode()
    assert 'name="csrfmiddlewaretoken"' in page.split("</header>")[1]
    assert "Log out" in page
    data, _ = FORMS[path]
    token = client.cookies["csrftoken"].value
    assert client.post(path, {**data, "csrfmiddlewaretoken": token}).status_code == 303


def test_logout_is_a_post_from_the_header(enqueuer):
    page = enqueuer.get("/").content.decode()
    assert '<form method="post" action="/accounts/logout/"' in page
    assert enqueuer.post("/accounts/logout/").status_code == 302
    assert "Log in" in enqueuer.get("/").content.decode()


@pytest.mark.parametrize("path", FORMS)
def test_user_without_the_permission_sees_no_form(path):
    page = logged_in(make_user("nina")).get(path).content.decode()
    main = page.split("</header>")[1]
    assert "<form" not in main
    assert "may not" in main


def test_only_staff_choose_the_channel(redis_client, subscriber, other_channel):
    staff = logged_in(make_user("sam", PUBLISH, staff=True))
    assert b'name="channel"' in staff.get("/pubsub").content
    assert staff.post("/pubsub", {"message": "to other", "channel": "other"}).status_code == 303
    assert other_channel.get_message(timeout=5, ignore_subscribe_messages=True)["data"] == b"to other"
    assert subscriber.get_message(timeout=0.2, ignore_subscribe_messages=True) is None


def test_non_staff_publish_to_the_default_channel_only(publisher, subscriber, other_channel):
    assert b'name="channel"' not in publisher.get("/pubsub").content
    assert publisher.post("/pubsub", {"message": "try other", "channel": "other"}).status_code == 303
    assert subscriber.get_message(timeout=5, ignore_subscribe_messages=True)["data"] == b"try other"
    assert other_channel.get_message(timeout=0.2, ignore_subscribe_messages=True) is None
    assert PublishedMessage.objects.get().channel == CHANNEL


@pytest.mark.parametrize("who", ["anonymous", "no permission", "permitted", "staff"])
@pytest.mark.parametrize("path", FORMS)
def test_get_never_changes_state(path, who, redis_client, subscriber):
    client = Client()
    if who != "anonymous":
        perms = () if who == "no permission" else (ENQUEUE, PUBLISH)
        client.force_login(make_user("gus", *perms, staff=who == "staff"))
    data, _ = FORMS[path]
    for method in (client.get, client.head):
        assert method(path, data).status_code == 200
    nothing_done(redis_client, subscriber)


def test_make_run_admin_may_use_both_forms(monkeypatch, redis_client, subscriber):
    """The superuser scripts/run.py sets up (and prints) logs in and acts."""
    spec = importlib.util.spec_from_file_location("mq_launcher", LAUNCHER)
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    monkeypatch.setenv("MQ_ADMIN_USER", launcher.ADMIN_USER)
    monkeypatch.setenv("MQ_ADMIN_PASSWORD", "pw-admin-123")
    exec(launcher.ADMIN_SCRIPT, {})
    client = Client()
    assert client.login(username=launcher.ADMIN_USER, password="pw-admin-123")
    assert client.post("/prodcons", {"count": 2}).status_code == 303
    assert client.post("/pubsub", {"message": "from admin"}).status_code == 303
    assert redis_client.llen(QUEUE) == 2
    assert subscriber.get_message(timeout=5, ignore_subscribe_messages=True)["data"] == b"from admin"
