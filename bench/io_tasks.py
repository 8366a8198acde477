"""The I/O-bound tasks of bench/io.py, registered by bench/io_settings.py only.

Each waits (a thread in time.sleep, or a coroutine in asyncio.sleep), then
appends one line to IO_DONE_FILE: the benchmark counts lines, the same way for
every queue it compares.
"""

import asyncio
import os
import time

from tasks.compat import task

DONE_FILE = os.environ.get("IO_DONE_FILE", "/tmp/io-done.txt")


def _done():
    with open(DONE_FILE, "a") as handle:
        handle.write("1\n")


@task
def nap(seconds):
    time.sleep(seconds)
    _done()


@task
async def anap(seconds):
    await asyncio.sleep(seconds)
    _done()
