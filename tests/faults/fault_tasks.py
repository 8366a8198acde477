"""Tasks only the fault suite uses. Worker processes import this module
through MQ_TASK_MODULES (see tests/settings.py); the test process registers
them by importing it."""

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
