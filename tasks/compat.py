"""One import point for the Tasks API: django.tasks on Django 6+, the
django-tasks backport on 5.2. Everything else imports from here."""

from typing import TYPE_CHECKING

try:
    from django.tasks import TaskContext, TaskResult, TaskResultStatus, task, task_backends
    from django.tasks import signals as task_signals
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import Task, TaskError
    from django.tasks.exceptions import InvalidTask as InvalidTaskError
    from django.tasks.exceptions import TaskResultDoesNotExist
except ImportError:
    # mypy checks against django.tasks (django-stubs ships its stubs on either
    # Django); the backport has the same API under other module names.
    if not TYPE_CHECKING:
        from django_tasks import TaskContext, TaskResult, TaskResultStatus, task, task_backends
        from django_tasks import signals as task_signals
        from django_tasks.backends.base import BaseTaskBackend
        from django_tasks.base import Task, TaskError
        from django_tasks.exceptions import InvalidTaskError
        from django_tasks.exceptions import TaskResultDoesNotExist

__all__ = [
    "BaseTaskBackend",
    "InvalidTaskError",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultDoesNotExist",
    "TaskResultStatus",
    "task",
    "task_backends",
    "task_signals",
]
