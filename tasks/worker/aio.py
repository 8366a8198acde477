"""The worker's event loop: where ``async def`` tasks run, many at once.

With ``--concurrency N`` a task whose function is a coroutine function takes
a slot like any task but no thread: it is awaited on one event loop that the
worker owns, in a thread of its own. Its time limit cancels the coroutine
(asyncio.timeout), which interrupts it at its next ``await``; a coroutine
that blocks without awaiting holds up the whole loop, as in any asyncio
program, and is not interrupted.
"""

import asyncio
import threading
import time
from collections import deque

from tasks.worker.slots import NotStarted, Running


class EventLoopSlots:
    """Awaits ``run(job, running)`` on the worker's loop; each result goes to
    ``done`` as (job, result, exception), like ThreadSlots'.

    Submitted jobs wait until one of ``slots`` (shared with the threads) is
    free; the loop starts the next one itself when a task of its own ends,
    and when ``kick()``ed (a thread's task ended). ``may_start(job)`` is asked
    once a job has its slot, as the threads ask it."""

    def __init__(self, run, done, slots, may_start):
        self._run = run
        self._done = done
        self._slots = slots
        self._may_start = may_start
        self._waiting: deque = deque()  # appended by the main thread, taken by the loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._running: dict[int, Running] = {}

    def submit(self, job):
        if self._loop is None:
            self._start()
        self._waiting.append(job)
        self.kick()

    def kick(self):
        """Have the loop start what waits, as far as free slots allow."""
        if self._loop is not None and self._waiting:
            self._loop.call_soon_threadsafe(self._start_waiting)

    def withdraw(self):
        """The submitted jobs not started yet, taken back."""
        jobs = []
        while True:
            try:
                jobs.append(self._waiting.popleft())
            except IndexError:
                return jobs

    def running(self):
        return list(self._running.values())

    def _start_waiting(self):
        # On the loop's thread.
        loop = self._loop
        assert loop is not None
        while self._waiting and self._slots.acquire(blocking=False):
            try:
                job = self._waiting.popleft()
            except IndexError:  # withdrawn meanwhile
                self._slots.release()
                return
            if self._may_start(job):
                loop.create_task(self._serve(job))
            else:
                self._slots.release()
                self._done.put((job, None, NotStarted()))

    def stop(self):
        """Stop the loop once every submitted task has been handed back."""
        if self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join()
        self._loop.close()

    def _start(self):
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve():
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._thread = threading.Thread(target=serve, name="mq-asyncio", daemon=True)
        self._thread.start()
        ready.wait()
        self._loop = loop

    async def _serve(self, job):
        key = id(job)

        def started(task, limit):
            self._running[key] = Running(task, time.monotonic(), limit)

        end: tuple
        try:
            end = (job, await self._run(job, started), None)
        except BaseException as exc:  # the runner turns task errors into verdicts: this is ours
            end = (job, None, exc)
        finally:
            self._running.pop(key, None)
            self._slots.release()
        self._done.put(end)
        self._start_waiting()
