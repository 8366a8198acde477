"""The worker's event loop: where ``async def`` tasks run, many at once.

With ``--concurrency N`` a task whose function is a coroutine function takes
a slot like any task but no thread: it is awaited on one event loop that the
worker owns, in a thread of its own. Its time limit cancels the coroutine
(asyncio.timeout), which interrupts it at its next ``await``; a coroutine
that blocks without awaiting holds up the whole loop, as in any asyncio
program, and is not interrupted.

The limit works as the threads' does (tasks.worker.slots): a coroutine still
running ABANDON_AFTER_SECONDS after its cancellation swallowed it, and is
given up as timed out; its slot goes to the next task, and whatever it does
afterwards is dropped. One that blocked the loop that long without awaiting
is recorded as timed out when it returns. The other tasks on the loop could
not run while it blocked: each of their timers is credited with how late the
blocked loop ran it (at most the task's limit in all, so that a task that
blocks the loop itself cannot put its own limit off for ever).
"""

import asyncio
import logging
import select
import selectors
import threading
import time
from collections import deque

from tasks.worker.context import shutdown_off_loop
from tasks.worker.slots import ABANDON_AFTER_SECONDS, NotStarted, Running, SlotAbandoned

logger = logging.getLogger(__name__)

# A timer the loop runs later than this was held up by a task that blocked it.
LATE_SECONDS = 0.05


class PreciseEpollSelector(selectors.EpollSelector):
    """epoll, with the timeout of its wait kept to the microsecond.

    epoll_wait counts its timeout in whole milliseconds, rounded up, so each
    wait of the loop for its next timer overshoots by up to 1 ms: eight tasks
    that each await a 20 ms sleep ran about 1.3 ms late, 7 % of the drain
    (bench/io.py). select() counts in microseconds, and an epoll descriptor is
    readable when one of its own is ready: wait on it with select(), then
    collect the events from epoll without waiting. epoll still watches every
    socket of the tasks; select() sees only its one descriptor, which must be
    below FD_SETSIZE. It is created with the loop, at the worker's first async
    task; in a process that has more descriptors open by then, the selector
    falls back to epoll's own wait (the milliseconds come back, nothing else
    changes)."""

    _precise = True

    def select(self, timeout=None):
        if timeout is not None and timeout > 0 and self._precise:
            try:
                select.select([self.fileno()], [], [], timeout)
                timeout = 0
            except ValueError:  # past FD_SETSIZE
                self._precise = False
        return super().select(timeout)


class Deadline:
    """One coroutine's time limit, in two steps: at ``limit`` seconds,
    ``expire()`` (its asyncio.timeout cancels it at its next await); if it
    is still running ABANDON_AFTER_SECONDS later, ``give_up()``.

    Lives on the loop's thread. Disarmed when the task ends: that happens in
    the same step of the loop as its ``async with`` block, so no timer runs
    in between."""

    def __init__(self, loop, limit, expire, give_up):
        self._loop = loop
        self._expire = expire
        self._give_up = give_up
        self._credit = limit  # lateness forgiven, at most the limit in all
        self._arm(limit, self._cancel)

    def _arm(self, delay, step):
        self._step = step
        self._due = self._loop.time() + delay
        self._handle = self._loop.call_at(self._due, self._check)

    def _check(self):
        late = self._loop.time() - self._due
        if late > LATE_SECONDS and self._credit > 0:
            credit = min(late, self._credit)
            self._credit -= credit
            self._arm(credit, self._step)  # the blocked time is not the task's
            return
        self._step()

    def _cancel(self):
        self._expire()
        self._arm(ABANDON_AFTER_SECONDS, self._give_up)

    def overdue(self):
        """Whether the task has run past the point where it is given up: a
        coroutine that blocked the loop so long that no timer could run."""
        give_up_at = self._due if self._step == self._give_up else self._due + ABANDON_AFTER_SECONDS
        return self._loop.time() >= give_up_at

    def disarm(self):
        self._handle.cancel()


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
        self._given_up: set[int] = set()  # keys of coroutines abandoned at their limit
        self._stopping = False  # set by stop(): the only loop.stop() that ends the loop

    def submit(self, job):
        if self._loop is None:
            self._start()
        self._waiting.append(job)
        self.kick()

    def kick(self):
        """Have the loop start what waits, as far as free slots allow."""
        if self._loop is not None and self._waiting:
            self._loop.call_soon_threadsafe(self._start_waiting)

    def waiting(self):
        """The submitted jobs not started yet (a copy)."""
        return list(self._waiting)

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
        self._stopping = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join()
        self._loop.close()
        shutdown_off_loop()  # the context's queries ran there for this loop's tasks

    def _start(self):
        loop = asyncio.SelectorEventLoop(PreciseEpollSelector())
        ready = threading.Event()

        def serve():
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            while True:
                try:
                    loop.run_forever()
                    if self._stopping:
                        return
                    # A task called loop.stop(): the loop serves the others on.
                    logger.error("event=loop_stopped_by_task (an async def task called loop.stop(); the loop goes on)")
                except (SystemExit, KeyboardInterrupt):
                    # asyncio re-raises these from a task's own sub-task (a
                    # sys.exit() under gather or wait_for) out of the loop.
                    # The sub-task holds it as its exception already, so the
                    # task awaiting it fails; the loop goes on for the others.
                    continue

        self._thread = threading.Thread(target=serve, name="mq-asyncio", daemon=True)
        self._thread.start()
        ready.wait()
        self._loop = loop

    async def _serve(self, job):
        key = id(job)
        deadlines: list[Deadline] = []

        def started(task, limit, timeout):
            """Called by the runner inside ``async with timeout``, with the
            task's limit (None: no limit)."""
            self._running[key] = Running(task, time.monotonic(), limit)
            if limit is None:
                return None
            deadline = Deadline(self._loop, limit, lambda: timeout.reschedule(-1), lambda: self._give_up(job, key))
            deadlines.append(deadline)
            return deadline

        end: tuple
        try:
            # The runner in a task of its own: asyncio throws a GeneratorExit
            # that a sub-task raised into the awaiting task's outermost
            # coroutine, which closes the coroutines it awaits. Here that
            # lands on the runner, which turns it into the task's failure.
            end = (job, await asyncio.ensure_future(self._run(job, started)), None)
        except BaseException as exc:  # the runner turns task errors into verdicts: this is ours
            end = (job, None, exc)
        for deadline in deadlines:
            deadline.disarm()
        if key in self._given_up:  # its end was recorded as timed out, its slot freed
            self._given_up.discard(key)
            return
        self._running.pop(key, None)
        self._slots.release()
        self._done.put(end)
        self._start_waiting()

    def _give_up(self, job, key):
        """A coroutine still running ABANDON_AFTER_SECONDS after its limit
        cancelled it: it swallowed the cancellation. Timed out, as a thread
        stuck past its limit is; its slot goes to the next task."""
        running = self._running.pop(key, None)
        if running is None:
            return
        self._given_up.add(key)
        logger.error("event=coroutine_abandoned task=%s limit=%s (went on after its time limit cancelled it)", running.task, running.limit)
        self._slots.release()
        self._done.put((job, None, SlotAbandoned(running.since, running.limit, "and went on after its cancellation; it was abandoned")))
        self._start_waiting()
