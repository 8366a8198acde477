"""/metrics: the exposition format, figures that match what workers recorded,
who may read it, and a scrape that survives Redis being down.

The text format 0.0.4 is read back with a strict parser written here, and
OpenMetrics with prometheus-client's own parser, so a formatting slip fails a
test rather than a Prometheus scrape.
"""

import itertools
import math
import re

import pytest
from django.core.checks import run_checks
from django.db import OperationalError
from prometheus_client.openmetrics import parser as openmetrics_parser

from tasks.web import metrics, status
from tasks.web.status import QueueFigures, Snapshot
from tasks.queue import presence
from tasks.queue.backend import queue_for
from tasks.models import TaskRecord, TaskStatus
from tasks.tasks import add, always_fails
from tasks.worker.outcomes import DURATION_BUCKETS
from tasks.worker.loop import Worker
from tests.processes import run_in_thread, wait_for

AUTH = {"HTTP_AUTHORIZATION": "Bearer test-token"}
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# --- a strict parser of the text exposition format -----------------------------------
NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
SAMPLE = re.compile(rf"({NAME})(?:\{{(.*)\}})? (\S+)")
SUFFIXES = {"counter": ("",), "gauge": ("",), "untyped": ("",), "histogram": ("_bucket", "_sum", "_count")}


def _labels(text):
    labels, position = {}, 0
    while position < len(text):
        match = LABEL.match(text, position)
        assert match, f"bad label syntax at {text[position:]!r}"
        name = match.group(1)
        assert name not in labels, f"label {name} twice"
        labels[name] = re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), match.group(2))
        position = match.end()
        if position < len(text):
            assert text[position] == ",", f"expected ',' at {text[position:]!r}"
            position += 1
            assert position < len(text), "trailing comma"
    return labels


def _value(text):
    assert re.fullmatch(r"[+-]?(Inf|NaN|\d+(\.\d+)?([eE][+-]?\d+)?)", text), f"bad value {text!r}"
    return float(text)


def parse(text):
    """{(sample name, frozenset of label pairs): value} and {family: type}.

    Every sample must follow its family's HELP and TYPE, families never
    interleave or repeat, and no series appears twice.
    """
    assert text.endswith("\n") and "\n\n" not in text
    samples, types, helps, done = {}, {}, set(), set()
    current = None
    for line in text[:-1].split("\n"):
        if line.startswith("#"):
            match = re.fullmatch(rf"# (HELP|TYPE) ({NAME}) (.*)", line)
            assert match, f"bad comment line {line!r}"
            kind, name, rest = match.groups()
            assert name not in done, f"family {name} appears twice"
            if current and current != name:
                done.add(current)
            current = name
            if kind == "HELP":
                assert name not in helps and "\n" not in rest
                helps.add(name)
            else:
                assert rest in SUFFIXES and name not in types, line
                types[name] = rest
            continue
        match = SAMPLE.fullmatch(line)
        assert match, f"bad sample line {line!r}"
        name, labels, value = match.group(1), _labels(match.group(2) or ""), _value(match.group(3))
        assert current in types and current in helps, f"{name} before its HELP and TYPE"
        assert name in (current + suffix for suffix in SUFFIXES[types[current]]), f"{name} outside family {current}"
        key = (name, frozenset(labels.items()))
        assert key not in samples, f"series {key} twice"
        samples[key] = value
    _check_histograms(samples, types)
    return samples, types


def _check_histograms(samples, types):
    for family in (name for name, kind in types.items() if kind == "histogram"):
        series = {}
        for (name, labels), value in samples.items():
            if name == f"{family}_bucket":
                rest = frozenset(pair for pair in labels if pair[0] != "le")
                series.setdefault(rest, []).append((_value(dict(labels)["le"]), value))
        for rest, buckets in series.items():
            buckets.sort()
            assert buckets[-1][0] == math.inf, "no +Inf bucket"
            assert all(a[1] <= b[1] for a, b in itertools.pairwise(buckets)), f"buckets not cumulative: {buckets}"
            assert samples[(f"{family}_count", rest)] == buckets[-1][1]
            assert (f"{family}_sum", rest) in samples


def value(samples, name, **labels):
    return samples[(name, frozenset(labels.items()))]


def names(samples):
    return {name for name, _ in samples}


def scrape(client, **extra):
    response = client.get("/metrics", **extra)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == CONTENT_TYPE
    return parse(response.content.decode())[0]


# --- rendering, without Redis or a database --------------------------------------------
def queue(stats=None, oldest_pending_age=0.0):
    return QueueFigures("task:prodcons:queue", 4, 1, 2, 3, oldest_pending_age, stats or {})


def snapshot(**overrides):
    base = {
        "queues": {"default": queue()},
        "workers": [],
        "listeners": [],
        "channels": {},
        "history": {"READY": 4, "SUCCESSFUL": 10},
    }
    return Snapshot(**{**base, **overrides})


def render(snapshot, accept=""):
    body, content_type = metrics.exposition(snapshot, accept)
    assert content_type == CONTENT_TYPE
    return body.decode()


@pytest.mark.no_redis
def test_rendered_text_is_valid_and_escapes_label_values():
    odd = 'host "a"\\b\nc'
    text = render(
        snapshot(
            workers=[{"id": odd, "processed": 5}],
            listeners=[{"id": "l1", "received": 2}],
            channels={'news\n"x"': 1},
        )
    )
    samples, types = parse(text)

    assert value(samples, "mqsite_worker_processed_total", worker=odd) == 5
    assert value(samples, "mqsite_channel_subscribers", channel='news\n"x"') == 1
    assert value(samples, "mqsite_queue_pending", queue="default") == 4
    assert value(samples, "mqsite_queue_dead", queue="default") == 3
    assert value(samples, "mqsite_workers") == 1 and value(samples, "mqsite_listeners") == 1
    assert value(samples, "mqsite_history_tasks", status="SUCCESSFUL") == 10
    assert types["mqsite_tasks_total"] == "counter" and types["mqsite_task_duration_seconds"] == "histogram"
    assert r'worker="host \"a\"\\b\nc"' in text
    # Every outcome has a series from the start, so rate() works on the first task.
    assert {dict(labels)["outcome"] for name, labels in samples if name == "mqsite_tasks_total"} == {
        "succeeded",
        "retried",
        "failed",
        "dead",
    }


@pytest.mark.no_redis
def test_histogram_turns_per_bucket_counts_cumulative():
    stats = {
        "outcome:succeeded": 4.0,
        "duration_bucket:0.005": 2.0,
        "duration_bucket:1.0": 1.0,
        "duration_bucket:2.0": 1.0,  # a bound this version does not use
        "duration_sum": 3.25,
    }
    samples, _ = parse(render(snapshot(queues={"default": queue(stats)})))

    buckets = {
        dict(labels)["le"]: v for (name, labels), v in samples.items() if name == "mqsite_task_duration_seconds_bucket"
    }
    assert buckets == {
        "0.005": 2,
        "0.01": 2,
        "0.05": 2,
        "0.1": 2,
        "0.5": 2,
        "1.0": 3,
        "2.0": 4,
        "5.0": 4,
        "30.0": 4,
        "+Inf": 4,
    }
    assert value(samples, "mqsite_task_duration_seconds_count", queue="default") == 4
    assert value(samples, "mqsite_task_duration_seconds_sum", queue="default") == 3.25
    assert value(samples, "mqsite_tasks_total", queue="default", outcome="succeeded") == 4


@pytest.mark.no_redis
def test_oldest_pending_age_is_left_out_when_the_oldest_carries_no_time():
    samples, types = parse(
        render(snapshot(queues={"default": queue(oldest_pending_age=42.5), "raw": queue(oldest_pending_age=None)}))
    )
    assert types["mqsite_queue_oldest_pending_age_seconds"] == "gauge"
    assert value(samples, "mqsite_queue_oldest_pending_age_seconds", queue="default") == 42.5
    assert ("mqsite_queue_oldest_pending_age_seconds", frozenset({("queue", "raw")})) not in samples
    assert value(samples, "mqsite_queue_pending", queue="raw") == 4


@pytest.mark.no_redis
def test_redis_series_are_left_out_when_redis_is_down():
    down = Snapshot(history={"READY": 1}, redis_error=ConnectionError("refused"))
    samples, _ = parse(render(down))
    assert names(samples) == {"mqsite_up", "mqsite_history_tasks"}
    assert value(samples, "mqsite_up", component="redis") == 0
    assert value(samples, "mqsite_up", component="database") == 1


@pytest.mark.no_redis
@pytest.mark.parametrize(
    "accept, openmetrics",
    [
        ("", False),
        ("text/plain", False),
        ("text/plain;version=0.0.4;q=0.5,*/*;q=0.1", False),
        # What Prometheus sends when it may use OpenMetrics.
        (
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
            "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            True,
        ),
        ("application/openmetrics-text", True),
    ],
)
def test_the_format_follows_the_accept_header(accept, openmetrics):
    body, content_type = metrics.exposition(snapshot(queues={"default": queue({"outcome:failed": 2.0})}), accept)
    text = body.decode()
    assert content_type.startswith("application/openmetrics-text;" if openmetrics else CONTENT_TYPE)
    assert text.endswith("# EOF\n") is openmetrics
    if not openmetrics:
        parse(text)
        return
    families = {family.name: family for family in openmetrics_parser.text_string_to_metric_families(text)}
    # OpenMetrics names a counter family without _total; its samples keep it.
    assert families["mqsite_tasks"].type == "counter"
    failed = [s for s in families["mqsite_tasks"].samples if s.labels == {"queue": "default", "outcome": "failed"}]
    assert [(s.name, s.value) for s in failed] == [("mqsite_tasks_total", 2.0)]
    assert families["mqsite_task_duration_seconds"].type == "histogram"
    assert families["mqsite_queue_oldest_pending_age_seconds"].samples[0].value == 0.0


# --- against Redis, the database and a real worker -------------------------------------
@pytest.mark.django_db(transaction=True)
def test_figures_match_what_a_worker_recorded(client, redis_client):
    ids = [add.enqueue(i, i).id for i in range(3)]
    failing = always_fails.enqueue("boom")  # three attempts: retried twice, then failed
    assert Worker(burst=True, worker_id="metrics-test").run() == 6

    samples = scrape(client)

    assert value(samples, "mqsite_up", component="redis") == 1
    assert value(samples, "mqsite_up", component="database") == 1
    outcomes = {o: value(samples, "mqsite_tasks_total", queue="default", outcome=o) for o in metrics.OUTCOMES}
    assert outcomes == {"succeeded": 3, "retried": 2, "failed": 1, "dead": 0}
    assert value(samples, "mqsite_task_duration_seconds_count", queue="default") == 6
    recorded = queue_for("default").stats()
    assert value(samples, "mqsite_task_duration_seconds_sum", queue="default") == pytest.approx(
        recorded["duration_sum"]
    )
    for bound in DURATION_BUCKETS:
        le = "+Inf" if bound == math.inf else repr(bound)
        expected = sum(v for k, v in recorded.items() if k.startswith("duration_bucket:") and float(k[16:]) <= bound)
        assert value(samples, "mqsite_task_duration_seconds_bucket", queue="default", le=le) == expected
    counts = {
        part: value(samples, f"mqsite_queue_{part}", queue="default")
        for part in ("pending", "in_flight", "delayed", "dead")
    }
    assert counts == {"pending": 0, "in_flight": 0, "delayed": 0, "dead": 1}
    assert value(samples, "mqsite_tasks_total", queue="slow", outcome="succeeded") == 0
    assert (
        value(samples, "mqsite_history_tasks", status="SUCCESSFUL")
        == TaskRecord.objects.filter(id__in=ids).count()
        == 3
    )
    assert value(samples, "mqsite_history_tasks", status="FAILED") == 1
    assert TaskRecord.objects.get(id=failing.id).status == TaskStatus.FAILED
    # The worker withdrew on exit: nobody is running.
    assert value(samples, "mqsite_workers") == 0
    assert "mqsite_worker_processed_total" not in names(samples)


@pytest.mark.django_db(transaction=True)
def test_running_workers_listeners_and_subscribers(client, redis_client):
    worker = Worker(worker_id="live-worker")

    thread = run_in_thread(worker.run)
    try:
        for i in range(2):
            add.enqueue(i, 1)
        samples = wait_for(
            lambda: (
                (s := scrape(client)).get(("mqsite_worker_processed_total", frozenset({("worker", "live-worker")})))
                == 2
                and s
            ),
            message="the running worker's count in /metrics",
        )
        assert value(samples, "mqsite_workers") == 1
    finally:
        worker.request_stop()
        thread.join(10)
    presence.announce(redis_client, "listener", "listener-1", {"channels": ["task:pubsub:channel"], "received": 7}, 30)
    subscriber = redis_client.pubsub()
    subscriber.subscribe("task:pubsub:channel")
    try:
        wait_for(lambda: redis_client.pubsub_numsub("task:pubsub:channel")[0][1] == 1, message="subscription")
        samples = scrape(client)
    finally:
        subscriber.close()
    assert value(samples, "mqsite_listeners") == 1
    assert value(samples, "mqsite_listener_received_total", listener="listener-1") == 7
    assert value(samples, "mqsite_channel_subscribers", channel="task:pubsub:channel") == 1
    assert value(samples, "mqsite_workers") == 0


@pytest.mark.django_db
def test_a_scrape_that_prefers_openmetrics_gets_it(client):
    response = client.get("/metrics", HTTP_ACCEPT="application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/openmetrics-text; version=1.0.0;")
    assert "Accept" in response["Vary"]
    families = {f.name: f for f in openmetrics_parser.text_string_to_metric_families(response.content.decode())}
    assert families["mqsite_up"].samples[0].value == 1


@pytest.mark.django_db(transaction=True)
def test_the_oldest_pending_age_is_scraped_per_queue(client, redis_client):
    add.enqueue(1, 1)
    samples = scrape(client)
    assert value(samples, "mqsite_queue_oldest_pending_age_seconds", queue="default") >= 0
    assert value(samples, "mqsite_queue_oldest_pending_age_seconds", queue="slow") == 0
    redis_client.lpush("task:prodcons:queue", "5")  # a raw payload after the task: the task is still the oldest
    assert ("mqsite_queue_oldest_pending_age_seconds", frozenset({("queue", "default")})) in scrape(client)
    redis_client.rpush("task:prodcons:queue", "7")  # now the oldest carries no time
    assert ("mqsite_queue_oldest_pending_age_seconds", frozenset({("queue", "default")})) not in scrape(client)


@pytest.mark.django_db
def test_redis_down_still_answers_200_with_up_0(client, redis_down):
    samples = scrape(client)
    assert value(samples, "mqsite_up", component="redis") == 0
    assert value(samples, "mqsite_up", component="database") == 1
    assert "mqsite_queue_pending" not in names(samples)
    assert value(samples, "mqsite_history_tasks", status="READY") == 0


@pytest.mark.django_db
def test_database_down_still_answers_200_with_up_0(client, monkeypatch):
    def refuse():
        raise OperationalError("database is locked")

    monkeypatch.setattr(status, "history_counts", refuse)
    samples = scrape(client)
    assert value(samples, "mqsite_up", component="database") == 0
    assert value(samples, "mqsite_up", component="redis") == 1
    assert "mqsite_history_tasks" not in names(samples)
    assert value(samples, "mqsite_queue_pending", queue="default") == 0


# --- who may read it ---------------------------------------------------------------------
@pytest.mark.django_db
@pytest.mark.parametrize(
    "extra, allow, status",
    [
        ({"REMOTE_ADDR": "127.0.0.1"}, None, 200),
        ({"REMOTE_ADDR": "::1"}, None, 200),
        ({"REMOTE_ADDR": "::ffff:127.0.0.1"}, None, 200),
        ({"REMOTE_ADDR": "203.0.113.7"}, None, 403),
        ({"REMOTE_ADDR": "203.0.113.7", "HTTP_AUTHORIZATION": "Bearer wrong"}, None, 403),
        ({"REMOTE_ADDR": "203.0.113.7", **AUTH}, None, 200),
        ({"REMOTE_ADDR": "203.0.113.7", "HTTP_AUTHORIZATION": "Bearer second-token"}, None, 200),
        # Relayed by a reverse proxy on the same host: loopback, but not local.
        ({"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.7"}, None, 403),
        ({"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_PROTO": "https"}, None, 403),
        ({"REMOTE_ADDR": "127.0.0.1", "HTTP_FORWARDED": "for=203.0.113.7"}, None, 403),
        ({"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.7", **AUTH}, None, 200),
        ({"REMOTE_ADDR": "127.0.0.1"}, [], 403),
        ({"REMOTE_ADDR": "10.1.2.3"}, ["10.0.0.0/8"], 200),
        ({"REMOTE_ADDR": "10.1.2.3"}, ["127.0.0.0/8", "not a network"], 403),
    ],
)
def test_access(client, settings, extra, allow, status):
    if allow is not None:
        settings.MQ_METRICS_ALLOW = allow
    response = client.get("/metrics", **extra)
    assert response.status_code == status
    if status == 403:
        assert b"mqsite_" not in response.content


def test_only_get_and_head(client):
    assert client.post("/metrics").status_code == 405


@pytest.mark.no_redis
@pytest.mark.parametrize(
    "allow, ok",
    [(["127.0.0.0/8", "::1/128"], True), ([], True), ("127.0.0.1", False), (["localhost"], False), ([1], False)],
)
def test_check_reports_a_bad_allow_list(settings, allow, ok):
    settings.MQ_METRICS_ALLOW = allow
    errors = [e for e in run_checks(tags=["mqsite"]) if e.id == "mqsite.E025"]
    assert (not errors) == ok
