"""The Tasks API's signals, sent as Django documents them: ``task_enqueued``
by the backend in the producer's process, ``task_started`` and
``task_finished`` by the worker, each with ``sender`` (the backend class) and
``task_result``.

Django connects receivers of its own that log every task (the backport's
``django_tasks`` logger). mqsite logs each task already, so those alone do
not make a signal worth a TaskResult and a send per task on the hot path:
``listened`` says whether anyone else listens.
"""

from tasks.compat import task_signals as _django_signals

task_enqueued = _django_signals.task_enqueued
task_started = _django_signals.task_started
task_finished = _django_signals.task_finished

# Django's own logging receivers (see the module docstring).
_BUILTIN_RECEIVERS = {
    id(getattr(_django_signals, name))
    for name in ("log_task_enqueued", "log_task_started", "log_task_finished")
    if hasattr(_django_signals, name)
}


def listened(signal):
    """Whether ``signal`` has a receiver other than Django's own loggers."""
    if not signal.has_listeners():
        return False
    sync_receivers, async_receivers = signal._live_receivers(None)
    return any(id(receiver) not in _BUILTIN_RECEIVERS for receiver in [*sync_receivers, *async_receivers])
