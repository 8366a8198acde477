"""Tasks the test suite runs through real workers. They write files, kill or
stall the worker, so they are registered only by tests/settings.py
(MQ_TASK_MODULES), never in a deployment; the test process registers them
by importing this module."""

import asyncio
import logging
import os
import signal
import time

from tasks.compat import task


@task
def sleep_for(seconds=1.0):
    time.sleep(float(seconds))
    return seconds


@task
def crash_worker():
    """Kills the process running it, as a segfault or the OOM killer would."""
    os.kill(os.getpid(), signal.SIGKILL)


@task
def append_to_file(path, line):
    """Appends a line to a file: lets tests count real executions."""
    with open(path, "a") as handle:
        handle.write(f"{line}\n")
    return line


@task(takes_context=True)
def record_run(context, path):
    """Appends its own task id to a file: counts executions per id (schedules)."""
    with open(path, "a") as handle:
        handle.write(f"{context.task_result.id}\n")


@task
def log_prose(text):
    """Logs like a library would: prose, any logger (tests/test_logging.py)."""
    logging.getLogger("thirdparty.client").info("sent %s", text)


@task(takes_context=True)
def until_cancelled(context, path, seconds=30.0):
    """Writes "started" to a file, then works in a loop, checking
    context.cancel_requested() each turn, for at most ``seconds``."""
    with open(path, "a") as handle:
        handle.write("started\n")
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        if context.cancel_requested():
            return "stopped"
        time.sleep(0.01)
    return "ran out"


@task(takes_context=True)
def count_with_progress(context, path, total, seconds=0.0):
    """Reports progress for each of ``total`` steps (a tight loop); after
    writing "halfway" to a file at the middle, waits ``seconds``."""
    for done in range(1, int(total) + 1):
        context.set_progress(done, total, f"step {done}")
        if done == int(total) // 2:
            with open(path, "a") as handle:
                handle.write("halfway\n")
            time.sleep(float(seconds))
    return total


@task
def append_slowly(path, line, seconds=0.005):
    """append_to_file after a short pause: a backlog of these lasts long
    enough for a failover to happen in the middle of it."""
    time.sleep(float(seconds))
    with open(path, "a") as handle:
        handle.write(f"{line}\n")
    return line


@task(takes_context=True)
def record_run_as(context, path, seconds=0.0):
    """Appends "<task id> <worker id>" to ``path``.started, works ``seconds``,
    then appends the same line to ``path``: counts executions per task and
    tells which worker ran each one, and which one is running now."""
    line = f"{context.task_result.id} {context.task_result.worker_ids[-1]}\n"
    with open(f"{path}.started", "a") as handle:
        handle.write(line)
    time.sleep(float(seconds))
    with open(path, "a") as handle:
        handle.write(line)


@task
def nap_and_note(path, line, seconds=0.2):
    """Appends "begin:<line>", sleeps, then appends the line: an I/O-bound
    task whose starts and ends are counted."""
    with open(path, "a") as handle:
        handle.write(f"begin:{line}\n")
    time.sleep(float(seconds))
    with open(path, "a") as handle:
        handle.write(f"{line}\n")
    return line


@task
def spin(path, line):
    """Notes that it started, then loops in pure Python, never returning:
    only a time limit ends it."""
    with open(path, "a") as handle:
        handle.write(f"{line}\n")
    turns = 0
    while True:
        turns += 1


@task
def raise_base(kind):
    """Raises a BaseException that is not an Exception."""
    raise {"exit": SystemExit(3), "interrupt": KeyboardInterrupt()}[kind]


@task
async def async_nap(path, line, seconds=0.1):
    """An async def task: awaits, then appends a line."""
    await asyncio.sleep(float(seconds))
    with open(path, "a") as handle:
        handle.write(f"{line}\n")
    return line


@task
def timed_nap(path, line, seconds):
    """Sleeps, then appends "<line> <start> <end>" (time.time()): the spans
    say how many tasks ran at once."""
    start = time.time()
    time.sleep(float(seconds))
    with open(path, "a") as handle:
        handle.write(f"{line} {start} {time.time()}\n")


@task
async def async_timed_nap(path, line, seconds):
    """timed_nap as an async def task."""
    start = time.time()
    await asyncio.sleep(float(seconds))
    with open(path, "a") as handle:
        handle.write(f"{line} {start} {time.time()}\n")


@task
async def async_fail(message):
    await asyncio.sleep(0)
    raise ValueError(message)


@task
async def async_forever():
    """Awaits far longer than any time limit."""
    await asyncio.sleep(3600)


@task(takes_context=True)
async def async_until_cancelled(context, path, seconds=30.0):
    """An async def task that reports progress and checks for a cancel each
    turn, for at most ``seconds``: its context queries the database."""
    with open(path, "a") as handle:
        handle.write("started\n")
    deadline = time.monotonic() + float(seconds)
    turn = 0
    while time.monotonic() < deadline:
        turn += 1
        context.set_progress(turn, None, f"turn {turn}")
        if context.cancel_requested():
            return "stopped"
        await asyncio.sleep(0.01)
    return "ran out"


@task
def keyword_names(**options):
    """Returns the names of its keyword arguments: any name may come, even
    those of Task.enqueue's own parameters ("self")."""
    return sorted(options)


@task
async def async_nap_and_note(path, line, seconds=0.2):
    """The async def twin of nap_and_note: "begin:<line>", awaits, "<line>"."""
    with open(path, "a") as handle:
        handle.write(f"begin:{line}\n")
    await asyncio.sleep(float(seconds))
    with open(path, "a") as handle:
        handle.write(f"{line}\n")
    return line


@task
async def async_sleeps_in_a_thread(path, seconds):
    """Awaits a blocking call in the default executor's thread, which no
    cancellation stops: only the await is given up at the time limit."""
    with open(path, "a") as handle:
        handle.write("started\n")
    await asyncio.to_thread(time.sleep, float(seconds))
    with open(path, "a") as handle:
        handle.write("ended\n")


@task
def nap_then_fail(path, seconds):
    """Appends "begin", sleeps, then fails: retried, while attempts are left."""
    with open(path, "a") as handle:
        handle.write("begin\n")
    time.sleep(float(seconds))
    raise RuntimeError("fails after its nap")
