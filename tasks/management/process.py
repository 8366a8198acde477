"""What the commands share: the check that a Redis was named; and for the
long-running ones, log level from --verbosity, and the stop signals (the
first asks for a graceful stop, a second one forces)."""

import concurrent.futures.thread
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

from django.conf import settings
from django.core.checks import Tags
from django.core.management.base import CommandError

from tasks.exceptions import ForcedStop
from tasks.exceptions import RedisNotConfigured
from tasks.queue.connection import redis_url

LEVELS = {0: logging.WARNING, 1: logging.INFO}

# The system checks a long-running consumer runs as it starts: what it stands
# on (its settings, the models it writes). The URL, admin, template, static
# and cache checks are the web site's and `manage.py check`'s; run here they
# imported the whole site (URLconf, views, Prometheus client, WhiteNoise)
# into every worker, 2 MiB of its memory and part of its start-up.
CONSUMER_CHECKS = [Tags.models, "mqsite"]


def require_redis() -> None:
    """Stop a command that needs Redis before it does anything, when the
    project names none: exit 1 with the message, no traceback."""
    try:
        redis_url()
    except RedisNotConfigured as exc:
        raise CommandError(str(exc)) from None


def set_verbosity(verbosity: int) -> None:
    """-v 0: warnings and errors, 1: one line per event, 2+: debug. A level
    that settings.LOGGING gives the "tasks" logger wins over the flag."""
    configured = (getattr(settings, "LOGGING", None) or {}).get("loggers", {}).get("tasks", {})
    if "level" in configured:
        return
    logging.getLogger("tasks").setLevel(LEVELS.get(verbosity, logging.DEBUG))


def install_stop_handlers(request_stop: Callable[[], object]) -> None:
    """SIGTERM/SIGINT: the first calls request_stop (which only sets a flag),
    the second exits at once; in-flight work then returns through recovery."""
    received: list[int] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        if len(received) > 1:
            raise ForcedStop(128 + signum)
        request_stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def exit_now_if_tasks_left_threads(before: set[threading.Thread], code: int) -> None:
    """End the process with ``code`` without joining the threads started
    since ``before`` that still run, if any: the interpreter would
    wait at exit for each (a task's asyncio.to_thread call past its time
    limit, say), for as long as it runs. Called once everything the command
    owns is recorded and closed."""
    # The interpreter joins at exit every non-daemon thread, and every
    # executor thread even when daemon (one started by the worker's event loop
    # thread inherits its daemon flag): concurrent.futures keeps those here.
    executors = getattr(concurrent.futures.thread, "_threads_queues", {})
    left = [t for t in threading.enumerate() if t.is_alive() and t not in before and (not t.daemon or t in executors)]
    if not left:
        return
    logging.getLogger("tasks").warning(
        "event=threads_left count=%d names=%s (started by tasks, still running: not waited for)",
        len(left),
        ",".join(t.name for t in left),
    )
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
