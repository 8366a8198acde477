"""Scenario 8: hostile input pushed straight into Redis. Nothing in a message
runs code or imports a module that is not a registered task; the worker's
memory stays bounded; the worker goes on, and the next good task succeeds.
(HTTP input, tokens, CSRF and admin rights are tested with the web code.)"""

import json
import os
import pickle
import sys

import pytest

from tasks.queue import keys
from tasks.worker import executor as worker_module
from tasks.models import ReceivedMessage, TaskRecord, TaskStatus
from tasks.channel.publish import publish
from tasks.worker.loop import Worker
from tests.faults.conftest import QUEUE, all_final, executions
from tests.faults.fault_tasks import returns_unstorable
from tests.fixture_tasks import append_to_file
from tests.processes import manage, run_manage, stop, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

NOT_TASKS = ["os.system", "subprocess.run", "builtins.eval", "posix.system", "tasks.tasks.__builtins__", "tasks.tasks.os.system"]


class Exploit:
    """Unpickling this would run a shell command that creates a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def nested(depth, inner="1"):
    return "[" * depth + inner + "]" * depth


def hostile_items(marker):
    items = [pickle.dumps(Exploit(marker), protocol=p) for p in range(pickle.HIGHEST_PROTOCOL + 1)]
    for n, path in enumerate(NOT_TASKS):
        items.append(json.dumps({"id": f"evil-{n}", "task": path, "args": [f"touch {marker}"], "kwargs": {}}))
    items += [
        b"\xff\xfe\x00 not utf-8 \xc3\x28",
        nested(100_000),  # not even parseable: a raw payload
        '{"id": "deep-object", "task": "tasks.tasks.add", "args": ' + nested(100_000) + "}",
        # parseable, but deep enough to break anything that recurses on it later
        '{"id": "deep-args-1", "task": "tasks.tasks.add", "args": [' + nested(500) + ", 1]}",
        '{"id": "deep-args-2", "task": "tests.fixture_tasks.append_to_file", "args": [' + nested(900) + ', "x"]}',
        '{"id": "deep-kwargs", "task": "tasks.tasks.add", "args": [], "kwargs": {"a": ' + nested(950) + "}}",
        *UNSTORABLE.values(),
    ]
    return items


# Values Python's json reads but a database refuses, and times that overflow
# when converted to UTC: each ended the worker at the database write.
UNSTORABLE = {
    "nul-args": '{"id": "v-nul-args", "task": "tasks.tasks.add", "args": ["a\\u0000b", "c"]}',
    "nul-raw": "abc\x00def",
    "nul-task": '{"id": "v-nul-task", "task": "tasks.tasks.add\\u0000x", "args": [1, 2]}',
    "nul-key": '{"id": "v-nul-key", "task": "tasks.tasks.add", "kwargs": {"a\\u0000": 1, "b": 2}}',
    "nan": '{"id": "v-nan", "task": "tasks.tasks.add", "args": [NaN, 1]}',
    "infinity": '{"id": "v-inf", "task": "tasks.tasks.add", "args": [1e400, 1]}',
    "surrogate": '{"id": "v-surrogate", "task": "tasks.tasks.add", "args": ["\\ud800", "x"]}',
    "surrogate-task": '{"id": "v-surrogate-task", "task": "\\udfff", "args": []}',
    "year-0": '{"id": "v-year-0", "task": "tasks.tasks.add", "args": [1, 2], "enqueued_at": "0001-01-01T00:00:00+14:00"}',
    "year-10000": '{"id": "v-year-10000", "task": "tasks.tasks.add", "args": [1, 2], "enqueued_at": "9999-12-31T23:59:59-14:00"}',
}


def test_hostile_items_never_run_code_and_never_stop_the_worker(redis_client, start_worker, tmp_path):
    marker = tmp_path / "pwned"
    runs = tmp_path / "runs.txt"
    worker = start_worker("target")
    wait_for(lambda: "event=worker_start" in worker.log(), message="worker started")
    for item in hostile_items(marker):
        redis_client.lpush(QUEUE, item)
    good = append_to_file.enqueue(str(runs), "good")
    wait_for(all_final([good.id]), timeout=60, message="the good task after the hostile ones")
    assert worker.alive()
    assert not marker.exists(), "a message ran a shell command"
    assert executions(runs) == {"good": 1}
    rows = dict(TaskRecord.objects.filter(id__startswith="evil-").values_list("id", "status"))
    assert rows == {f"evil-{n}": TaskStatus.DEAD for n in range(len(NOT_TASKS))}
    assert TaskRecord.objects.filter(status=TaskStatus.RUNNING).count() == 0
    assert redis_client.llen(QUEUE) == 0


def test_ten_megabyte_items_keep_the_worker_memory_bounded(redis_client, start_worker, tmp_path):
    runs = tmp_path / "runs.txt"
    worker = start_worker("big")
    wait_for(lambda: "event=worker_start" in worker.log(), message="worker started")
    baseline = worker.rss_kib()
    peak = baseline
    big = "x" * (10 * 1024 * 1024)
    for n in range(20):
        # One at a time into an idle worker: each arrives through the blocking
        # take, which hands the whole item to the worker.
        redis_client.lpush(QUEUE, json.dumps({"id": f"big-{n}", "task": "tasks.tasks.add", "args": [big]}))
        wait_for(lambda: redis_client.llen(QUEUE) == 0, message="item taken")
        peak = max(peak, worker.rss_kib())
    good = append_to_file.enqueue(str(runs), "good")
    wait_for(all_final([good.id]), message="the good task after the big ones")
    peak = max(peak, worker.rss_kib())
    assert worker.alive()
    # Twenty items held at once would be 200 MB and more; one at a time, and
    # freed, stays far below.
    # The peak is what bounds memory; what the allocator keeps afterwards
    # depends on fragmentation, not on what the worker holds.
    assert peak - baseline < 80 * 1024, f"RSS grew from {baseline} KiB to {peak} KiB"
    dead = redis_client.lrange(keys.dead(QUEUE), 0, -1)
    assert len(dead) == 20
    assert max(len(entry) for entry in dead) < 64 * 1024, "dead letters keep a bounded excerpt, not 10 MB each"
    assert all("oversized" in json.loads(entry)["reason"] for entry in dead)


def test_a_task_path_in_a_message_never_imports_anything(redis_client):
    """In-process, so sys.modules can be inspected: naming a module that is
    not a registered task's must not import it, even to look."""
    paths = {"this": "this.s", "antigravity": "antigravity.geohash", "ftplib": "ftplib.FTP", "xmlrpc.server": "xmlrpc.server.SimpleXMLRPCServer"}
    fresh = {module: path for module, path in paths.items() if module not in sys.modules}
    assert {"this", "antigravity"} <= set(fresh)
    for n, path in enumerate(fresh.values()):
        redis_client.lpush(QUEUE, json.dumps({"id": f"import-{n}", "task": path, "args": []}))
    good = append_to_file.enqueue(os.devnull, "good")
    Worker(worker_id="inspector", burst=True).run()
    assert [module for module in fresh if module in sys.modules] == []
    assert TaskRecord.objects.get(id=good.id).status == TaskStatus.SUCCESSFUL
    dead = TaskRecord.objects.filter(id__startswith="import-")
    assert dead.count() == len(fresh) and all(r.status == TaskStatus.DEAD and "unknown task" in r.error for r in dead)


@pytest.mark.parametrize("name", list(UNSTORABLE))
def test_values_a_database_refuses_are_dead_lettered_not_fatal(name, redis_client):
    redis_client.lpush(QUEUE, UNSTORABLE[name])
    good = append_to_file.enqueue(os.devnull, "good")
    Worker(worker_id="careful", burst=True).run()  # raised before the fix
    assert TaskRecord.objects.get(id=good.id).status == TaskStatus.SUCCESSFUL
    assert redis_client.llen(QUEUE) == 0 and redis_client.llen(keys.processing(QUEUE, "careful")) == 0
    other = TaskRecord.objects.exclude(id=good.id).get()
    if name.startswith("year"):  # harmless once the time is read safely: it runs
        assert (other.status, other.result) == (TaskStatus.SUCCESSFUL, 3)
    else:
        assert other.status == TaskStatus.DEAD
        assert "\x00" not in other.task_path + other.error


@pytest.mark.parametrize("kind", ["nan", "nul", "surrogate", "error"])
def test_results_and_errors_a_database_refuses_fail_the_task_not_the_worker(kind, settings):
    settings.MQ_MAX_ATTEMPTS = 1
    bad = returns_unstorable.enqueue(kind)
    good = append_to_file.enqueue(os.devnull, "good")
    Worker(worker_id="careful", burst=True).run()  # raised before the fix
    assert TaskRecord.objects.get(id=good.id).status == TaskStatus.SUCCESSFUL
    row = TaskRecord.objects.get(id=bad.id)
    assert row.status == TaskStatus.FAILED and len(row.errors) == 1
    assert ("cannot be recorded" in row.error) is (kind != "error")


def test_an_exception_class_name_a_database_refuses_is_recorded_escaped(settings):
    settings.MQ_MAX_ATTEMPTS = 1
    bad = returns_unstorable.enqueue("exception-name")
    good = append_to_file.enqueue(os.devnull, "good")
    Worker(worker_id="careful", burst=True).run()  # raised before the fix
    assert TaskRecord.objects.get(id=good.id).status == TaskStatus.SUCCESSFUL
    row = TaskRecord.objects.get(id=bad.id)
    assert row.status == TaskStatus.FAILED
    assert [entry["exception"] for entry in row.errors] == ["bad\\x00\\udfffmodule.Weird"]
    assert row.error.startswith("bad\\x00\\udfffmodule.Weird\nTraceback")


@pytest.mark.parametrize("kind", ["nan", "error"])
def test_an_outcome_the_database_refuses_fails_the_task_not_the_worker(kind, settings, monkeypatch):
    """Defence in depth: with the worker's own checks out of the way, the
    database refuses the outcome (a NaN result, an error text with NUL and a
    lone surrogate). The task is recorded failed with the reason, its batch
    neighbour as it ran, and the worker goes on."""
    monkeypatch.setattr(worker_module, "unstorable", lambda value: None)
    monkeypatch.setattr(worker_module, "printable", lambda text: text)
    settings.MQ_MAX_ATTEMPTS = 1
    bad = returns_unstorable.enqueue(kind)
    good = append_to_file.enqueue(os.devnull, "good")
    worker = Worker(worker_id="careful", burst=True)
    worker.batch_size = 10  # both in one batch: one refused row must not cost the other its record
    assert worker.run() == 2  # raised before the fix
    assert TaskRecord.objects.get(id=good.id).status == TaskStatus.SUCCESSFUL
    row = TaskRecord.objects.get(id=bad.id)
    assert row.status == TaskStatus.FAILED and row.finished_at is not None
    assert row.error.startswith("the outcome could not be recorded:")
    assert [entry["exception"] for entry in row.errors] == ["mqsite.RecordRefused"]


# --- broadcasts a listener cannot store as they came ----------------------------
CHANNEL = "task:pubsub:channel"
# Payloads published straight to Redis, and the receipt text each must leave.
# JSON that parses to what no database column takes (infinity from an
# overflowing number, NUL, lone surrogates), and text that is not UTF-8 or
# holds NUL: each ended every listen_channel at the receipt's insert.
HOSTILE_BROADCASTS = {
    b"[1,-1E999]": "[1,-1E999]",
    b'{"k\\u0000": 1}': '{"k\\u0000": 1}',
    b'"\\ud800"': '"\\ud800"',
    b"a\x00b": "a\\x00b",
    b"\xed\xa0\x80": "\\xed\\xa0\\x80",  # a surrogate in UTF-8's form: not valid UTF-8
    b"\xff\xfe\x00": "\\xff\\xfe\\x00",
}
# What the publish command sends: the text as given.
HOSTILE_COMMANDS = ["1e400", '"a\\u0000b"']
# Matched by a pattern, a channel longer than the receipt's column holds.
LONG_CHANNEL = "hostile:" + "x" * 300


def start_listener(redis_url, tmp_path, listener_id, *args):
    log = tmp_path / f"{listener_id}.log"
    proc = manage(redis_url, "listen_channel", "--listener-id", listener_id, *args, log_path=log)
    proc.log = log
    return proc


def test_hostile_broadcasts_are_recorded_and_every_listener_goes_on(redis_url, redis_client, tmp_path, admin_client):
    plain = start_listener(redis_url, tmp_path, "plain")
    patterned = start_listener(redis_url, tmp_path, "patterned", "--pattern", "hostile:*")
    try:
        wait_for(lambda: dict(redis_client.pubsub_numsub(CHANNEL))[CHANNEL.encode()] == 1, message="plain subscribed")
        wait_for(lambda: redis_client.pubsub_numpat() == 1, message="patterned subscribed")
        for command in HOSTILE_COMMANDS:
            done = run_manage(redis_url, "publish", command)
            assert (done.returncode, done.stdout) == (0, "1\n"), done.stderr
        assert admin_client.post("/pubsub", {"message": "1e400"}).status_code == 303
        # Text with NUL is refused before anything is published or written.
        refused = admin_client.post("/pubsub", {"message": "a\x00b"})
        assert refused.status_code == 200 and refused.context["form"].errors["message"]
        for payload in HOSTILE_BROADCASTS:
            assert redis_client.publish(CHANNEL, payload) == 1
        assert redis_client.publish(LONG_CHANNEL, "long") == 1
        # Received after the hostile ones, so recorded last: once it is there,
        # every listener went through them all.
        assert publish("after") == 1
        assert redis_client.publish("hostile:after", "after") == 1
        wait_for(lambda: ReceivedMessage.objects.filter(payload="after").count() == 2, message="'after' twice")
        for proc in (plain, patterned):
            assert proc.poll() is None, proc.log.read_text()

        texts = sorted(ReceivedMessage.objects.filter(listener="plain").values_list("payload", flat=True))
        assert texts == sorted([*HOSTILE_COMMANDS, "1e400", *HOSTILE_BROADCASTS.values(), "after"])
        overflows = ReceivedMessage.objects.filter(payload="1e400")
        assert {(row.is_json, row.data, row.ok) for row in overflows} == {(True, None, True)}
        assert sorted(overflows.values_list("published__publisher", flat=True)) == ["command", "user:admin"]
        after = ReceivedMessage.objects.get(listener="plain", payload="after")
        assert (after.ok, after.error, after.is_json) == (True, "", False)
        long = ReceivedMessage.objects.get(listener="patterned", payload="long")
        assert long.channel.startswith("hostile:xxx") and LONG_CHANNEL.startswith(long.channel)
    finally:
        stop(plain)
        stop(patterned)
    for proc in (plain, patterned):
        assert proc.returncode == 0, proc.log.read_text()
