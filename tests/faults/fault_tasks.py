"""Tasks only the fault suite uses. Worker processes import this module
through MQ_TASK_MODULES (see tests/settings.py); the test process registers
them by importing it."""

import math
import os
import re
import signal
import sys
import time

from tasks.compat import task


@task
def slow_append(path, line, seconds):
    """Appends a line when it starts, then takes ``seconds``: a run that is
    under way when a fault strikes, and a count of how often it really ran."""
    with open(path, "a") as handle:
        handle.write(f"{line}\n")
    time.sleep(float(seconds))
    return line


@task(takes_context=True)
def flaky_append(context, path, line):
    """Runs (and appends) every attempt, fails the first one."""
    with open(path, "a") as handle:
        handle.write(f"{line}\n")
    if context.attempt == 1:
        raise RuntimeError(f"first attempt of {line} fails on purpose")
    return line


@task
def stubborn_sleep(path, seconds):
    """Hangs and swallows every Exception, as careless code does; appends a
    line per run so a test can count them."""
    with open(path, "a") as handle:
        handle.write("run\n")
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except Exception:  # noqa: BLE001, S110 - swallowing everything is the point
            pass
    return "finished"


@task(takes_context=True)
def slow_first_time(context, path, line, seconds):
    """Appends a line on every run; only the first attempt takes ``seconds``."""
    with open(path, "a") as handle:
        handle.write(f"{line}\n")
    if context.attempt == 1:
        time.sleep(float(seconds))
    return line


@task
def returns_unstorable(kind):
    """Returns (or fails with) what Python's json writes but PostgreSQL refuses."""
    if kind == "nan":
        return float("nan")
    if kind == "nul":
        return "a\x00b"
    if kind == "surrogate":
        return "\ud800"
    if kind == "exception-name":
        # Task code names its exception classes; the name goes into the record.
        raise type("Weird", (Exception,), {"__module__": "bad\x00\udfffmodule"})("a plain message")
    raise RuntimeError("NUL \x00 and a lone surrogate \udfff in an error message")


# Runs counted in Redis rather than in a file: a hash field per label,
# incremented by every run (see tests.faults.conftest.runs_counted).
RUNS_KEY = "tests:runs"


def count_run(label):
    """Count one real run of ``label``; returns how many there were so far."""
    from tasks.queue.connection import get_redis

    return get_redis().hincrby(RUNS_KEY, label, 1)


@task
def counted(label):
    count_run(label)
    return label


class NotAnException(BaseException):
    """What careless or hostile task code may raise: no Exception subclass."""


@task
def raises_base_exception(label, kind):
    """Counts its run, then ends it with an exception that is no Exception."""
    count_run(label)
    raise_base(kind, f"{label}: raised by the task itself")


def raise_base(kind, message):
    """Raise the BaseException that is no Exception named by ``kind``."""
    if kind == "exit":
        sys.exit(3)
    if kind == "interrupt":
        raise KeyboardInterrupt(message)
    if kind == "generator_exit":
        raise GeneratorExit(message)
    raise NotAnException(message)


@task
def stops_its_worker_once(label):
    """On its first run, SIGSTOPs its own worker process, as a debugger, a VM
    pause or an overloaded host would freeze it; later runs just count."""
    if count_run(label) == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
    return label


@task
def holds_the_gil_once(label, seconds, go_key):
    """On its first run, once ``go_key`` exists in Redis, holds the GIL for
    about ``seconds`` in one C call (a catastrophic regex), so the worker's
    heartbeat thread cannot run meanwhile; later runs just count."""
    from tasks.queue.connection import get_redis

    if count_run(label) > 1:
        return label
    pattern = re.compile(r"(a+)+b")  # backtracks 2**n times on n a's and no b
    def took(n):  # the least of three: a busy machine only makes a match slower
        times = []
        for _ in range(3):
            started = time.monotonic()
            pattern.match("a" * n)
            times.append(time.monotonic() - started)
        return min(times)

    n = 17
    while (short := took(n)) < 0.02:  # calibrate on short matches (C calls too)
        n += 1
    n += math.ceil(math.log2(float(seconds) / short))
    deadline = time.monotonic() + 60
    while not get_redis().exists(go_key) and time.monotonic() < deadline:
        time.sleep(0.05)
    pattern.match("a" * n)
    return label


# --- tasks that misbehave in a slot (tests/faults/test_slots_misbehaving_tasks.py)


def _note(path, line):
    with open(path, "a") as handle:
        handle.write(f"{line}\n")


@task
async def async_subtask_raises(path, kind):
    """An async def task whose sub-task (asyncio.gather / wait_for make one)
    ends with SystemExit, KeyboardInterrupt or GeneratorExit, as sys.exit()
    in a library call would."""
    import asyncio

    _note(path, "started")

    async def inner():
        await asyncio.sleep(0)
        if kind == "exit":
            sys.exit(3)
        if kind == "generator":
            raise GeneratorExit("raised in a sub-task")
        raise KeyboardInterrupt("raised in a sub-task")

    await asyncio.gather(inner())
    return "unreachable"


@task
async def async_ignores_cancel(path, seconds):
    """Swallows the cancellation its time limit sends, and goes on awaiting
    for ``seconds``: the async twin of a thread that catches the limit."""
    import asyncio

    _note(path, "started")
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            _note(path, "cancel-ignored")
    return "finished"


@task
def thread_ignores_limit(path, seconds):
    """The thread twin: catches BaseException (the limit's exception too)."""
    _note(path, "started")
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except BaseException:  # noqa: BLE001, S110
            _note(path, "limit-ignored")
    return "finished"


@task
async def async_blocks_loop(path, seconds):
    """Blocks the event loop in time.sleep, never awaiting."""
    _note(path, "started")
    time.sleep(float(seconds))
    _note(path, "ended")
    return "blocked"


@task
async def async_raises_base(kind):
    """Raises a BaseException that is no Exception, directly in the coroutine."""
    import asyncio

    await asyncio.sleep(0)
    raise_base(kind, "raised by an async task itself")


@task
async def async_stops_loop(path):
    """Stops the event loop it runs on, then goes on awaiting."""
    import asyncio

    _note(path, "started")
    asyncio.get_running_loop().stop()
    await asyncio.sleep(0.1)
    _note(path, "ended")
    return "ended"
