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

from tasks.worker.slots import Running


class EventLoopSlots:
    """Awaits ``run(job, running)`` on the worker's loop; each result goes to
    ``done`` as (job, result, exception), like ThreadSlots'."""

    def __init__(self, run, done, slots):
        self._run = run
        self._done = done
        self._slots = slots  # acquired by the submitter, released here at the end
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._running: dict[int, Running] = {}

    def submit(self, job):
        if self._loop is None:
            self._start()
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._serve(job), self._loop)

    def running(self):
        return list(self._running.values())

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
