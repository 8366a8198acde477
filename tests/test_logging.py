"""Worker logs: one stderr line per event with key=value fields, a level that
follows --verbosity, and settings.LOGGING able to override it."""

import logging

import pytest

from tasks.management.process import set_verbosity
from tasks.models import TaskRecord, TaskStatus
from tasks.tasks import add, always_fails
from tests.processes import run_manage

FIELDS = {"task_id", "task", "queue", "worker", "attempt", "duration", "outcome"}


def events(stderr, name):
    """The key=value fields of each line logging ``event=<name>``."""
    found = []
    for line in stderr.splitlines():
        if f" event={name} " not in f"{line} ":
            continue
        # "<date> <time> level=... logger=... event=... key=value ..."
        tokens = line.split(" ")[2:]
        assert all("=" in token for token in tokens), f"not key=value: {line!r}"
        found.append(dict(token.split("=", 1) for token in tokens))
    return found


@pytest.mark.django_db(transaction=True)
def test_one_task_done_line_per_task_with_every_field(redis_url):
    ids = [add.enqueue(i, 1).id for i in range(3)]

    done = run_manage(redis_url, "listen_queue", "--burst", "--worker-id", "log-worker")

    assert done.returncode == 0, done.stderr
    lines = events(done.stderr, "task_done")
    assert sorted(line["task_id"] for line in lines) == sorted(ids)
    for line in lines:
        assert FIELDS <= set(line)
        assert (line["task"], line["queue"], line["worker"], line["attempt"], line["outcome"]) == (
            "tasks.tasks.add",
            "default",
            "log-worker",
            "1",
            "succeeded",
        )
        assert float(line["duration"]) >= 0
        assert (line["level"], line["logger"]) == ("INFO", "tasks.worker")
    assert done.stdout == ""


@pytest.mark.django_db(transaction=True)
def test_verbosity_0_keeps_only_warnings(redis_url):
    ok = [add.enqueue(i, 1).id for i in range(2)]
    failing = always_fails.enqueue("boom").id

    done = run_manage(redis_url, "listen_queue", "--burst", "-v", "0", settings={"MQ_MAX_ATTEMPTS": 1})

    assert done.returncode == 0, done.stderr
    assert set(TaskRecord.objects.filter(id__in=ok).values_list("status", flat=True)) == {TaskStatus.SUCCESSFUL}
    [line] = events(done.stderr, "task_done")
    assert (line["task_id"], line["outcome"], line["level"]) == (failing, "failed", "WARNING")
    assert "event=worker_start" not in done.stderr


@pytest.mark.django_db(transaction=True)
def test_logging_setting_overrides_verbosity(redis_url):
    add.enqueue(1, 1)
    quiet = {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"stderr": {"class": "logging.StreamHandler"}},
        "root": {"handlers": ["stderr"], "level": "INFO"},
        "loggers": {"tasks": {"level": "WARNING"}},
    }

    done = run_manage(redis_url, "listen_queue", "--burst", "-v", "2", settings={"LOGGING": quiet})

    assert done.returncode == 0, done.stderr
    assert "event=task_done" not in done.stderr


@pytest.mark.no_redis
@pytest.mark.parametrize(
    "verbosity, level", [(0, logging.WARNING), (1, logging.INFO), (2, logging.DEBUG), (3, logging.DEBUG)]
)
def test_verbosity_maps_to_levels(settings, verbosity, level):
    logger = logging.getLogger("tasks")
    before = logger.level
    try:
        set_verbosity(verbosity)
        assert logger.level == level
        settings.LOGGING = {"version": 1, "loggers": {"tasks": {"level": "ERROR"}}}
        logger.setLevel(logging.ERROR)
        set_verbosity(verbosity)
        assert logger.level == logging.ERROR
    finally:
        logger.setLevel(before)


# Requests answered 4xx through the whole stack, in a process configured by
# settings.LOGGING (with DEBUG on, as under `make run`).
REQUEST_4XX = """
from django.test import Client
client = Client(HTTP_HOST="127.0.0.1")
client.get("/no-such-page-4xx")
client.post("/api/messages", "{}", content_type="application/json")
"""


@pytest.mark.no_redis
def test_a_4xx_is_logged_once(tmp_path):
    done = run_manage("", "shell", "--no-imports", "-c", REQUEST_4XX, settings={"DEBUG": True})
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert [line for line in lines if "/no-such-page-4xx" in line] == [
        next(line for line in lines if "logger=django.request Not Found: /no-such-page-4xx" in line)
    ]
    assert len([line for line in lines if "/api/messages" in line]) == 1
