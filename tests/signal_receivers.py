"""Receivers of the Tasks API signals that note each one in a Redis list,
with the process it was received in. A worker loads them through
MQ_TASK_MODULES (tests/test_signals.py); the test process connects them for
the length of a test."""

import json
import os

from tasks.queue.connection import get_redis
from tasks.signals import task_enqueued, task_finished, task_started

RECEIVED = "test:signals"


def _note(name):
    def receive(sender, task_result, **kwargs):
        entry = {"signal": name, "sender": sender.__name__, "id": task_result.id, "status": str(task_result.status), "pid": os.getpid()}
        if name == "task_finished":
            entry["return_value"] = task_result.return_value if task_result.status == "SUCCESSFUL" else None
        get_redis().rpush(RECEIVED, json.dumps(entry))

    return receive


RECEIVERS = {signal: _note(name) for signal, name in ((task_enqueued, "task_enqueued"), (task_started, "task_started"), (task_finished, "task_finished"))}


def connect():
    for signal, receiver in RECEIVERS.items():
        signal.connect(receiver, dispatch_uid=f"tests.{id(signal)}")


def disconnect():
    for signal in RECEIVERS:
        signal.disconnect(dispatch_uid=f"tests.{id(signal)}")


if os.environ.get("MQ_TEST_SIGNALS"):  # in a worker started by tests/test_signals.py
    connect()
