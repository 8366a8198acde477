"""The ``context`` a ``takes_context=True`` task receives from this worker.

Django's TaskContext carries the running TaskResult only; this subclass adds
what a long task asks of the worker while it runs: whether it was asked to
stop. The answers come from the task's history row, read at most once per
CHECK_SECONDS, so a task may ask in a tight loop without a query per call.
"""

import time
from dataclasses import dataclass, field

from tasks.compat import TaskContext

# How long an answer of cancel_requested() is reused.
CHECK_SECONDS = 0.5


class TaskControl:
    """The worker's side of one run: its history row, read through ``recorder``."""

    def __init__(self, task_id, recorder):
        self.task_id = task_id
        self.recorder = recorder
        self._cancel_requested = False
        self._checked_at = float("-inf")

    def cancel_requested(self):
        if self._cancel_requested:
            return True  # a request is never withdrawn: no more queries
        now = time.monotonic()
        if now - self._checked_at >= CHECK_SECONDS:
            self._checked_at = now
            self._cancel_requested = bool(self.recorder.cancel_requested_among([self.task_id]))
        return self._cancel_requested


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
