"""Report a worker's state to systemd (the sd_notify protocol) in pure Python.

A unit with ``Type=notify`` waits for ``READY=1`` before it counts the service
as started, restarts it when ``WATCHDOG=1`` stops arriving (``WatchdogSec=``),
shows ``STATUS=`` in ``systemctl status`` and learns from ``STOPPING=1`` that a
graceful stop is under way. The protocol is one datagram of ``KEY=VALUE``
lines sent to the AF_UNIX socket named in ``$NOTIFY_SOCKET``; that is too little
to justify a compiled dependency (python-systemd needs libsystemd headers).

Outside systemd (``make run``, tests) ``NOTIFY_SOCKET`` is unset and every
method does nothing, so callers never need to check. A failing send is logged
once and swallowed: losing a status line is better than losing the worker.
"""

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

logger = logging.getLogger(__name__)

# A stuck PID 1 must not hang the worker forever, but a briefly busy one should
# still receive READY=1 rather than have it dropped on a full socket buffer.
SEND_TIMEOUT = 1.0


def _address(value: str) -> str | None:
    # "@name" is Linux's abstract namespace, spelled with a leading NUL byte.
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def _watchdog_timeout(environ: Mapping[str, str]) -> float | None:
    # WATCHDOG_PID names the process systemd expects pings from; a child that
    # inherited the environment must not ping on its parent's behalf.
    pid = environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None


class SystemdNotifier:
    """Send sd_notify messages; safe to call from the loop and a heartbeat thread."""

    def __init__(self, environ: Mapping[str, str] = os.environ, clock: Callable[[], float] = time.monotonic) -> None:
        raw = environ.get("NOTIFY_SOCKET", "")
        self._address = _address(raw)
        if raw and self._address is None:
            logger.warning("event=sdnotify_unsupported_socket notify_socket=%s", raw)
        self._clock = clock
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False
        self._last_ping: float | None = None
        timeout = _watchdog_timeout(environ) if self._address else None
        # Seconds between pings: half of WatchdogSec=, systemd's advice, so one
        # late loop iteration does not get the worker killed. None: no watchdog.
        self.watchdog_interval = timeout / 2 if timeout else None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def ready(self, status: object = None) -> None:
        self._send("READY=1", status)

    def status(self, text: object) -> None:
        self._send(None, text)

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def watchdog(self) -> None:
        """Ping if watchdog_interval passed since the last ping; cheap to call often."""
        if self.watchdog_interval is None:
            return
        now = self._clock()
        with self._lock:
            if self._last_ping is not None and now - self._last_ping < self.watchdog_interval:
                return
            self._last_ping = now
        self._send("WATCHDOG=1")

    def _send(self, state: str | None, status: object = None) -> None:
        lines = [state] if state else []
        if status is not None:
            # A newline would end the STATUS= line and let the text forge keys.
            lines.append("STATUS=" + " ".join(str(status).splitlines()))
        if self._address is None or not lines:
            return
        with self._lock:
            try:
                if self._socket is None:
                    kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    self._socket = socket.socket(socket.AF_UNIX, kind)
                    self._socket.settimeout(SEND_TIMEOUT)
                # sendto rather than connect: if systemd re-executes and binds
                # the socket anew, the next message still finds it.
                self._socket.sendto("\n".join(lines).encode(), self._address)
            except OSError as exc:
                if not self._warned:
                    self._warned = True
                    logger.warning("event=sdnotify_failed message=%s error=%r", lines[0], exc)
