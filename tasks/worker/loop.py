"""The queue worker: a plain class that ``listen_queue`` runs.

The loop takes and hands over; it owns what a batch cannot decide alone:
how much to take, when the chores run, what happens when Redis or the
database is away, and how the worker stops. When a queue is deep the worker
takes a batch in one round trip (the BatchExecutor runs and acknowledges
it); when it is shallow it blocks in BLMOVE and runs each task as it
arrives. The batch size follows the tasks' speed, so fast tasks drain in
bulk and slow ones are never hoarded by one worker.

Signal handlers only set ``stopping``; the batch in hand notices it between
tasks (a warm shutdown: the task running finishes and is recorded, the rest
go back to the queue untouched).

With ``concurrency`` above 1 each turn is the SlotPool's instead
(tasks.worker.pool): the same take, claim and acknowledgement, with the
tasks run in thread slots and on an event loop.

Queues, recorder and clock are arguments, so a test can run one batch with
``step()`` on fakeredis at a time of its choosing.
"""

import logging
import os
import socket
import time
from functools import partial

from django.db import close_old_connections, connections
from redis.exceptions import RedisError

from tasks.backoff import backoff_delay
from tasks.conf import mq_settings
from tasks.dbretry import retry_database
from tasks.queue import presence
from tasks.queue.connection import get_redis
from tasks.exceptions import ForcedStop, QueueUnavailable
from tasks.queue.backend import queue_for
from tasks.queue.envelope import BadMessage, oversized
from tasks.queue.recorder import Recorder
from tasks.queue.reliable import Taken
from tasks.sdnotify import SystemdNotifier
from tasks.worker.chores import PROMOTE, worker_chores
from tasks.worker.executor import BatchExecutor
from tasks.worker.faults import fault_point
from tasks.worker.heartbeat import Heartbeat, Snapshot
from tasks.worker.pool import SlotPool
from tasks.worker.timelimit import install_time_limit_handler

logger = logging.getLogger(__name__)

# Waiting out Redis: the first pause, and the longest.
REDIS_BACKOFF_BASE = 0.1
REDIS_BACKOFF_MAX = 5.0

class Worker:
    def __init__(
        self,
        queue_names=None,
        worker_id=None,
        burst=False,
        max_tasks=None,
        recorder=None,
        notifier=None,
        queues=None,
        clock=time.time,
        concurrency=None,
    ):
        """``queues``: ReliableQueues to serve (default: ``queue_names`` on the
        configured Redis); ``clock``: the unix time chores and retries go by;
        ``concurrency``: tasks run at once (default MQ_WORKER_CONCURRENCY)."""
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        if queues is None:
            client = get_redis(retries=0)
            queues = [queue_for(name, client) for name in (queue_names or ["default"])]
        self.queues = list(queues)
        self.queue_names = [queue.name for queue in self.queues]
        self.client = self.queues[0].client
        self.burst = burst
        self.max_tasks = max_tasks
        self.recorder = recorder or Recorder()
        self.notifier = notifier or SystemdNotifier()
        self.clock = clock
        self.stopping = False
        self.forced = False  # the operator's second signal: leave at once
        self.batch_size = 1
        self._turn = 0
        self._redis_failing = False
        self._redis_errors = 0  # in a row: the backoff grows with them
        # An outage pauses the worker: the items stay in the processing list
        # under a live lease meanwhile, so nothing is lost and nobody else runs them.
        self._db = partial(retry_database, owner=f"worker={self.worker_id}", notifier=self.notifier)
        self.heartbeat = Heartbeat(
            self.worker_id, self.queues, self.notifier, self.snapshot, on_tick=self.recorder.checkpoint_if_due
        )
        self.executor = BatchExecutor(self.worker_id, self.recorder, self.heartbeat, self._db, clock, self._should_stop)
        self.chores = worker_chores(self.worker_id, self.queues, self._db)
        self.concurrency = concurrency or mq_settings.MQ_WORKER_CONCURRENCY
        # One slot keeps the serial loop below: no thread hand-over on the
        # path of the fastest (no-op) drains.
        self.pool = SlotPool(self, self.concurrency) if self.concurrency > 1 else None

    def request_stop(self):
        """Safe to call from a signal handler: finish the current task, then stop."""
        self.stopping = True

    def _should_stop(self):
        return self.stopping

    @property
    def processed(self):
        return self.executor.processed

    @property
    def failed(self):
        return self.executor.failed_count

    @property
    def current(self):
        """(envelope, monotonic start, time limit) of the running task, or None."""
        return self.executor.current

    def snapshot(self):
        executor = self.executor
        if self.pool is not None:
            urgent, busy = self.pool.most_urgent(), self.pool.busy_slots()
            if urgent is None:
                return Snapshot(self.stopping, executor.processed, executor.failed_count, None, None, None, busy, self.concurrency)
            return Snapshot(self.stopping, executor.processed, executor.failed_count, urgent.task, urgent.since, urgent.limit, busy, self.concurrency)
        current = executor.current
        if current is None:
            return Snapshot(self.stopping, executor.processed, executor.failed_count, None, None, None, 0, 1)
        envelope, since, limit = current
        return Snapshot(self.stopping, executor.processed, executor.failed_count, envelope.task, since, limit, 1, 1)

    def status_text(self):
        return self.snapshot().status_text()

    # --- the loop --------------------------------------------------------
    def run(self):
        install_time_limit_handler()
        if not self._wait_until_ready():
            return self.processed
        try:
            while not self.stopping and not self._reached_max():
                if self.pool is None or not self.pool.overrun():
                    self.notifier.watchdog()
                fault_point("loop")
                try:
                    if self.step() is None:
                        break
                    if self._redis_failing:
                        logger.warning("event=redis_back worker=%s", self.worker_id)
                        self._redis_failing = False
                # QueueUnavailable: the sweeper's push, refused the way any
                # other call can be (read-only, out of memory, timed out); it
                # must pause the worker like any Redis error, not end it.
                except (RedisError, QueueUnavailable) as exc:
                    self._redis_trouble(exc)
        except ForcedStop:
            self.forced = True
            raise
        finally:
            self._shutdown()
        return self.processed

    def step(self):
        """One turn of the loop: the chores that are due, then one batch.

        Returns how many tasks ran, or None once a burst run is done.
        """
        if self.pool is not None:
            return self.pool.step()
        self.chores.run_due(self.clock())
        epoch = self.heartbeat.epoch  # before the items are ours: see BatchExecutor._owns
        taken = self._take()
        if taken is None:
            return None
        queue, items, _recovered = taken  # a recovered item comes alone: it runs alone
        if not items:
            return 0
        started = time.monotonic()
        ran = self.executor.execute(queue, items, epoch)
        self._adapt_batch_size(ran, time.monotonic() - started)
        return ran

    def _reached_max(self):
        return self.max_tasks is not None and self.processed >= self.max_tasks

    def begin(self):
        """Get ready to take: database connected, earlier leftovers returned,
        leases taken. Raises RedisError while Redis does not answer."""
        self.client.ping()
        self._db(lambda: connections[self.recorder.using].ensure_connection())
        # A worker that is starting runs nothing: rows its id left RUNNING
        # are a previous life's. Reopened, the sweeper may resend them if
        # Redis lost them too; it never resends a live worker's RUNNING rows.
        self._db(self.recorder.reopen_running, self.worker_id)
        for queue in self.queues:
            moved = queue.recover_own(self.worker_id)
            if moved:
                logger.warning("event=recovered_own worker=%s queue=%s items=%d", self.worker_id, queue.name, moved)
        self.heartbeat.beat(first=True)

    def _wait_until_ready(self):
        """Start once Redis and the database answer, returning earlier leftovers."""
        failures = 0
        while not self.stopping:
            try:
                self.begin()
                break
            except RedisError as exc:
                self._log_redis_down(exc)
                time.sleep(backoff_delay(failures, REDIS_BACKOFF_BASE, REDIS_BACKOFF_MAX))
                failures += 1
        if self.stopping:
            return False
        self.heartbeat.start()
        logger.info("event=worker_start worker=%s queues=%s pid=%d", self.worker_id, ",".join(self.queue_names), os.getpid())
        self.notifier.ready(self.status_text())
        return True

    def _take(self, limit=None):
        """Taken items to process, at most ``limit`` (default: the batch
        size); None when a burst run is done."""
        limit = limit or self.batch_size
        if self.max_tasks is not None:
            limit = max(1, min(limit, self.max_tasks - self.processed))
        taken = self._take_waiting(limit)
        if taken is not None:
            return taken
        # Nothing waiting: let the batch recorded behind finish first. Its
        # retries reach the delayed set only with its acknowledgement, and a
        # burst run must see them before it decides it is done.
        self.executor.settle()
        timeout = mq_settings.MQ_BLOCK_SECONDS
        promote = self.chores[PROMOTE]
        if self.burst:
            # A burst run waits only for retries falling due within one block.
            self.chores.expedite(PROMOTE)
            self.chores.run_due(self.clock())
            # What that promotion just put on a queue is taken before the run
            # may end: promote reports only what is still waiting after it.
            taken = self._take_waiting(limit)
            if taken is not None:
                return taken
            soonest_due = promote.last_result
            if soonest_due is None or soonest_due - self.clock() > timeout:
                return None
        queue = self.queues[self._turn % len(self.queues)]
        self._turn += 1
        timeout = min(timeout, max(promote.next_run - self.clock(), 0.01))
        item = queue.take_blocking(self.worker_id, timeout)
        return Taken(queue, [item] if item is not None else [], False)

    def _take_waiting(self, limit):
        """Taken items from the first queue with something waiting, without
        blocking; None when every queue is empty."""
        max_bytes = mq_settings.MQ_MAX_MESSAGE_BYTES
        for queue in self.queues:
            items, too_large, recovered = queue.take(self.worker_id, limit, max_bytes)
            if too_large:
                messages = [BadMessage(oversized(size, max_bytes), id=task_id) for size, task_id in too_large]
                self.executor.record_bad(queue, messages)
            if items or too_large:
                return Taken(queue, items, recovered)
        return None

    def _adapt_batch_size(self, ran, seconds):
        if ran:
            per_task = max(seconds / ran, 1e-6)
            target = mq_settings.MQ_BATCH_TARGET_SECONDS
            self.batch_size = max(1, min(mq_settings.MQ_MAX_BATCH, int(target / per_task)))

    # --- outages -----------------------------------------------------------
    def _redis_trouble(self, exc):
        """Back off quietly; items taken before the error go back to the queue."""
        self._log_redis_down(exc)
        time.sleep(backoff_delay(self._redis_errors, REDIS_BACKOFF_BASE, REDIS_BACKOFF_MAX))
        self._redis_errors += 1
        try:
            # The batch being recorded behind keeps its items until then.
            self.executor.settle()
        except (RedisError, QueueUnavailable):
            pass  # its items go back below, and come back as duplicates acknowledged unrun
        try:
            if self.pool is not None and self.pool.busy:
                # Not while slots run tasks: what they hold must not run twice.
                self.pool.release_when_idle = True
            elif self.pool is not None:
                self.pool._release()
            for queue in self.queues:
                if self.pool is None:
                    queue.release(self.worker_id)
                queue.register(self.worker_id, mq_settings.MQ_LEASE_SECONDS)
            self._redis_errors = 0
        except RedisError:
            pass

    def _drain_pool(self, pool):
        """Let every running task finish and be recorded (warm shutdown)."""
        while True:
            try:
                pool.drain()
                return
            except (RedisError, QueueUnavailable) as exc:
                # Recorded already; their items stay in the processing list
                # and come back as duplicates a worker acknowledges unrun.
                self._log_redis_down(exc)
                time.sleep(REDIS_BACKOFF_BASE)

    def _log_redis_down(self, exc):
        if not self._redis_failing:
            logger.error("event=redis_down worker=%s error=%r", self.worker_id, str(exc))
        self._redis_failing = True

    def _shutdown(self):
        if self.pool is not None and not self.forced:
            self._drain_pool(self.pool)  # under a live lease: the heartbeat still runs
        interrupted = None
        if not self.forced:  # the batch recorded behind may wait out a database outage
            try:
                self.executor.close()  # before its items are released
            except ForcedStop as exc:  # the second signal, while a stuck record held the exit
                self.forced, interrupted = True, exc
            except (RedisError, QueueUnavailable) as exc:
                self._log_redis_down(exc)
            except Exception:  # the rest of the shutdown still runs
                logger.exception("event=record_behind_failed worker=%s", self.worker_id)
        self.heartbeat.stop()
        self.heartbeat.tell_stopping()
        try:
            # A forced stop leaves tasks running in slots, or a record in
            # flight that may still commit: items given back now could be
            # claimed and run by another worker meanwhile. Kept in the
            # processing list, they come back once the lease expires, when
            # this process, its tasks and its transaction are gone.
            still_running = self.pool is not None and self.pool.busy
            if not (self.forced and (still_running or self.executor.recording_behind)):
                for queue in self.queues:
                    queue.release(self.worker_id)
            presence.withdraw(self.client, "worker", self.worker_id)
        except RedisError as exc:
            logger.warning("event=release_failed worker=%s error=%r (the lease will expire)", self.worker_id, str(exc))
        close_old_connections()
        logger.info("event=worker_stop worker=%s processed=%d failed=%d", self.worker_id, self.processed, self.failed)
        if interrupted is not None:
            raise interrupted  # exit 128 + signal, as a forced stop does
