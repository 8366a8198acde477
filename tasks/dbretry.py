"""Ride out a database outage in a long-running process instead of dying.

Workers and listeners write history as they go. When the database goes away
(server restart, network, SQLite locked past its busy timeout) the write is
retried with capped exponential backoff until it goes through: a process
that crashed instead would only be restarted into the same outage, and a
worker's items are safe in its processing list meanwhile. The outage is
logged once when it starts and once when it ends, and the systemd watchdog
is fed while waiting, because waiting is the right thing to do.
"""

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from django.db import DatabaseError, InterfaceError, OperationalError, connections

from tasks.backoff import backoff_delay
from tasks.exceptions import DatabaseGaveUp

if TYPE_CHECKING:
    from tasks.sdnotify import SystemdNotifier

logger = logging.getLogger(__name__)

Result = TypeVar("Result")

# A lost or unusable connection: retried until the database is back.
CONNECTION_ERRORS = (OperationalError, InterfaceError)
# What a statement carried was refused, by the database (a DataError,
# IntegrityError, ...) or by its driver (text it cannot encode). The same
# statement would fail again: retrying cannot help, and ending the process
# would only bring the same value back to end the next one. Callers record
# what they can instead; connection errors are among these classes, so they
# are caught first.
REFUSALS = (DatabaseError, UnicodeEncodeError)

FIRST_DELAY = 0.1
MAX_DELAY = 5.0
# Sleep in slices so a stop request is noticed promptly.
SLICE = 0.25


def retry_database(
    fn: Callable[..., Result],
    *args: Any,
    owner: str,
    notifier: "SystemdNotifier | None" = None,
    give_up: Callable[[], bool] | None = None,
    sleep: Callable[[float], object] = time.sleep,
) -> Result:
    """Return fn(*args), retrying while the database is unavailable.

    ``owner`` names the process in log lines, as a key=value pair such as
    "worker=host-12". ``give_up`` (optional) is polled between attempts; once
    it is true DatabaseGaveUp is raised instead of trying again.
    """
    failures = 0
    while True:
        try:
            result = fn(*args)
        except CONNECTION_ERRORS as exc:
            if not failures:
                logger.error("event=db_down %s error=%r", owner, str(exc).strip())
            _drop_broken_connections()
            if _wait(backoff_delay(failures, FIRST_DELAY, MAX_DELAY), notifier, give_up, sleep):
                raise DatabaseGaveUp(str(exc)) from exc
            failures += 1
            continue
        if failures:
            logger.warning("event=db_back %s", owner)
        return result


def _drop_broken_connections() -> None:
    # Django reconnects on the next query only once a broken connection is
    # closed; inside atomic() it must stay open for the rollback.
    for conn in connections.all(initialized_only=True):
        conn.close_if_unusable_or_obsolete()
        if not conn.in_atomic_block:
            conn.close()


def _wait(
    seconds: float,
    notifier: "SystemdNotifier | None",
    give_up: Callable[[], bool] | None,
    sleep: Callable[[float], object],
) -> bool:
    """Sleep for ``seconds``; True as soon as give_up() says so."""
    deadline = time.monotonic() + seconds
    while True:
        if notifier is not None:
            notifier.watchdog()
        if give_up is not None and give_up():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        sleep(min(SLICE, remaining))
