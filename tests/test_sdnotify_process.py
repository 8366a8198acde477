"""sd_notify from real worker processes, with the test standing in for systemd.

The test binds the AF_UNIX datagram socket that $NOTIFY_SOCKET names and sets
WATCHDOG_USEC=1000000, so a worker pings every 0.5 s. "Nothing arrives" is a
receive with a timeout: the bounds are generous, each several times what the
design promises, so a slow machine does not fail them.
"""

import signal
import socket
import time

import pytest

from tasks.models import TaskRecord, TaskStatus
from tasks.tasks import add
from tasks.worker.loop import Worker
from tests.fixture_tasks import sleep_for
from tests.processes import manage, run_in_thread, stop, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

WATCHDOG_USEC = 1_000_000
INTERVAL = WATCHDOG_USEC / 2 / 1_000_000


class Systemd:
    """The receiving end of $NOTIFY_SOCKET; keeps every datagram it read."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.messages = []

    def receive(self, timeout):
        """One datagram's lines, or None if nothing came within timeout."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            lines = self.sock.recv(4096).decode().split("\n")
        except TimeoutError:
            return None
        self.messages.append(lines)
        return lines

    def wait_for(self, line, timeout):
        """Seconds until a datagram with ``line`` arrived, or None after timeout."""
        started = time.monotonic()
        deadline = started + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            lines = self.receive(remaining)
            if lines and line in lines:
                return time.monotonic() - started
        return None

    def count(self, line, seconds):
        """How many datagrams with ``line`` arrive within ``seconds``."""
        deadline = time.monotonic() + seconds
        found = 0
        while (remaining := deadline - time.monotonic()) > 0:
            lines = self.receive(remaining)
            found += bool(lines and line in lines)
        return found

    def seen(self, line):
        return sum(line in lines for lines in self.messages)

    def close(self):
        self.sock.close()


@pytest.fixture
def systemd(tmp_path, monkeypatch):
    path = str(tmp_path / "notify.sock")
    assert len(path) < 100, "AF_UNIX paths are limited to 107 bytes"
    receiver = Systemd(path)
    # Child processes inherit the test's environment (tests.processes.child_env).
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield receiver
    receiver.close()


def _log_says(path, text):
    return lambda: path.exists() and text in path.read_text()


def test_worker_is_ready_only_once_redis_answers(redis_server, redis_url, systemd, tmp_path):
    log = tmp_path / "worker.log"
    redis_server.stop()
    worker = None
    try:
        worker = manage(redis_url, "listen_queue", "--worker-id", "sd-ready", log_path=log)
        wait_for(_log_says(log, "event=redis_down"), timeout=30, message="the worker trying a Redis that is down")
        assert systemd.wait_for("READY=1", timeout=2) is None, "READY=1 while Redis was down"
        assert worker.poll() is None, "the worker must wait for Redis, not exit"

        redis_server.start()
        assert systemd.wait_for("READY=1", timeout=20) is not None, "no READY=1 after Redis came back"
        [ready] = [lines for lines in systemd.messages if "READY=1" in lines]
        assert any(line.startswith("STATUS=processed=0") for line in ready)
    finally:
        if redis_server.process is None:
            redis_server.start()
        if worker is not None:
            assert stop(worker) == 0, log.read_text()


def test_watchdog_pings_and_status_from_a_healthy_worker(redis_url, systemd, tmp_path):
    log = tmp_path / "worker.log"
    worker = manage(redis_url, "listen_queue", "--worker-id", "sd-watchdog", log_path=log)
    try:
        assert systemd.wait_for("READY=1", timeout=30) is not None, log.read_text()
        pings = systemd.count("WATCHDOG=1", seconds=3)
        # Every 0.5 s: about six; never a flood, since they are rate-limited.
        assert 3 <= pings <= 3 / INTERVAL + 2, pings

        add.enqueue(1, 2)
        deadline = time.monotonic() + 10
        while not any("STATUS=processed=1 failed=0 current=- busy=0/1" in lines for lines in systemd.messages):
            assert time.monotonic() < deadline, "STATUS= never showed the task done"
            systemd.receive(0.5)
    finally:
        assert stop(worker) == 0, log.read_text()


def test_stopping_at_once_on_sigterm_while_a_task_runs(redis_url, systemd, tmp_path):
    log = tmp_path / "worker.log"
    slow = sleep_for.enqueue(3)
    worker = manage(redis_url, "listen_queue", "--worker-id", "sd-stop", log_path=log)
    try:
        assert systemd.wait_for("READY=1", timeout=30) is not None, log.read_text()
        wait_for(
            lambda: TaskRecord.objects.filter(id=slow.id, status=TaskStatus.RUNNING).exists(),
            message="the task running",
        )
        worker.send_signal(signal.SIGTERM)
        # The design says within a second; 5 s keeps a slow machine from failing.
        assert systemd.wait_for("STOPPING=1", timeout=5) is not None, "no STOPPING=1 after SIGTERM"
        assert worker.poll() is None, "STOPPING=1 must come while the task still runs, not after it"
        assert worker.wait(30) == 0, log.read_text()
    finally:
        stop(worker)
    assert TaskRecord.objects.get(id=slow.id).status == TaskStatus.SUCCESSFUL
    while systemd.receive(0.2) is not None:
        pass
    assert systemd.seen("STOPPING=1") == 1, systemd.messages


def test_a_second_sigterm_forces_the_worker_out_of_a_running_task(redis_url, systemd, tmp_path):
    """The forced exit is a SystemExit raised inside the running task: the
    worker must not take it for the task's own failure and carry on."""
    log = tmp_path / "worker.log"
    slow = sleep_for.enqueue(60)
    worker = manage(redis_url, "listen_queue", "--worker-id", "sd-forced", log_path=log)
    try:
        wait_for(
            lambda: TaskRecord.objects.filter(id=slow.id, status=TaskStatus.RUNNING).exists(),
            message="the task running",
        )
        worker.send_signal(signal.SIGTERM)
        # Two signals sent together may reach the handler as one.
        assert systemd.wait_for("STOPPING=1", timeout=5) is not None, "no STOPPING=1 after SIGTERM"
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(10) == 128 + signal.SIGTERM, log.read_text()
    finally:
        stop(worker)
    row = TaskRecord.objects.get(id=slow.id)
    assert (row.status, row.errors) == (TaskStatus.RUNNING, [])  # left to recovery, not failed


def test_frozen_loop_stops_the_watchdog_pings(redis_url, systemd, tmp_path):
    log = tmp_path / "worker.log"
    # The main loop freezes on its third pass, as a deadlock would; the
    # heartbeat thread goes on, and must not ping on the loop's behalf.
    worker = manage(redis_url, "listen_queue", "--worker-id", "sd-freeze", fault="loop/freeze:3", log_path=log)
    try:
        assert systemd.wait_for("READY=1", timeout=30) is not None, log.read_text()
        pings, last_ping = 0, time.monotonic()
        deadline = last_ping + 20
        while time.monotonic() - last_ping < 6 * INTERVAL:
            assert time.monotonic() < deadline, "the pings never stopped"
            lines = systemd.receive(0.1)
            if lines and "WATCHDOG=1" in lines:
                pings, last_ping = pings + 1, time.monotonic()
        assert pings >= 1, "no ping before the freeze"
        assert worker.poll() is None, "the worker must be frozen, not dead"
        before = len(systemd.messages)
        assert systemd.count("WATCHDOG=1", seconds=4 * INTERVAL) == 0
        # The heartbeat thread is alive and still reports STATUS=; it just
        # does not vouch for a loop that stopped.
        assert any(line.startswith("STATUS=") for lines in systemd.messages[before:] for line in lines)
    finally:
        worker.kill()
        worker.wait(10)


def test_listener_ready_watchdog_and_stopping(redis_server, redis_url, systemd, tmp_path):
    log = tmp_path / "listener.log"
    redis_server.stop()
    listener = None
    try:
        listener = manage(redis_url, "listen_channel", "--listener-id", "sd-listener", log_path=log)
        wait_for(_log_says(log, "event=channel_down"), timeout=30, message="the listener trying a Redis that is down")
        assert systemd.wait_for("READY=1", timeout=2) is None, "READY=1 while Redis was down"
        assert listener.poll() is None

        redis_server.start()
        assert systemd.wait_for("READY=1", timeout=20) is not None, log.read_text()
        assert systemd.count("WATCHDOG=1", seconds=3) >= 3

        listener.send_signal(signal.SIGTERM)
        assert systemd.wait_for("STOPPING=1", timeout=5) is not None, "no STOPPING=1 after SIGTERM"
        assert listener.wait(20) == 0, log.read_text()
        while systemd.receive(0.2) is not None:
            pass
        assert systemd.seen("STOPPING=1") == 1, systemd.messages
    finally:
        if redis_server.process is None:
            redis_server.start()
        if listener is not None:
            stop(listener)


class RecordingNotifier:
    watchdog_interval = None

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append(name)


def test_in_process_worker_says_stopping_once(redis_url):
    """Stop requested mid-task: the heartbeat thread tells systemd at once and
    the shutdown does not repeat it."""
    notifier = RecordingNotifier()
    worker = Worker(worker_id="sd-once", notifier=notifier)
    sleep_for.enqueue(1)

    thread = run_in_thread(worker.run)
    try:
        wait_for(lambda: worker.current is not None, message="the task running")
        worker.request_stop()
        wait_for(lambda: "stopping" in notifier.calls, timeout=5, message="STOPPING=1 while the task runs")
        assert worker.current is not None
    finally:
        worker.request_stop()
        thread.join(10)
    assert notifier.calls.count("stopping") == 1
    assert notifier.calls.count("ready") == 1


def test_burst_worker_says_stopping_once(redis_url):
    notifier = RecordingNotifier()
    add.enqueue(1, 1)
    assert Worker(burst=True, worker_id="sd-burst", notifier=notifier).run() == 1
    assert notifier.calls.count("stopping") == 1


def test_status_shows_busy_slots_and_pings_go_on_while_slots_run(redis_url, systemd, tmp_path):
    log = tmp_path / "worker.log"
    for _ in range(3):
        sleep_for.enqueue(4)
    worker = manage(redis_url, "listen_queue", "--worker-id", "sd-slots", "--concurrency", "4", log_path=log)
    try:
        assert systemd.wait_for("READY=1", timeout=30) is not None, log.read_text()
        deadline = time.monotonic() + 10
        while not any(line.startswith("STATUS=") and line.endswith(" busy=3/4") for lines in systemd.messages for line in lines):
            assert time.monotonic() < deadline, f"STATUS= never showed three busy slots: {systemd.messages}"
            systemd.receive(0.5)
        # Three tasks within their limits: the worker still vouches for itself.
        assert systemd.count("WATCHDOG=1", seconds=1.5) >= 1
    finally:
        assert stop(worker) == 0, log.read_text()
