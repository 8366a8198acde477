"""Test-only fault injection: kill or freeze a worker at a named step.

MQ_FAULT is set only by tests/settings.py (from the environment of a worker
process a test starts); production settings never define it, so every call
here is a no-op outside the fault suite. Format: "point" or "point:N" (fire on
the N-th time the point is reached, counting from 1).
"""

import os
import signal
import time

from tasks.conf import mq_settings

_seen: dict[str, int] = {}
_configured: list[str] = []


def _spec():
    # Read once: the setting comes from a test's environment at process start,
    # and a settings lookup per task is a measurable share of a no-op task.
    if not _configured:
        _configured.append(mq_settings.MQ_FAULT)
    return _configured[0]


def fault_point(name):
    spec = _spec()
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name and not point.startswith(name + "/"):
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] != int(nth or 1):
        return
    if point.endswith("/freeze"):
        # Stop the main loop without dying, as a deadlock would.
        while True:
            time.sleep(3600)
    os.kill(os.getpid(), signal.SIGKILL)
