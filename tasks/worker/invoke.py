"""Calling a task's function in the serial worker's thread.

``Task.call`` cannot be used: its own first parameter is ``self``, so a task
taking ``**kwargs`` could not be sent a keyword of that name. And it runs an
``async def`` task through asgiref's ``async_to_sync``, on a loop in another
thread, where the worker's SIGALRM time limit does not reach: the coroutine
ran on after it was recorded timed out, and the interpreter waited for that
thread at the worker's exit. Here a coroutine runs on an event loop of its
own in the calling thread: its time limit cancels it at its next ``await``,
and SIGALRM still interrupts one that blocks the loop without awaiting.
(With ``--concurrency N`` coroutines run on the worker's shared loop
instead: tasks.worker.aio.)
"""

import asyncio
from inspect import iscoroutinefunction

from tasks.worker.slots import ABANDON_AFTER_SECONDS
from tasks.worker.timelimit import TaskTimeLimitExceeded


def call(task, args, kwargs, limit=None):
    """``task``'s function called with ``args`` and ``kwargs``; a coroutine
    function's coroutine run to its end, or cancelled at ``limit`` seconds."""
    if iscoroutinefunction(task.func):
        return run_coroutine(task.func(*args, **kwargs), limit)
    return task.func(*args, **kwargs)


def run_coroutine(coroutine, limit):
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_within(coroutine, limit))
    finally:
        try:
            _cancel_leftovers(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            # Without waiting for the default executor's threads: one in a
            # call past the limit (asyncio.to_thread) is left to end on its own.
            loop.close()


async def _within(coroutine, limit):
    try:
        async with asyncio.timeout(limit) as timeout:
            return await coroutine
    except TimeoutError:
        if timeout.expired():  # ours, not a TimeoutError of the task's own
            raise TaskTimeLimitExceeded(f"task exceeded its time limit ({limit} s): cancelled") from None
        raise


def _cancel_leftovers(loop):
    """Cancel what the task left on its loop (the task itself, when SIGALRM
    or a stop signal interrupted the loop), waiting a bounded time for them
    to unwind: a coroutine that swallows its cancellation is left behind."""
    leftovers = asyncio.all_tasks(loop)
    if not leftovers:
        return
    for leftover in leftovers:
        leftover.cancel()
    loop.run_until_complete(asyncio.wait(leftovers, timeout=ABANDON_AFTER_SECONDS))
