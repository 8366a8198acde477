"""Worker logs: one stderr line per event with key=value fields, a level that
follows --verbosity, and settings.LOGGING able to override it."""

import logging
import socket
import urllib.error
import urllib.request

import pytest

from tasks.management.process import set_verbosity
from tasks.models import TaskRecord, TaskStatus
from tasks.tasks import add, always_fails
from tests.processes import manage, run_manage, stop, wait_for
from tests.redis_server import free_port

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
        assert (line["level"], line["logger"]) == ("INFO", "tasks.worker.executor")
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



@pytest.mark.no_redis
def test_runserver_logs_one_line_per_request(tmp_path):
    """What the `make run` terminal shows: a 4xx was printed twice (Django's
    console handler and the root handler) and its access line came on top."""
    port = free_port()
    log = tmp_path / "runserver.log"
    server = manage("", "runserver", f"127.0.0.1:{port}", "--noreload", settings={"DEBUG": True}, log_path=log)
    try:
        wait_for(lambda: accepts(port), timeout=30, message="runserver")
        site = f"http://127.0.0.1:{port}"
        for request in (f"{site}/no-such-page-4xx", urllib.request.Request(f"{site}/api/messages", b"{}")):
            with pytest.raises(urllib.error.HTTPError):
                urllib.request.urlopen(request, timeout=10)
        wait_for(lambda: '"POST /api/messages HTTP/1.1" 401' in log.read_text(), message="the access line")
    finally:
        stop(server)
    lines = log.read_text().splitlines()
    assert len([line for line in lines if "/no-such-page-4xx" in line]) == 1, lines
    assert len([line for line in lines if "/api/messages" in line]) == 1, lines


def accepts(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False
