"""Worker logs: one stderr line per event in logfmt (values quoted when they
need it, task_id and task on every line logged while a task runs), a level
that follows --verbosity, and settings.LOGGING able to override it."""

import logging
import re
import socket
import urllib.error
import urllib.request

import pytest

from tasks.logfmt import LogfmtFormatter, TaskContextFilter, task_context
from tasks.management.process import set_verbosity
from tasks.models import TaskRecord, TaskStatus
from tasks.tasks import add, always_fails, cook_dish
from tests.fixture_tasks import log_prose
from tests.processes import manage, run_manage, stop, wait_for
from tests.redis_server import free_port

FIELDS = {"task_id", "task", "queue", "worker", "attempt", "duration", "outcome"}
# key=value or key="value with \"escapes\"", as logfmt tools read them.
PAIR = re.compile(r'([^\s=]+)=("(?:[^"\\]|\\.)*"|[^\s"]*)(?:\s+|$)')


def parse_logfmt(line):
    """The fields of one logfmt line; AssertionError if it is not logfmt."""
    fields = {}
    position = 0
    while position < len(line):
        match = PAIR.match(line, position)
        assert match, f"not logfmt at {line[position:]!r}: {line!r}"
        key, value = match.groups()
        if value.startswith('"'):
            value = re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value[1:-1])
        fields[key] = value
        position = match.end()
    return fields


def log_lines(stderr):
    return [parse_logfmt(line) for line in stderr.splitlines() if line.startswith("time=")]


def events(stderr, name):
    """The fields of each line logging ``event=<name>``."""
    return [fields for fields in log_lines(stderr) if fields.get("event") == name]


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
        wait_for(lambda: access_line(log.read_text()), message="the access line")
    finally:
        stop(server)
    lines = log.read_text().splitlines()
    assert len([line for line in lines if "/no-such-page-4xx" in line]) == 1, lines
    assert len([line for line in lines if "/api/messages" in line]) == 1, lines


def access_line(text):
    """runserver's line for the 401, read as logfmt like every other line."""
    return [f for f in log_lines(text) if '"POST /api/messages HTTP/1.1" 401' in f.get("msg", "")]


def accepts(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def formatted(message, *args, task=None, **extra):
    record = logging.LogRecord("tasks.test", logging.INFO, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    if task:
        with task_context(*task):
            TaskContextFilter().filter(record)
    return LogfmtFormatter().format(record)


@pytest.mark.no_redis
@pytest.mark.parametrize("value", ["two words", 'say "hi"', "a=b", "", "back\\slash", "line\nbreak", "plain"])
def test_values_that_need_it_are_quoted_and_parse_back(value):
    line = formatted("event=probe value=%s error=%r count=%d", value, value, 3)

    fields = parse_logfmt(line)
    assert (fields["event"], fields["value"], fields["error"], fields["count"]) == ("probe", value, value, "3")
    assert ("value=plain " in line) == (value == "plain")  # quoted only when needed
    assert "\n" not in line


@pytest.mark.no_redis
def test_prose_becomes_one_msg_field_and_extra_fields_follow():
    fields = parse_logfmt(formatted("sent %s", 'the "order" 5', client="a b"))

    assert (fields["logger"], fields["level"], fields["msg"], fields["client"]) == (
        "tasks.test",
        "INFO",
        'sent the "order" 5',
        "a b",
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", fields["time"])


@pytest.mark.no_redis
def test_lines_logged_while_a_task_runs_carry_it_once():
    prose = formatted("working on it", task=("id-1", "app.tasks.job"))
    own = formatted("event=task_done task_id=%s task=%s", "id-1", "app.tasks.job", task=("id-1", "app.tasks.job"))

    assert (parse_logfmt(prose)["task_id"], parse_logfmt(prose)["task"]) == ("id-1", "app.tasks.job")
    assert own.count("task_id=") == 1 and own.count(" task=") == 1
    assert "task_id" not in parse_logfmt(formatted("outside any task"))


@pytest.mark.django_db(transaction=True)
def test_a_tasks_own_log_lines_carry_its_id_and_path(redis_url):
    prose = log_prose.enqueue('a "quoted" text = with spaces').id
    cooked = cook_dish.enqueue(3).id

    done = run_manage(redis_url, "listen_queue", "--burst")

    assert done.returncode == 0, done.stderr
    [line] = [fields for fields in log_lines(done.stderr) if fields["logger"] == "thirdparty.client"]
    assert (line["msg"], line["task_id"], line["task"]) == (
        'sent a "quoted" text = with spaces',
        prose,
        "tests.fixture_tasks.log_prose",
    )
    [line] = events(done.stderr, "cooked")
    assert (line["task_id"], line["task"], line["dish"]) == (cooked, "tasks.tasks.cook_dish", "paella")
    assert all("task_id" not in fields for fields in events(done.stderr, "worker_stop"))
