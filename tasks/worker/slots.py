"""Threads that run tasks for one worker, and the watchdog that holds them to
their time limits.

``--concurrency N`` gives a worker N slots. A task whose function is a plain
``def`` runs in one of these threads; the threads are started as work needs
them, up to the slots, and each keeps its own database connection (Django's
connections are per thread), closed when the thread ends.

SIGALRM reaches the main thread only, so a thread's time limit is enforced by
a watchdog thread that raises TaskTimeLimitExceeded into the overrunning
thread (see tasks.worker.timelimit for what that cannot interrupt).
"""

import logging
import queue as queue_module
import threading
import time
from typing import NamedTuple

from django.db import close_old_connections, connections

from tasks.worker.timelimit import TaskTimeLimitExceeded, interrupt_thread, withdraw_interrupt

logger = logging.getLogger(__name__)

# How often the watchdog looks for tasks past their limit (limits are whole
# seconds or more: mqsite.E013).
WATCHDOG_TICK_SECONDS = 0.1
# A thread the interrupt has not reached this long after the limit is inside
# a call that no exception interrupts (time.sleep, a socket read without a
# timeout, C code): its task is given up as timed out and another thread takes
# the slot. The stuck thread ends when its call returns, its result dropped.
ABANDON_AFTER_SECONDS = 2.0


class SlotAbandoned(Exception):
    """A task's thread did not stop at its time limit; ``since`` is the
    time.monotonic() its run started."""

    def __init__(self, since, limit, how="inside a call no exception interrupts; its thread was abandoned"):
        super().__init__(f"task exceeded its time limit ({limit} s) {how}")
        self.since = since


class NotStarted(Exception):
    """A job a thread did not start, once it had a slot: the worker is
    stopping or releasing what it holds, or its lease lapsed since the take
    (the main thread asks Redis whether the item is still its own)."""


class Running(NamedTuple):
    """A task running in a slot: what the heartbeat and /metrics see."""

    task: str
    since: float  # time.monotonic() start
    limit: float | None


class SlotGuard:
    """The time limit of the task running in one thread.

    The watchdog fires only under ``lock`` and only while ``running`` is set;
    the end of a run clears ``running`` under the same lock and withdraws a
    shot not delivered yet, so a limit never hits the worker's own code after
    the task returned.
    """

    def __init__(self):
        self.ident = 0  # set by the thread itself, before it runs a task
        self.lock = threading.Lock()
        self.running: Running | None = None
        self.fired = False
        self.abandoned = False
        self.job = None  # what the thread runs, while it runs it
        self.waiting_job = None  # what the thread took, while it waits for a slot
        self._pending: tuple = (None, None)

    def __call__(self, task, limit):
        self._pending = (task, limit)
        return self

    def __enter__(self):
        task, limit = self._pending
        with self.lock:
            self.fired = False
            self.running = Running(task, time.monotonic(), limit)

    def __exit__(self, *exc_info):
        while True:
            try:
                with self.lock:
                    self.running = None
                    if self.fired:
                        withdraw_interrupt(self.ident)
                return False
            except TaskTimeLimitExceeded:
                continue  # delivered just as the task ended: it is over now

    def fire_if_overdue(self, now):
        """Interrupt a task past its limit; a job given up on, or None."""
        with self.lock:
            running = self.running
            if running is None or running.limit is None:
                return None
            if not self.fired and now - running.since >= running.limit:
                self.fired = True
                interrupt_thread(self.ident)
                logger.warning("event=time_limit task=%s limit=%s thread=%d", running.task, running.limit, self.ident)
            elif self.fired and now - running.since >= running.limit + ABANDON_AFTER_SECONDS:
                self.abandoned, self.running = True, None
                logger.error("event=thread_abandoned task=%s limit=%s thread=%d (stuck in a call past its time limit)", running.task, running.limit, self.ident)
                return self.job, SlotAbandoned(running.since, running.limit)
            return None


class ThreadSlots:
    """Runs ``run(job, guard)`` in up to ``size`` threads; each result goes to
    ``done`` (a queue.Queue) as (job, result, exception).

    More jobs than idle threads may be submitted (the slot pool's reserve):
    they wait here, and a thread that frees starts the next one at once. A
    thread runs a job only while it holds one of ``slots`` (a semaphore the
    worker's event loop shares: N tasks at most, of either kind) and only if
    ``may_start(job)`` says so once it has it."""

    def __init__(self, size, run, done, slots, may_start):
        self.size = size
        self._run = run
        self._done = done
        self._slots = slots
        self._may_start = may_start
        self._jobs: queue_module.Queue = queue_module.Queue()  # a Queue, not a SimpleQueue: waiting() reads it
        self._threads: list[threading.Thread] = []
        self._guards: list[SlotGuard] = []
        self._lock = threading.Lock()
        self._idle = 0
        self._abandoned = 0
        self._exit = threading.Event()
        self._watchdog: threading.Thread | None = None

    def submit(self, job):
        with self._lock:
            self._idle -= 1
            self._grow()
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch, name="mq-time-limits", daemon=True)
            self._watchdog.start()
        self._jobs.put(job)

    def _grow(self):
        """Under _lock: a new thread for each job no idle thread will take
        (``_idle`` counts idle threads less waiting jobs), up to ``size``
        threads that are not abandoned."""
        while self._idle < 0 and len(self._threads) - self._abandoned < self.size:
            guard = SlotGuard()
            thread = threading.Thread(target=self._serve, args=(guard,), name=f"mq-slot-{len(self._threads) + 1}", daemon=True)
            self._threads.append(thread)
            self._guards.append(guard)
            thread.start()
            self._idle += 1

    def running(self):
        return [guard.running for guard in self._guards if guard.running is not None]

    def waiting(self):
        """The submitted jobs not started yet (a copy): those no thread has
        picked up, and those a thread holds while it waits for a slot (the
        event loop's tasks hold them all). Only the first can be withdrawn."""
        with self._jobs.mutex:
            queued = [job for job in self._jobs.queue if job is not None]
        return queued + [guard.waiting_job for guard in self._guards if guard.waiting_job is not None]

    def withdraw(self):
        """The submitted jobs no thread has picked up yet, taken back. One a
        thread holds is not: ``may_start`` decides once the thread has its slot."""
        jobs = []
        while True:
            try:
                jobs.append(self._jobs.get_nowait())
            except queue_module.Empty:
                break
        with self._lock:
            self._idle += len(jobs)
        return jobs

    def stop(self):
        """End every thread (after the job it runs); each closes its connection.
        An abandoned thread is left to end with the process."""
        serving = [thread for thread, guard in zip(self._threads, self._guards) if not guard.abandoned]
        for _ in serving:
            self._jobs.put(None)
        for thread in serving:
            thread.join()
        self._exit.set()
        if self._watchdog is not None:
            self._watchdog.join()

    def _serve(self, guard):
        guard.ident = threading.get_ident()
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                guard.waiting_job = job
                self._slots.acquire()
                guard.waiting_job = None
                end: tuple
                if not self._may_start(job):
                    self._slots.release()
                    end = (job, None, NotStarted())
                else:
                    guard.job = job
                    try:
                        end = (job, self._run(job, guard), None)
                    except BaseException as exc:  # the runner turns task errors into verdicts: this is ours
                        end = (job, None, exc)
                    with guard.lock:
                        if guard.abandoned:
                            return  # given up on: its end was recorded, its slot released
                        guard.job = None
                    self._slots.release()
                self._done.put(end)
                # As Django does after a request: a connection broken by this
                # task, or past CONN_MAX_AGE, is not left for the next one.
                close_old_connections()
                with self._lock:
                    self._idle += 1
        finally:
            connections.close_all()

    def _watch(self):
        while not self._exit.wait(WATCHDOG_TICK_SECONDS):
            now = time.monotonic()
            for guard in list(self._guards):
                given_up = guard.fire_if_overdue(now)
                if given_up is not None:
                    with self._lock:
                        self._abandoned += 1
                        # Jobs waiting for a thread (the reserve) get one in its place.
                        self._grow()
                    self._slots.release()  # the stuck thread's: it returns without releasing it
                    job, problem = given_up
                    self._done.put((job, None, problem))
