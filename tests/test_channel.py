"""The broadcast channel: publish, listen_channel processes, receipts, outages.

Listeners are real processes against the suite's Redis server. A test knows
a listener is subscribed when Redis's own PUBSUB NUMSUB (or NUMPAT) says so,
and knows it is back after an outage from the one line it logs about it.
"""

import socket
import threading
from collections import Counter

import pytest
from django.db import OperationalError, connections
from django.utils import timezone

from tasks.queue import presence
from tasks.channel import receipts
from tasks.queue.connection import reset_clients
from tasks.dbretry import retry_database
from tasks.channel.listener import Listener
from tasks.models import PublishedMessage, ReceivedMessage
from tasks.channel.publish import publish
from tasks.exceptions import ChannelUnavailable, DatabaseGaveUp, MessageTooLarge
from tasks.web.status import collect_status
from tests.processes import manage, run_manage, stop, wait_for
from tests.redis_server import free_port

pytestmark = pytest.mark.django_db(transaction=True)

CHANNEL = "task:pubsub:channel"
FAILING_HANDLER = {"MQ_CHANNEL_HANDLERS": {CHANNEL: "tests.handlers.explode_on_boom"}}


@pytest.fixture
def start_listener(redis_url, tmp_path):
    """Start `listen_channel --listener-id ID ...`; its stderr goes to proc.log."""
    started = []

    def start(listener_id, *args, settings=None):
        log = tmp_path / f"{listener_id}.log"
        proc = manage(redis_url, "listen_channel", "--listener-id", listener_id, *args, settings=settings, log_path=log)
        proc.log = log
        started.append(proc)
        return proc

    yield start
    for proc in started:
        stop(proc)


def log_of(proc):
    return proc.log.read_text()


def numsub(client, channel=CHANNEL):
    return dict(client.pubsub_numsub(channel))[channel.encode()]


def subscribed(client, count, channel=CHANNEL):
    wait_for(lambda: numsub(client, channel) == count, message=f"{count} subscribers on {channel}")


def next_message(subscriber):
    """The data of the next message, skipping subscribe confirmations."""
    while True:
        message = subscriber.get_message(timeout=5)
        assert message is not None, "no message within 5 s"
        if message["type"] == "message":
            return message["data"]


def receipt_count(**filters):
    return ReceivedMessage.objects.filter(**filters).count()


# --- several listeners, every way of publishing --------------------------------
def test_two_listeners_record_each_message_exactly_once(redis_url, redis_client, start_listener):
    start_listener("alpha")
    start_listener("beta")
    subscribed(redis_client, 2)

    assert publish({"n": 1}, publisher="tests") == 2
    done = run_manage(redis_url, "publish", "hello")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "2\n"
    wait_for(lambda: receipt_count() == 4, message="4 receipts")
    # A last message: once it is recorded, nothing else was on its way.
    publish("last", publisher="tests")
    wait_for(lambda: receipt_count() == 6, message="6 receipts")

    seen = Counter(ReceivedMessage.objects.values_list("listener", "payload"))
    assert seen == {(listener, payload): 1 for listener in ("alpha", "beta") for payload in ('{"n":1}', "hello", "last")}
    published = {row.payload: row for row in PublishedMessage.objects.all()}
    assert {p: (row.receivers, row.publisher) for p, row in published.items()} == {
        '{"n":1}': (2, "tests"),
        "hello": (2, "command"),
        "last": (2, "tests"),
    }
    json_receipt = ReceivedMessage.objects.filter(payload='{"n":1}').first()
    assert (json_receipt.is_json, json_receipt.data, json_receipt.ok) == (True, {"n": 1}, True)
    assert json_receipt.handler == "tasks.channel.handlers.log_message"
    linked = ["alpha", "beta"]
    wait_for(
        lambda: all(sorted(row.receipts.values_list("listener", flat=True)) == linked for row in published.values()),
        message="every receipt linked to its publish",
    )


def test_plain_redis_publish_is_received_and_recorded_as_text(redis_server, redis_client, start_listener):
    start_listener("seed")
    subscribed(redis_client, 1)
    plain = redis_server.client()
    assert plain.publish(CHANNEL, 7) == 1
    plain.publish(CHANNEL, "not json at all")
    plain.publish(CHANNEL, b"\xff\xfe")
    plain.close()
    wait_for(lambda: receipt_count() == 3, message="3 receipts")

    rows = {row.payload: row for row in ReceivedMessage.objects.all()}
    assert set(rows) == {"7", "not json at all", "\\xff\\xfe"}
    assert (rows["7"].is_json, rows["7"].data) == (True, 7)
    assert (rows["not json at all"].is_json, rows["not json at all"].data) == (False, None)
    assert all(row.ok and row.listener == "seed" and row.published is None for row in rows.values())


def test_oversized_message_is_recorded_unhandled(redis_server, redis_client, start_listener):
    start_listener("small", settings={"MQ_MAX_MESSAGE_BYTES": 100, **FAILING_HANDLER})
    subscribed(redis_client, 1)
    plain = redis_server.client()
    plain.publish(CHANNEL, "boom" * 50)  # the handler would raise on it: it must not run
    plain.publish(CHANNEL, "boom")
    plain.close()
    wait_for(lambda: receipt_count() == 2, message="2 receipts")
    big = ReceivedMessage.objects.get(payload__startswith="boomboom")
    assert not big.ok and big.error == "oversized: 200 bytes, over the limit of 100; not handled"
    assert "handler refused" in ReceivedMessage.objects.get(payload="boom").error


def test_pattern_subscription(redis_client, start_listener):
    start_listener("patterns", "--pattern", "news:*")
    wait_for(lambda: redis_client.pubsub_numpat() == 1, message="pattern subscribed")
    assert numsub(redis_client) == 0  # --pattern alone does not add the default channel
    assert publish("goal", channel="news:sport") == 1
    assert publish("sunny", channel="weather") == 0
    wait_for(lambda: receipt_count() == 1, message="the news receipt")
    row = ReceivedMessage.objects.get()
    assert (row.channel, row.pattern, row.payload) == ("news:sport", "news:*", "goal")
    assert PublishedMessage.objects.get(channel="weather").receivers == 0


# --- handlers -----------------------------------------------------------------
def test_failing_handler_is_recorded_and_the_listener_goes_on(redis_client, start_listener):
    proc = start_listener("picky", settings=FAILING_HANDLER)
    subscribed(redis_client, 1)
    publish("boom")
    publish("fine")
    wait_for(lambda: receipt_count() == 2, message="2 receipts")

    boom, fine = ReceivedMessage.objects.get(payload="boom"), ReceivedMessage.objects.get(payload="fine")
    assert not boom.ok and "RuntimeError: handler refused 'boom'" in boom.error
    assert boom.handler == "tests.handlers.explode_on_boom"
    assert (fine.ok, fine.error) == (True, "")
    assert proc.poll() is None
    assert "event=message_failed listener=picky" in log_of(proc)


# --- outages ------------------------------------------------------------------
def test_killed_subscription_resubscribes_and_receives_the_next_message(redis_client, start_listener):
    proc = start_listener("killed")
    subscribed(redis_client, 1)
    assert redis_client.execute_command("CLIENT", "KILL", "TYPE", "pubsub") == 1
    wait_for(lambda: "event=resubscribed" in log_of(proc), timeout=10, message="resubscribed")
    assert publish("after the kill") == 1
    wait_for(lambda: receipt_count(payload="after the kill") == 1, message="receipt after the kill")
    log = log_of(proc)
    assert (log.count("event=channel_down"), log.count("event=resubscribed")) == (1, 1)


@pytest.mark.slow
def test_redis_restart_listeners_come_back_without_a_crash_loop(redis_server, redis_client, start_listener):
    listeners = [start_listener(name, "--verbosity", "2") for name in ("r1", "r2")]
    subscribed(redis_client, 2)
    redis_server.stop()
    # Let each listener fail to reconnect a few times, backing off.
    wait_for(
        lambda: all(log_of(p).count("event=resubscribe_failed") >= 3 for p in listeners),
        timeout=30,
        message="reconnect attempts while Redis is down",
    )
    assert all(p.poll() is None for p in listeners)
    redis_server.start()
    subscribed(redis_client, 2)
    assert publish("after the restart") == 2
    wait_for(lambda: receipt_count(payload="after the restart") == 2, message="both receipts after the restart")
    # Presence vanished with the server's data; the heartbeat puts it back.
    wait_for(
        lambda: {listener["id"] for listener in presence.active(redis_client, "listener")} == {"r1", "r2"},
        message="listeners registered again",
    )
    for proc in listeners:
        log = log_of(proc)
        assert proc.poll() is None
        assert (log.count("event=channel_down"), log.count("event=resubscribed")) == (1, 1), log
        # Backoff keeps the attempts few: no loop hammering a dead server.
        assert log.count("event=resubscribe_failed") < 25, log
        assert "Traceback" not in log


@pytest.mark.slow
def test_frozen_server_is_detected_by_the_ping_deadline(redis_server, redis_client, start_listener):
    """A server that stops answering, socket still open (as with a half-open
    connection): only a PING whose reply must arrive in time notices."""
    proc = start_listener("frozen", settings={"MQ_SOCKET_TIMEOUT": 1.0, "MQ_BLOCK_SECONDS": 0.2})
    subscribed(redis_client, 1)
    redis_server.pause()
    try:
        wait_for(lambda: "no reply to PING" in log_of(proc), timeout=20, message="dead connection detected")
    finally:
        redis_server.resume()
    wait_for(lambda: "event=resubscribed" in log_of(proc), timeout=20, message="resubscribed")
    assert publish("thawed") == 1
    wait_for(lambda: receipt_count(payload="thawed") == 1, message="receipt after the freeze")


def test_listener_rides_out_a_database_outage(redis_client, monkeypatch):
    real_record, failures = receipts.record, []

    def flaky_record(receipt):
        if len(failures) < 2:
            failures.append(receipt.payload)
            raise OperationalError("database is locked")
        return real_record(receipt)

    monkeypatch.setattr(receipts, "record", flaky_record)
    listener = Listener(listener_id="inproc", max_messages=1)

    def run():
        try:
            listener.run()
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        subscribed(redis_client, 1)
        assert publish("kept") == 1
        thread.join(20)
    finally:
        listener.request_stop()
        thread.join(20)
    assert failures == ["kept", "kept"]
    assert ReceivedMessage.objects.get().payload == "kept"


def test_a_receipt_the_database_refuses_is_recorded_failed_and_the_listener_goes_on(redis_client, monkeypatch, caplog):
    """Defence in depth: a value the listener's own checks missed reaches the
    database, which refuses it (IntegrityError on SQLite, DataError on
    PostgreSQL). The receipt is kept without it, and the listener goes on."""
    real_record = receipts.record

    def record_what_a_check_missed(receipt):
        if receipt.ok and receipt.payload == "poisoned":
            receipt.data = float("inf")
        return real_record(receipt)

    monkeypatch.setattr(receipts, "record", record_what_a_check_missed)
    listener = Listener(listener_id="inproc", max_messages=2)

    def run():
        try:
            listener.run()
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        subscribed(redis_client, 1)
        assert publish("poisoned") == 1
        assert publish("fine") == 1
        thread.join(20)
    finally:
        listener.request_stop()
        thread.join(20)
    assert listener.received == 2
    rows = {row.payload: row for row in ReceivedMessage.objects.all()}
    assert set(rows) == {"poisoned", "fine"}
    poisoned = rows["poisoned"]
    assert (poisoned.ok, poisoned.data, poisoned.listener) == (False, None, "inproc")
    assert poisoned.error.startswith("the receipt could not be recorded as received:")
    assert (rows["fine"].ok, rows["fine"].error) == (True, "")
    assert "event=receipt_refused listener=inproc" in caplog.text


# --- stopping -----------------------------------------------------------------
def test_sigterm_exits_0_and_leaves_the_registry(redis_client, start_listener):
    proc = start_listener("leaving")
    subscribed(redis_client, 1)
    wait_for(lambda: "leaving" in {listener["id"] for listener in presence.active(redis_client, "listener")}, message="registered")
    assert collect_status()["channels"] == {CHANNEL: 1}
    assert stop(proc) == 0
    assert "leaving" not in {listener["id"] for listener in presence.active(redis_client, "listener")}
    assert numsub(redis_client) == 0
    assert "event=listener_stop listener=leaving" in log_of(proc)


def test_systemd_hears_ready_watchdog_and_stopping(redis_client, start_listener, monkeypatch, tmp_path):
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(str(tmp_path / "notify.sock"))
    systemd.settimeout(20)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    heard = []

    def hear(state):
        while not any(state in message.splitlines() for message in heard):
            heard.append(systemd.recv(4096).decode())

    proc = start_listener("notified")
    try:
        hear("READY=1")
        assert numsub(redis_client) == 1  # ready means subscribed
        hear("WATCHDOG=1")
        assert stop(proc) == 0
        hear("STOPPING=1")
    finally:
        systemd.close()


def test_max_messages_exits_0(redis_client, start_listener):
    proc = start_listener("counted", "--max-messages", "2")
    subscribed(redis_client, 1)
    publish("one")
    publish("two")
    assert proc.wait(20) == 0
    assert receipt_count(listener="counted") == 2


# --- publishing ---------------------------------------------------------------
def test_publish_sends_text_as_is_and_anything_else_as_json(redis_client):
    subscriber = redis_client.pubsub()
    subscriber.subscribe(CHANNEL)
    subscribed(redis_client, 1)
    assert publish("7") == 1
    assert publish({"dish": "tagine", "n": [1, 2]}) == 1
    wire = [next_message(subscriber) for _ in range(2)]
    subscriber.close()
    assert wire == [b"7", b'{"dish":"tagine","n":[1,2]}']
    assert list(PublishedMessage.objects.order_by("id").values_list("payload", flat=True)) == [w.decode() for w in wire]


def test_publish_refused_writes_nothing(settings):
    settings.MQ_MAX_MESSAGE_BYTES = 100
    with pytest.raises(MessageTooLarge):
        publish("x" * 101)
    with pytest.raises(ValueError):
        publish("x", channel="")
    settings.MQ_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    reset_clients()
    with pytest.raises(ChannelUnavailable):
        publish("lost")
    assert not PublishedMessage.objects.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["listen_channel", "--max-messages", "0"], "--max-messages must be at least 1"),
        (["listen_channel", "--listener-id", "not ok!"], "--listener-id may use"),
        (["listen_channel", "--channel", ""], "--channel needs a name"),
        (["publish", "hi", "--channel", ""], "Nothing was published: channel must be a non-empty string"),
    ],
)
def test_command_mistakes_are_clear_errors(redis_url, argv, message):
    done = run_manage(redis_url, *argv)
    assert done.returncode != 0
    assert message in done.stderr and "Traceback" not in done.stderr


def test_unknown_handler_stops_the_start(redis_url):
    done = run_manage(redis_url, "listen_channel", settings={"MQ_DEFAULT_CHANNEL_HANDLER": "tests.handlers.missing"})
    assert done.returncode != 0
    assert "channel handler 'tests.handlers.missing' cannot be imported" in done.stderr


def test_publish_command_refuses_oversized_message(redis_url):
    done = run_manage(redis_url, "publish", "x" * 200, settings={"MQ_MAX_MESSAGE_BYTES": 100})
    assert done.returncode != 0 and "over the limit of 100" in done.stderr
    assert not PublishedMessage.objects.exists()


# --- receipts tied to their publish ------------------------------------------------
def receive(listener, payload, channel=CHANNEL):
    return receipts.record(
        ReceivedMessage(listener=listener, channel=channel, payload=payload, received_at=timezone.now())
    )


def test_receipts_are_linked_whichever_side_commits_last():
    early = receive("l1", "early")  # recorded before its publish's row commits
    publish("early")
    publish("late")
    late = receive("l1", "late")  # recorded after
    stranger = receive("l1", "from redis-cli")  # never published through mqsite
    early.refresh_from_db()
    late.refresh_from_db()
    stranger.refresh_from_db()
    assert early.published.payload == "early" and late.published.payload == "late"
    assert stranger.published is None


def test_identical_payloads_link_in_order_one_receipt_per_listener():
    publish("same")
    publish("same")
    first, second, other = receive("l1", "same"), receive("l1", "same"), receive("l2", "same")
    older, newer = PublishedMessage.objects.order_by("id")
    assert [r.published_id for r in (first, second, other)] == [None] * 3  # the instances are stale
    rows = dict(ReceivedMessage.objects.values_list("id", "published_id"))
    assert (rows[first.id], rows[second.id], rows[other.id]) == (older.id, newer.id, older.id)


def test_admin_links_a_publish_to_its_receipts(admin_client):
    publish("shown")
    receive("l1", "shown")
    receive("l1", "not linked")
    published = PublishedMessage.objects.get()
    page = admin_client.get("/admin/tasks/publishedmessage/").content.decode()
    link = f"/admin/tasks/receivedmessage/?published__id__exact={published.id}"
    assert f'href="{link}">1 recorded<' in page
    receipts_page = admin_client.get(link)
    assert receipts_page.status_code == 200
    assert receipts_page.context["cl"].result_count == 1
    assert admin_client.get(f"/admin/tasks/publishedmessage/{published.id}/change/").status_code == 200
    assert admin_client.get("/admin/tasks/receivedmessage/?ok__exact=0&q=shown").status_code == 200
    assert admin_client.get("/admin/tasks/publishedmessage/add/").status_code == 403


# --- the shared database retry ------------------------------------------------
def test_retry_database_waits_out_an_outage(caplog):
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("database is locked")
        return "done"

    assert retry_database(flaky, owner="listener=x") == "done"
    events = [r.getMessage().split()[0] for r in caplog.records if r.name == "tasks.dbretry"]
    assert events == ["event=db_down", "event=db_back"]


def test_retry_database_gives_up_when_asked():
    def down():
        raise OperationalError("no such host")

    with pytest.raises(DatabaseGaveUp):
        retry_database(down, owner="listener=x", give_up=lambda: True)
