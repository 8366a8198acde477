"""Example tasks, used by the trigger pages, the benchmarks and the tests.

Any installed app's tasks.py is discovered the same way; a task is a
module-level function decorated with @task. Every task here can be started
by any API token holder, so only harmless ones live here: tasks that write
files, kill or stall workers are the test suite's (tests/fixture_tasks.py).
"""

import logging
import random
import time

from tasks.compat import task

logger = logging.getLogger(__name__)

DISHES = ["soup", "risotto", "curry", "paella", "ramen", "tagine", "pierogi", "pho", "moussaka", "gumbo"]


@task
def cook_dish(number=None):
    """The seed's demo: cook dish N (a raw `LPUSH task:prodcons:queue 5` lands here)."""
    number = int(number) if number is not None and str(number).strip().lstrip("-").isdigit() else random.randrange(100)
    dish = DISHES[number % len(DISHES)]
    logger.info("event=cooked number=%d dish=%s", number, dish)
    return {"number": number, "dish": dish}


@task
def noop():
    """Does nothing: what the benchmarks measure is the queue itself."""


@task
def stamp(sent_at):
    """Returns how long ago ``sent_at`` (unix time) was: end-to-end latency."""
    return time.time() - sent_at


@task
def add(a, b):
    return a + b


@task
def always_fails(message="this task fails on purpose"):
    raise RuntimeError(message)


@task(takes_context=True)
def report_attempt(context):
    """Returns what the Tasks API tells a running task about itself."""
    return {"id": context.task_result.id, "attempt": context.attempt}

