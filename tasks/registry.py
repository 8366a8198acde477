"""Which task paths a worker may run.

A message names a task by path; the path is looked up here and never
imported, so a message can only ever run a function some installed module
declared with @task. Tasks register themselves when the backend validates
them (every Task does, at creation).
"""

from importlib import import_module

from django.utils.module_loading import autodiscover_modules

from tasks.compat import Task
from tasks.conf import mq_settings

_tasks: dict[str, Task] = {}


def register(task: Task) -> None:
    # .using() makes variants of a task with the same path; the declared one wins.
    _tasks.setdefault(task.module_path, task)


def get(path: str) -> Task | None:
    return _tasks.get(path)


def paths() -> list[str]:
    return sorted(_tasks)


def autodiscover() -> None:
    """Import every installed app's tasks module and MQ_TASK_MODULES."""
    autodiscover_modules("tasks")
    for module in mq_settings.MQ_TASK_MODULES:
        import_module(module)
