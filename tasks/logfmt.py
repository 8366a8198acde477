"""Which task the current thread is running, for every log line it writes.

The worker sets it around each task's run; a logging filter adds
``task_id`` and ``task`` to every record logged meanwhile, by mqsite or by
the task's own loggers.
"""

from contextlib import contextmanager
from contextvars import ContextVar

running_task: ContextVar[tuple[str, str] | None] = ContextVar("running_task", default=None)


@contextmanager
def task_context(task_id: str, task: str):
    token = running_task.set((task_id, task))
    try:
        yield
    finally:
        running_task.reset(token)
