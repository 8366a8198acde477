"""Many tasks at once in one worker: ``listen_queue --concurrency N``.

The main thread stays the only one that talks to the queue and records
outcomes; the slots only run tasks. Each turn it records what finished
since the last one (all of it at once: one executemany and one ACK for
every slot that finished together, so SQLite's single writer is not asked
once per task), then takes items for its free slots, claims them in one
statement and hands them out: a plain ``def`` task to a thread
(tasks.worker.slots), an ``async def`` one to the worker's event loop
(tasks.worker.aio). A slot is free again once its task is recorded.

The reserve: a slot freed by a task of 20 ms would otherwise wait for the
main thread's record, take and claim (two database commits and a Redis round
trip) before its next task, a tenth of its time. So the pool hands out a few
claimed items more than it has slots: they wait in the threads' queue (an
``async def`` one in the event loop's), and a slot that frees starts the
next at once. A semaphore of N permits, shared by the threads and the event
loop, keeps at most N tasks running. The pool keeps only what its slots
start within MQ_BATCH_TARGET_SECONDS at the tasks' recent speed (no hoarding:
for tasks slower than that it keeps none, and what it cannot start soon
stays on the queue for other workers). A waiting item starts only while the
lease taken before its take still holds (else the main thread asks Redis),
and goes back (its row unclaimed, its item left for the release) at a warm
shutdown or when Redis fails.

Leases, recovery and the sweeper are the heartbeat's and the chores' as in
the serial worker; the ownership check runs before the items of a take are
handed out. On the first SIGTERM the worker takes nothing more and waits for
every running task, records it, then returns whatever else it holds.
"""

import asyncio
import logging
import queue as queue_module
import threading
import time
from collections import deque
from datetime import timedelta
from inspect import iscoroutinefunction
from typing import NamedTuple


from tasks import registry
from tasks.conf import mq_settings
from tasks.logfmt import task_context
from tasks.queue.envelope import BadMessage, Envelope, oversized
from tasks.queue.backend import context_result
from tasks.queue.reliable import Taken
from tasks.signals import task_started
from tasks.worker.aio import EventLoopSlots
from tasks.worker.context import TaskControl
from tasks.worker.executor import CANCEL_CHECK_SECONDS, ack_arguments, utcnow
from tasks.worker.faults import fault_point
from tasks.worker.heartbeat import LIMIT_GRACE_SECONDS
from tasks.worker.outcomes import Ack
from tasks.worker.slots import NotStarted, SlotAbandoned, ThreadSlots
from tasks.worker.timelimit import TaskTimeLimitExceeded

logger = logging.getLogger(__name__)

# While some slots run and the queue is empty, the worker looks at the queue
# again after this long, doubling up to the longest: a completion wakes it at
# once, a new item waits at most that long.
POLL_FIRST_SECONDS = 0.005
POLL_LONGEST_SECONDS = 0.1
# With every slot busy there is nothing to take: wait for a completion, but
# come back for the chores and the watchdog at least this often.
FULL_WAIT_SECONDS = 0.5


class Job(NamedTuple):
    queue: object
    raw: bytes
    envelope: Envelope
    attempt: int
    epoch: int  # the heartbeat's epoch at its take: see BatchExecutor._owns


class AsyncEnd(NamedTuple):
    """What an ``async def`` task hands back: its verdict, and its control,
    whose last progress the main thread writes."""

    verdict: object
    control: TaskControl | None


class SlotPool:
    """The slots of one Worker (see tasks.worker.loop.Worker)."""

    def __init__(self, worker, size):
        self.worker = worker
        self.executor = worker.executor
        self.size = size
        self.busy = 0  # handed to the threads or the loop, not yet recorded
        self.slots = threading.BoundedSemaphore(size)  # held by each running task
        self._run_times: deque[float] = deque(maxlen=1000)  # seconds, appended by the slots
        self._mean_run: float | None = None  # recent tasks' run time, seconds
        self._done: queue_module.SimpleQueue = queue_module.SimpleQueue()
        self.threads = ThreadSlots(size, self._run_in_thread, self._done, self.slots, self._may_start)
        self.loop = EventLoopSlots(self._run_async, self._done, self.slots, self._may_start)
        self._poll = POLL_FIRST_SECONDS
        # (queue, Ack) recorded and not yet acknowledged: sent with the next
        # take, in its round trip, or at the end of the turn. One Redis
        # refused stays here and is sent again (releasing the processing list
        # instead, as the serial worker does, would also release what the
        # running slots hold: that waits for release_when_idle).
        self._unacked: list = []
        self.release_when_idle = False
        self.closing = False  # draining: nothing that waits starts any more
        # (Taken or None once handed out, the heartbeat's epoch at its take)
        # while a recovered item waits to run alone, or runs: see _run_alone.
        self._alone: tuple | None = None
        self._cancels_checked = time.monotonic()
        # Ids of jobs found cancelled while a thread held them, waiting for a
        # slot: the thread does not start them, and they are recorded CANCELLED.
        # Each leaves the set when its job is recorded, started or not.
        self._cancelled_held: set[str] = set()

    # --- one turn of the worker's loop ----------------------------------------
    def step(self):
        """Record what finished, take for the free slots, hand out; None once
        a burst run is done (nothing running, nothing waiting)."""
        worker = self.worker
        if self.release_when_idle and not self.busy:
            self._release()
        self.collect()
        self._skip_cancelled()
        worker.chores.run_due(worker.clock())
        if self._alone is not None:
            return self._run_alone()
        free = self.size + self.reserve() - self.busy
        if worker.max_tasks is not None:
            free = min(free, worker.max_tasks - worker.processed - self.busy)
        # Not while a release waits for the slots to empty: what it took now
        # would not start, and would only put the release off.
        if free > 0 and not worker.stopping and not self.release_when_idle:
            epoch = worker.heartbeat.epoch  # before the items are ours: see BatchExecutor._owns
            taken = self._take_waiting(free)
            if taken is None and self.busy == 0:
                taken = worker._take(free)  # blocks, or ends a burst run
                if taken is None:
                    return None
            if taken is not None and taken.recovered:
                self._alone = (taken, epoch)
                return self._run_alone()
            if taken is not None and taken.items:
                self._poll = POLL_FIRST_SECONDS
                started = self._hand_out(taken.queue, taken.items, epoch)
                self._send_unacked()
                return started
        self._send_unacked()
        if self.busy:
            wait = FULL_WAIT_SECONDS if free <= 0 else self._poll
            self._poll = min(self._poll * 2, POLL_LONGEST_SECONDS)
            self.collect(wait)
        return 0

    def _run_alone(self):
        """A recovered item (its worker died, and it may be what killed it)
        runs with no task beside it, as the serial worker runs it: taken
        while others run, it waits for them to end; while it runs, nothing
        more is taken. Else a task that kills its worker took the tasks
        around it down at every restart, until they all ended DEAD."""
        assert self._alone is not None
        taken, epoch = self._alone
        if not self.busy:
            if taken is None:  # it ran and is recorded
                self._alone = None
                return 0
            if not self.worker.stopping:
                self._alone = (None, epoch)
                started = self._hand_out(taken.queue, taken.items, epoch)
                self._send_unacked()
                return started
        self._send_unacked()
        self.collect(FULL_WAIT_SECONDS)
        return 0

    def drain(self):
        """Warm shutdown: wait for every running task and record it; what
        was ready and not started goes back."""
        self.closing = True  # also when the loop ended without a stop request
        self._alone = None  # a recovered item not handed out stays for the release
        self._give_back_waiting()
        while self.busy:
            if not self.overrun():
                self.worker.notifier.watchdog()
            self.collect(FULL_WAIT_SECONDS)
        self._send_unacked()
        self.threads.stop()
        self.loop.stop()

    # --- what the worker reports ------------------------------------------------
    def running(self):
        return self.threads.running() + self.loop.running()

    def busy_slots(self):
        return len(self.running())

    def most_urgent(self):
        """The running task nearest to (or furthest past) its time limit."""
        running = self.running()
        if not running:
            return None
        return min(running, key=lambda r: r.since + r.limit if r.limit is not None else float("inf"))

    def overrun(self):
        """Whether a task is past its limit and grace: stuck where no
        exception reaches it. The worker stops vouching to systemd."""
        urgent = self.most_urgent()
        return urgent is not None and urgent.limit is not None and time.monotonic() - urgent.since > urgent.limit + LIMIT_GRACE_SECONDS

    def reserve(self):
        """How many claimed items may wait for a slot: as many as the slots
        start within the batch target at the recent run time, at most one
        per slot; none until a task has finished."""
        if self._mean_run is None:
            return 0
        # A task running longer than the recent mean (slow tasks after fast
        # ones) counts at once: it is not left to finish before the reserve shrinks.
        now = time.monotonic()
        run_time = max([self._mean_run, *(now - running.since for running in self.running())])
        return min(self.size, int(self.size * mq_settings.MQ_BATCH_TARGET_SECONDS / max(run_time, 1e-6)))

    # --- taking and handing out ---------------------------------------------------
    def _take_waiting(self, limit):
        """Worker._take_waiting, with the acknowledgements that are due sent
        in the take's round trip: a slot that frees is filled again for one
        round trip, not two. Taken, or None."""
        worker, executor = self.worker, self.executor
        max_bytes = mq_settings.MQ_MAX_MESSAGE_BYTES
        for queue in worker.queues:
            acks = [(acked, ack_arguments(ack)) for acked, ack in self._unacked]
            items, too_large, recovered = queue.take(worker.worker_id, limit, max_bytes, acks=acks)
            self._unacked.clear()  # sent with the take
            if too_large:
                executor.record_bad(queue, [BadMessage(oversized(size, max_bytes), id=task_id) for size, task_id in too_large])
            if items or too_large:
                return Taken(queue, items, recovered)
        return None

    def _release(self):
        """Back to their queues: what Redis may hold for this worker that the
        worker no longer knows of (a take whose answer was lost, acknowledgements
        refused), once no slot runs anything."""
        for queue in self.worker.queues:
            queue.release(self.worker.worker_id)
        self._unacked.clear()
        self.release_when_idle = False

    def _hand_out(self, queue, items, epoch):
        """Claim a take and hand it out: a thread's jobs to the threads'
        queue, an async one to the event loop's; how many."""
        executor = self.executor
        runnable, attempts, ack = executor.begin_batch(queue, items, epoch)
        unrun, owned, started = [], True, 0
        for raw, envelope in runnable:
            attempt = attempts.get(envelope.id)
            if attempt is None:  # finished already: a duplicate delivery
                executor.finished_duplicate(ack, raw, envelope)
                continue
            if owned:
                # Once one item is gone, all are: a recovery takes the whole list.
                owned = executor._owns(queue, raw)
            if not owned or self.worker.stopping:
                unrun.append(envelope.id)
                continue
            # The epoch the item was last known ours under (_owns may have asked Redis).
            job = Job(queue, raw, envelope, attempt, executor._epoch)
            task = registry.get(envelope.task)
            assert task is not None  # classify() turned unknown tasks into bad messages
            if iscoroutinefunction(task.func) and executor._send_started:
                # Here, not on the loop: a receiver may use the ORM. Sent as
                # it is handed out, at most a reserve's wait before it starts.
                executor._signal(task_started, task, context_result(task, envelope, attempt, executor.worker_id, utcnow()))
            self._submit(job, task)
            started += 1
        if ack.done or unrun:
            executor.record_outcomes(ack, unrun)
            self._unacked.append((queue, ack))
        return started

    def _submit(self, job, task=None):
        self.busy += 1
        self._line_for(job, task).submit(job)

    def _line_for(self, job, task=None):
        """Where ``job`` waits for a slot: the event loop's line for an
        ``async def`` task, the threads' for the others."""
        task = task or registry.get(job.envelope.task)
        return self.loop if iscoroutinefunction(task.func) else self.threads

    def _skip_cancelled(self):
        """Once per CANCEL_CHECK_SECONDS while jobs wait for a slot (the
        reserve, behind tasks slower than the recent ones): those cancelled
        since their claim are taken back and recorded CANCELLED unrun, as a
        serial batch skips them. One query for all of them."""
        now = time.monotonic()
        if now < self._cancels_checked + CANCEL_CHECK_SECONDS:
            return
        self._cancels_checked = now
        waiting = self.threads.waiting() + self.loop.waiting()
        if not waiting:
            return
        executor = self.executor
        cancelled = executor.db(executor.recorder.cancel_requested_among, [job.envelope.id for job in waiting])
        if not cancelled:
            return
        skipped = []
        for job in self.threads.withdraw() + self.loop.withdraw():  # what started meanwhile is not here
            if job.envelope.id in cancelled:
                skipped.append(job)
            else:
                self._line_for(job).submit(job)  # back in its line, in its order
        # The rest are held by threads waiting for a slot (or started meanwhile).
        held = set(cancelled) - {job.envelope.id for job in skipped}
        for task_id in held - self._cancelled_held:
            logger.info("event=cancelled_before_start task_id=%s (it waits for a slot and will not start)", task_id)
        self._cancelled_held |= held
        try:
            self._record([(job, executor.cancelled(job.envelope), None) for job in skipped])
        finally:
            self.busy -= len(skipped)

    def _may_start(self, job):
        """Asked by a thread holding a slot, before it runs ``job``."""
        if job.envelope.id in self._cancelled_held:
            return False
        return not (self.worker.stopping or self.closing or self.release_when_idle) and self.worker.heartbeat.holds(job.epoch)

    def _give_back_waiting(self):
        """Unclaim what waits for a slot; its items stay in the processing
        list, for the release at the stop (or the one that called this)."""
        withdrawn = self.threads.withdraw() + self.loop.withdraw()
        self.busy -= len(withdrawn)
        self._unclaim(withdrawn)

    def _unclaim(self, jobs):
        executor = self.executor
        by_queue: dict = {}
        for job in jobs:
            by_queue.setdefault(job.queue, []).append(job.envelope.id)
        for ids in by_queue.values():
            executor.db(executor.recorder.unclaim, ids, executor.worker_id)

    # --- in the slots -------------------------------------------------------------
    def _run_in_thread(self, job, guard):
        started = time.monotonic()
        try:
            return self.executor._run_to_verdict(job.raw, job.envelope, job.attempt, guard)
        finally:
            self._run_times.append(time.monotonic() - started)

    async def _run_async(self, job, started):
        """The verdict of an ``async def`` task, awaited under its time limit."""
        executor, envelope, attempt = self.executor, job.envelope, job.attempt
        max_attempts, limit = executor._options(envelope.task)
        if attempt > max_attempts:
            return AsyncEnd(executor.dead(job.raw, envelope, attempt), None)
        task = registry.get(envelope.task)
        assert task is not None
        started_at, since = utcnow(), time.monotonic()
        control = timeout = None
        result = error = None
        try:
            with task_context(envelope.id, envelope.task):
                # No deadline of its own: the loop's Deadline (tasks.worker.aio)
                # expires it, crediting the time other tasks blocked the loop.
                async with asyncio.timeout(None) as timeout:
                    deadline = started(envelope.task, limit, timeout)
                    if task.takes_context:
                        control = TaskControl(envelope.id, executor.recorder)
                        context = executor.context(task, envelope, attempt, started_at, control)
                        value = await task.func(context, *envelope.args, **envelope.kwargs)
                    else:
                        value = await task.func(*envelope.args, **envelope.kwargs)
                if deadline is not None and deadline.overdue():
                    # It blocked the loop past the point where it is given up:
                    # no timer could run meanwhile to cancel or abandon it.
                    raise TaskTimeLimitExceeded(f"task exceeded its time limit ({limit} s) blocking the event loop, where no cancellation reaches it")
                result = executor.storable(value)
        except TimeoutError as exc:
            # timeout.expired(): our limit, not a TimeoutError of the task's own
            ours = timeout is not None and timeout.expired()
            ended = TaskTimeLimitExceeded(f"task exceeded its time limit ({limit} s): cancelled") if ours else exc
            error = executor.error_of(ended, attempt)
        except BaseException as exc:  # as in the thread slots: whatever task code raises is its failure
            error = executor.error_of(exc, attempt)
        self._run_times.append(time.monotonic() - since)
        fault_point("after_run")
        # The control's last progress is written by the main thread: this
        # thread runs the loop, where a blocking query does not belong.
        return AsyncEnd(executor.verdict(job.raw, envelope, attempt, max_attempts, started_at, result, error), control)

    # --- recording ------------------------------------------------------------------
    def collect(self, timeout=None):
        """Record every finished task (waiting up to ``timeout`` for the first)."""
        try:
            first = self._done.get(timeout=timeout) if timeout else self._done.get_nowait()
        except queue_module.Empty:
            return
        finished = [first]
        while True:
            try:
                finished.append(self._done.get_nowait())
            except queue_module.Empty:
                break
        while self._run_times:
            ran = self._run_times.popleft()
            self._mean_run = ran if self._mean_run is None else 0.8 * self._mean_run + 0.2 * ran
        try:
            self._record(finished)
        finally:
            self.busy -= len(finished)  # recorded, given up to recovery, or handed out again
            self.loop.kick()  # a thread's slot may have freed what an async job waits for

    def _record(self, finished):
        executor = self.executor
        acks: dict = {}
        cancelled = None
        for job, outcome, problem in finished:
            ack, unrun = acks.setdefault(job.queue, (Ack(), []))
            held_when_cancelled = job.envelope.id in self._cancelled_held
            self._cancelled_held.discard(job.envelope.id)  # also when it had started meanwhile
            if isinstance(problem, NotStarted) and held_when_cancelled:
                outcome, problem = executor.cancelled(job.envelope), None  # as _skip_cancelled records one
            elif isinstance(problem, NotStarted):
                epoch = self.worker.heartbeat.epoch  # before Redis is asked, as for a take
                if self._may_start_after_all(job):
                    self._submit(job._replace(epoch=epoch))
                else:
                    unrun.append(job.envelope.id)
                continue
            if isinstance(problem, SlotAbandoned):
                outcome = self._timed_out(job, problem)
            elif problem is not None:
                # Not the task's failure (that is a verdict): the worker's own.
                # Left in the processing list, released at the worker's stop.
                logger.error("event=slot_error task_id=%s task=%s error=%r", job.envelope.id, job.envelope.task, str(problem))
                unrun.append(job.envelope.id)
                continue
            if isinstance(outcome, AsyncEnd):
                outcome, control = outcome
                if control is not None:
                    control.flush()
            verdict = outcome
            if executor._send_finished:
                if cancelled is None:  # asked once for the jobs recorded together
                    cancelled = executor.db(executor.recorder.cancel_requested_among, [done.envelope.id for done, _, _ in finished])
                executor.signal_finished(job.envelope, job.attempt, verdict, cancelled)
            ack.add(job.raw, verdict, job.envelope.enqueued_at)
            executor._count_and_log(job.queue, job.envelope, job.attempt, verdict)
        for ack, unrun in acks.values():
            executor.record_outcomes(ack, unrun)
        fault_point("after_record")
        self._unacked += [(queue, ack) for queue, (ack, _) in acks.items()]

    def _may_start_after_all(self, job):
        """A job a thread did not start: again, if the item is still this
        worker's (Redis says, as the lease lapsed) and the worker goes on."""
        if self.worker.stopping or self.closing or self.release_when_idle:
            return False
        return self.executor._owns(job.queue, job.raw, job.epoch)

    def _timed_out(self, job, problem):
        """The verdict of a task whose thread was abandoned at its time limit."""
        executor = self.executor
        max_attempts, _ = executor._options(job.envelope.task)
        started_at = utcnow() - timedelta(seconds=time.monotonic() - problem.since)
        error = executor.error_of(TaskTimeLimitExceeded(str(problem)), job.attempt)
        return executor.verdict(job.raw, job.envelope, job.attempt, max_attempts, started_at, None, error)

    def _send_unacked(self):
        while self._unacked:
            queue, ack = self._unacked[0]
            self.executor.send_ack(queue, ack)
            self._unacked.pop(0)
