"""The ``context`` a ``takes_context=True`` task receives from this worker.

Django's TaskContext carries the running TaskResult only; this subclass adds
what a long task asks of the worker while it runs: whether it was asked to
stop, and where to report its progress. Both go through the task's history
row at most once per CHECK_SECONDS, so a task may call them in a tight loop
without a query per call; the last progress is written when the run ends.
"""

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from numbers import Real

from django.db import DatabaseError, close_old_connections, connections

from tasks.compat import TaskContext

logger = logging.getLogger(__name__)

# How long an answer of cancel_requested() is reused, and the least time
# between two progress writes of one task.
CHECK_SECONDS = 0.5
# A progress text is a status line, not a log.
MAX_PROGRESS_TEXT = 200
# How long a stopping loop waits for the context helper's connection to close.
CLOSE_WAIT_SECONDS = 5.0


_off_loop_lock = threading.Lock()
_off_loop: ThreadPoolExecutor | None = None


def _query(call, *args):
    """``call(*args)``, from a thread that runs no event loop.

    Django refuses a query from a thread running an event loop
    (SynchronousOnlyOperation), which is where an ``async def`` task's
    context is called. Its queries go to one helper thread instead, with its
    own database connection; the loop waits for the answer, a query at most
    every CHECK_SECONDS per task, as a synchronous call would.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return call(*args)
    global _off_loop
    with _off_loop_lock:  # submitted under the lock: never to a helper being shut down
        if _off_loop is None:
            _off_loop = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mq-context-db")
        answer = _off_loop.submit(_fresh_connection_call, call, *args)
    return answer.result()


def _fresh_connection_call(call, *args):
    close_old_connections()  # the helper lives long: honour CONN_MAX_AGE and health checks
    return call(*args)


def shutdown_off_loop(wait_seconds=CLOSE_WAIT_SECONDS):
    """End the helper thread of ``_query`` and close its database connection.

    Called when a worker's event loop stops: an open connection outlives the
    loop otherwise (in a test process, it keeps the test database busy at
    teardown). A later ``async def`` task starts a new helper.

    The helper may still be in a query for a thread abandoned at its time
    limit (a sync task running a loop of its own, its database hanging): the
    stop waits ``wait_seconds`` for the close at most, and otherwise leaves
    the helper to end with the process, as the abandoned thread is.
    """
    global _off_loop
    with _off_loop_lock:
        helper, _off_loop = _off_loop, None
    if helper is None:
        return
    closed = helper.submit(connections.close_all)
    try:
        closed.result(timeout=wait_seconds)
    except TimeoutError:
        helper.shutdown(wait=False)  # its thread ends once the query and the close are done
        logger.warning("event=context_helper_busy seconds=%s (its connection closes with the process)", wait_seconds)
    else:
        helper.shutdown(wait=True)  # the close is done: the thread ends at once


class TaskControl:
    """The worker's side of one run: its history row, read through ``recorder``."""

    def __init__(self, task_id, recorder):
        self.task_id = task_id
        self.recorder = recorder
        self._cancel_requested = False
        self._checked_at = float("-inf")
        self._progress = None  # the latest value not written yet
        self._written_at = float("-inf")

    def cancel_requested(self):
        if self._cancel_requested:
            return True  # a request is never withdrawn: no more queries
        now = time.monotonic()
        if now - self._checked_at >= CHECK_SECONDS:
            self._checked_at = now
            self._cancel_requested = bool(_query(self.recorder.cancel_requested_among, [self.task_id]))
        return self._cancel_requested

    def set_progress(self, done, total=None, text=""):
        if not isinstance(done, Real) or isinstance(done, bool):
            raise TypeError(f"progress 'done' must be a number, not {type(done).__name__}")
        if total is not None and (not isinstance(total, Real) or isinstance(total, bool)):
            raise TypeError(f"progress 'total' must be a number or None, not {type(total).__name__}")
        self._progress = {"done": done, "total": total, "text": str(text)[:MAX_PROGRESS_TEXT]}
        if time.monotonic() - self._written_at >= CHECK_SECONDS:
            self.flush()

    def flush(self):
        """Write the latest progress, if any is unwritten (the end of a run).

        Progress is a report, not an outcome: a database that does not take
        it does not fail the task; the value stays pending for the next write.
        """
        if self._progress is None:
            return
        self._written_at = time.monotonic()
        try:
            _query(self.recorder.record_progress, self.task_id, self._progress)
        except DatabaseError as exc:
            logger.warning("event=progress_unrecorded task_id=%s error=%r", self.task_id, str(exc))
            return
        self._progress = None


# frozen, as TaskContext is at run time (a non-frozen subclass is a TypeError);
# django-stubs declare TaskContext non-frozen, hence the ignore.
@dataclass(frozen=True, kw_only=True)
class WorkerTaskContext(TaskContext):  # type: ignore[misc]
    control: TaskControl = field(repr=False, compare=False)

    def cancel_requested(self):
        """Whether this task was asked to stop (POST /api/tasks/<id>/cancel,
        the admin, tasks.queue.backend.cancel). A task that checks it in its
        loop and returns ends CANCELLED; one that ignores it is stopped at its
        time limit."""
        return self.control.cancel_requested()

    def set_progress(self, done, total=None, text=""):
        """Report progress: ``done`` of ``total`` (numbers; total may be None)
        and a short ``text``, shown by GET /api/tasks/<id>, the task page and
        the admin. Written at most every CHECK_SECONDS; the last value is
        written when the run ends."""
        self.control.set_progress(done, total, text)
