"""tasks.sdnotify against a real AF_UNIX datagram socket standing in for systemd.

A datagram sent to a local AF_UNIX socket is queued on the receiver before
sendto() returns, so "nothing was sent" is checked with a non-blocking recv
and needs no sleep.
"""

import logging
import os
import socket
import uuid

import pytest

from tasks.sdnotify import SystemdNotifier

pytestmark = pytest.mark.no_redis


def _receiver(address):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.setblocking(False)
    return sock


def _received(sock):
    """Every datagram waiting on the socket, decoded."""
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


@pytest.fixture
def systemd(tmp_path):
    path = tmp_path / "notify.sock"
    sock = _receiver(str(path))
    yield sock, str(path)
    sock.close()


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_without_notify_socket_everything_is_a_no_op(monkeypatch):
    def no_socket(*args, **kwargs):
        raise AssertionError("no socket may be created without NOTIFY_SOCKET")

    monkeypatch.setattr(socket, "socket", no_socket)
    notifier = SystemdNotifier(environ={"WATCHDOG_USEC": "30000000"})

    assert notifier.enabled is False
    assert notifier.watchdog_interval is None
    notifier.ready("up")
    notifier.status("processed=1")
    notifier.watchdog()
    notifier.stopping()


def test_ready_status_and_stopping_datagrams(systemd):
    sock, path = systemd
    notifier = SystemdNotifier(environ={"NOTIFY_SOCKET": path})

    assert notifier.enabled is True
    notifier.ready()
    notifier.ready(status="processed=0 current=-")
    notifier.status("processed=3 current=demo.add")
    notifier.stopping()

    assert _received(sock) == [
        "READY=1",
        "READY=1\nSTATUS=processed=0 current=-",
        "STATUS=processed=3 current=demo.add",
        "STOPPING=1",
    ]


def test_status_text_cannot_inject_other_keys(systemd):
    sock, path = systemd
    SystemdNotifier(environ={"NOTIFY_SOCKET": path}).status("failed\nREADY=1")

    assert _received(sock) == ["STATUS=failed READY=1"]


def test_abstract_namespace_socket():
    name = f"mqsite-test-{uuid.uuid4().hex}"
    sock = _receiver("\0" + name)
    try:
        SystemdNotifier(environ={"NOTIFY_SOCKET": "@" + name}).ready()
        assert _received(sock) == ["READY=1"]
    finally:
        sock.close()


def test_watchdog_pings_at_half_the_timeout(systemd):
    sock, path = systemd
    clock = FakeClock()
    notifier = SystemdNotifier(
        environ={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"}, clock=clock
    )
    assert notifier.watchdog_interval == 5.0

    notifier.watchdog()  # the first call pings at once
    assert _received(sock) == ["WATCHDOG=1"]

    for _ in range(1000):  # a busy loop costs no datagrams
        notifier.watchdog()
    clock.now += 4.9
    notifier.watchdog()
    assert _received(sock) == []

    clock.now += 0.1
    notifier.watchdog()
    notifier.watchdog()
    assert _received(sock) == ["WATCHDOG=1"]

    clock.now += 12
    notifier.watchdog()
    assert _received(sock) == ["WATCHDOG=1"]


def test_watchdog_needs_watchdog_usec(systemd):
    sock, path = systemd
    notifier = SystemdNotifier(environ={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "bogus"})

    notifier.watchdog()

    assert notifier.watchdog_interval is None
    assert _received(sock) == []


def test_watchdog_for_another_pid_is_ignored(systemd):
    sock, path = systemd
    environ = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}
    other = SystemdNotifier(environ={**environ, "WATCHDOG_PID": str(os.getpid() + 1)})
    mine = SystemdNotifier(environ={**environ, "WATCHDOG_PID": str(os.getpid())})

    other.watchdog()
    assert other.watchdog_interval is None
    assert _received(sock) == []

    mine.watchdog()
    assert mine.watchdog_interval == 1.0
    assert _received(sock) == ["WATCHDOG=1"]


def test_dead_socket_never_raises_and_warns_once(tmp_path, caplog):
    notifier = SystemdNotifier(environ={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})

    with caplog.at_level(logging.WARNING, logger="tasks.sdnotify"):
        notifier.ready("up")
        notifier.status("processed=1")
        notifier.stopping()

    warnings = [r for r in caplog.records if r.name == "tasks.sdnotify"]
    assert len(warnings) == 1
    assert "event=sdnotify_failed" in warnings[0].getMessage()


def test_socket_that_goes_away_later_never_raises(systemd):
    sock, path = systemd
    notifier = SystemdNotifier(environ={"NOTIFY_SOCKET": path})
    notifier.ready()
    sock.close()
    os.unlink(path)

    notifier.status("still running")
    notifier.stopping()
