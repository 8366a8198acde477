"""Tasks only the fault suite uses. Worker processes import this module
through MQ_TASK_MODULES (see FAULT_SETTINGS in conftest.py); the test process
registers them by importing it."""

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
    raise RuntimeError("NUL \x00 and a lone surrogate \udfff in an error message")


# Runs counted in Redis rather than in a file: a hash field per label,
# incremented by every run (see tests.faults.conftest.runs_counted).
RUNS_KEY = "tests:runs"


def count_run(label):
    """Count one real run of ``label``; returns how many there were so far."""
    from tasks.connection import get_redis

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
    if kind == "exit":
        sys.exit(3)
    if kind == "interrupt":
        raise KeyboardInterrupt("raised by the task itself")
    if kind == "generator_exit":
        raise GeneratorExit("raised by the task itself")
    raise NotAnException(f"{label} is no Exception")
