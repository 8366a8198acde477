"""The queue worker: a plain class that ``listen_queue`` runs.

One loop, one task at a time. When a queue is deep the worker takes a batch
in one round trip and records it with two statements; when it is shallow it
blocks in BLMOVE and runs each task as it arrives. The batch size follows
the tasks' speed, so fast tasks drain in bulk and slow ones are never
hoarded by one worker. Outcomes are recorded before the items leave the
processing list: a worker killed at any point loses nothing.

Signal handlers only set ``stopping``; the loop notices it between tasks.
"""

import logging
import os
import socket
import time
import traceback
from dataclasses import replace
from datetime import datetime
from datetime import timezone as dt_timezone
from functools import partial

from django.db import close_old_connections, connections
from redis.exceptions import RedisError

from tasks.queue import presence
from tasks import registry
from tasks.queue.backend import context_result, new_task_id, queue_for, to_json
from tasks.worker.outcomes import Ack, retry_delay
from tasks.compat import TaskContext
from tasks.conf import mq_settings
from tasks.queue.connection import get_redis
from tasks.dbretry import retry_database
from tasks.queue.envelope import BadMessage, DeadLetter, Envelope, RawPayload, decode, now_iso, oversized
from tasks.worker.faults import fault_point
from tasks.worker.heartbeat import Heartbeat, lease_clock
from tasks.models import TaskStatus
from tasks.queue.recorder import Outcome, Recorder
from tasks.sdnotify import SystemdNotifier
from tasks.storable import printable, unstorable
from tasks.worker.sweeper import sweep
from tasks.worker.scheduler import ScheduleChore  # issue 10 hook
from tasks.worker.retention import RetentionChore  # issue 11 hook (retention)
from tasks.exceptions import ForcedStop, QueueUnavailable
from tasks.worker.timelimit import install_time_limit_handler, time_limit

logger = logging.getLogger(__name__)




class Worker:
    def __init__(self, queue_names=None, worker_id=None, burst=False, max_tasks=None, recorder=None, notifier=None):
        self.queue_names = list(queue_names or ["default"])
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.burst = burst
        self.max_tasks = max_tasks
        self.client = get_redis(retries=0)
        self.queues = [queue_for(name, self.client) for name in self.queue_names]
        self.recorder = recorder or Recorder()
        self.notifier = notifier or SystemdNotifier()
        self.stopping = False
        self.processed = 0
        self.failed = 0
        self.current = None  # (envelope, monotonic start) of the running task
        self.batch_size = 1
        self._next_promote = 0.0
        self._soonest_due = None
        self._next_recover = 0.0
        self._next_sweep = 0.0
        self._turn = 0
        self._redis_failing = False
        self._redis_errors = 0  # in a row: the backoff grows with them
        self._batch_options = {}
        self._epoch = 0  # the heartbeat's epoch when the batch in hand was taken
        self.heartbeat = Heartbeat(self)
        self.schedules = ScheduleChore()  # issue 10 hook: periodic tasks
        self.retention = RetentionChore(self.queues[0])  # issue 11 hook: MQ_HISTORY_RETENTION_DAYS

    def request_stop(self):
        """Safe to call from a signal handler: finish the current task, then stop."""
        self.stopping = True

    # --- the loop --------------------------------------------------------
    def run(self):
        install_time_limit_handler()
        if not self._wait_until_ready():
            return self.processed
        try:
            while not self.stopping and not self._reached_max():
                self.notifier.watchdog()
                fault_point("loop")
                try:
                    self._maintain()
                    taken = self._take()
                    if taken is None:
                        break
                    if taken[1]:
                        self._process(*taken)
                    if self._redis_failing:
                        logger.warning("event=redis_back worker=%s", self.worker_id)
                        self._redis_failing = False
                # QueueUnavailable: the sweeper's push, refused the way any
                # other call can be (read-only, out of memory, timed out); it
                # must pause the worker like any Redis error, not end it.
                except (RedisError, QueueUnavailable) as exc:
                    self._redis_trouble(exc)
        finally:
            self._shutdown()
        return self.processed

    def _reached_max(self):
        return self.max_tasks is not None and self.processed >= self.max_tasks

    def _wait_until_ready(self):
        """Start once Redis and the database answer, returning earlier leftovers."""
        delay = 0.1
        while not self.stopping:
            try:
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
                break
            except RedisError as exc:
                self._log_redis_down(exc)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        if self.stopping:
            return False
        self.heartbeat.start()
        logger.info("event=worker_start worker=%s queues=%s pid=%d", self.worker_id, ",".join(self.queue_names), os.getpid())
        self.notifier.ready(self.status_text())
        return True

    def _maintain(self):
        """Periodic chores: promote due retries, recover dead workers, sweep."""
        now = time.time()
        if now >= self._next_promote:
            dues = [due for due in (queue.promote_due(now) for queue in self.queues) if due is not None]
            self._soonest_due = min(dues, default=None)
            self._next_promote = min(dues + [now + mq_settings.MQ_BLOCK_SECONDS])
        if now >= self._next_recover:
            self._next_recover = now + mq_settings.MQ_LEASE_SECONDS / 2
            for queue in self.queues:
                for dead_worker, moved in queue.recover_expired(except_worker=self.worker_id).items():
                    logger.warning(
                        "event=recovered worker=%s dead_worker=%s queue=%s items=%d",
                        self.worker_id,
                        dead_worker,
                        queue.name,
                        moved,
                    )
        if now >= self._next_sweep:
            interval = mq_settings.MQ_SWEEP_INTERVAL_SECONDS
            self._next_sweep = now + interval
            for queue in self.queues:
                # confirm: after Redis lost its data, live workers need a heartbeat
                # to announce their leases again before their RUNNING rows look lost.
                self._db(
                    partial(sweep, confirm_seconds=mq_settings.MQ_LEASE_SECONDS),
                    queue,
                    mq_settings.MQ_SWEEP_GRACE_SECONDS,
                    interval,
                )
        # issue 10 hook: fire the periodic tasks that fell due (tasks/worker/scheduler.py).
        self.schedules.maybe_run(now, self._db)
        self.retention.maybe_run(now, self._db)  # issue 11 hook: prune history (tasks/worker/retention.py)

    def _take(self):
        """(queue, items) to process; None when a burst run is done."""
        self._epoch = self.heartbeat.epoch  # before the items are ours: see _owns
        limit = self.batch_size
        if self.max_tasks is not None:
            limit = max(1, min(limit, self.max_tasks - self.processed))
        for queue in self.queues:
            max_bytes = mq_settings.MQ_MAX_MESSAGE_BYTES
            items, too_large = queue.take(self.worker_id, limit, max_bytes)
            if too_large:
                messages = [BadMessage(oversized(size, max_bytes), id=task_id) for size, task_id in too_large]
                self._record_bad(queue, messages)
            if items or too_large:
                return queue, items
        timeout = mq_settings.MQ_BLOCK_SECONDS
        if self.burst:
            # A burst run waits only for retries falling due within one block.
            self._next_promote = 0.0
            self._maintain()
            if self._soonest_due is None or self._soonest_due - time.time() > timeout:
                return None
        queue = self.queues[self._turn % len(self.queues)]
        self._turn += 1
        timeout = min(timeout, max(self._next_promote - time.time(), 0.01))
        item = queue.take_blocking(self.worker_id, timeout)
        return queue, [item] if item is not None else []

    # --- one batch ---------------------------------------------------------
    def _process(self, queue, items):
        fault_point("after_take")
        # As Django does around a request: drop a connection past CONN_MAX_AGE
        # or broken by the previous batch, before this batch's statements.
        close_old_connections()
        batch_started = time.monotonic()
        self._batch_options = {}
        runnable, bad, replacements, seen = [], [], [], set()
        for raw in items:
            message = self._classify(raw, queue.name)
            if isinstance(message, tuple):  # a raw payload, now wrapped in an envelope
                replacements.append((raw, message[1]))
                message = message[1]
                raw = message.encode()
            if isinstance(message, BadMessage):
                bad.append((raw, message))
            elif message.id in seen:
                bad.append((raw, None))  # the same delivery twice in one batch: run it once
            else:
                seen.add(message.id)
                runnable.append((raw, message))
        if replacements:
            queue.replace_in_flight(self.worker_id, replacements)

        attempts = self._claim([envelope for _, envelope in runnable])
        ack = Ack()
        for raw, message in bad:
            ack.done.append(raw)
            if message is not None:
                ack.dead.append(self._dead_entry(raw, message.reason, message.id, message.task))
                ack.finished_ids.append(message.id)
        if bad:
            self._record_bad(queue, [m for _, m in bad if m is not None])

        unrun, owned = [], True
        for raw, envelope in runnable:
            attempt = attempts.get(envelope.id)
            if attempt is not None and owned and not self.stopping:
                # Once one item is gone, all are: a recovery takes the whole list.
                owned = self._owns(queue, raw)
            if self.stopping or not owned:
                if attempt is not None:
                    unrun.append(envelope.id)
                continue
            ack.done.append(raw)
            if attempt is None:  # finished already: a duplicate delivery
                ack.finished_ids.append(envelope.id)
                continue
            outcome = self._run_or_give_up(envelope, attempt)
            self._settle(queue, raw, envelope, attempt, outcome, ack)

        self._db(self.recorder.finish, ack.successes)
        if ack.failures:
            self._db(self.recorder.fail, ack.failures)
        if unrun:
            self._db(self.recorder.unclaim, unrun, self.worker_id)
        fault_point("after_record")
        queue.ack(
            self.worker_id,
            ack.done,
            ack.finished_ids,
            ack.retries,
            ack.dead,
            dead_max=mq_settings.MQ_DEAD_LETTER_MAX,
            stats=ack.stats,
        )
        self._adapt_batch_size(len(runnable) - len(unrun), time.monotonic() - batch_started)

    def _classify(self, raw, queue_name):
        """An Envelope to run, a ("raw", Envelope) wrapping a raw payload, or a
        BadMessage (with an id, so it gets a history row)."""
        message = decode(raw, queue_name, mq_settings.MQ_MAX_MESSAGE_BYTES)
        if isinstance(message, RawPayload):
            raw_task = mq_settings.MQ_RAW_MESSAGE_TASKS.get(queue_name)
            if not raw_task or registry.get(raw_task) is None:
                return BadMessage(f"not an mqsite envelope, and queue {queue_name!r} has no raw-message task", id=new_task_id())
            return ("raw", Envelope(id=new_task_id(), task=raw_task, queue=queue_name, args=[message.text], enqueued_at=now_iso()))
        if isinstance(message, Envelope) and registry.get(message.task) is None:
            return BadMessage(f"unknown task {message.task!r}: not registered with @task", id=message.id, task=message.task)
        if isinstance(message, BadMessage) and not message.id:
            return replace(message, id=new_task_id())
        return message

    def _claim(self, envelopes):
        if not envelopes:
            return {}
        ids = [envelope.id for envelope in envelopes]
        attempts = self._db(self.recorder.claim, ids, self.worker_id)
        missing = [envelope for envelope in envelopes if envelope.id not in attempts]
        if missing:
            # Pushed by a producer that wrote no row (the sweeper's resend of a
            # finished task is told apart by its row being final already).
            self._db(self.recorder.create_missing, missing)
            attempts.update(self._db(self.recorder.claim, [e.id for e in missing], self.worker_id))
        return attempts

    def _owns(self, queue, raw):
        """Whether a taken item is still this worker's to run.

        A worker stalled past its lease (stopped, or its heartbeat starved by
        a task holding the GIL) may have lost its batch: another worker took
        it back, and may have run it already. While the lease has been held
        without a break since the take, the answer is yes without a round
        trip; otherwise Redis says whether the item is still in this worker's
        processing list, and renews the lease if so.
        """
        heartbeat = self.heartbeat
        if heartbeat.holds(self._epoch):
            return True
        epoch, sent = heartbeat.epoch, lease_clock()
        try:
            held = queue.confirm_held(self.worker_id, raw, mq_settings.MQ_LEASE_SECONDS)
        except RedisError as exc:
            # Unknown is not ours: the rest of the batch is left to recovery.
            logger.warning("event=lease_unconfirmed worker=%s queue=%s error=%r", self.worker_id, queue.name, str(exc))
            return False
        if not held:
            logger.warning("event=batch_taken_back worker=%s queue=%s (its lease had lapsed)", self.worker_id, queue.name)
        elif epoch % 2 == 0:  # not while the heartbeat takes a new lease
            self._epoch = epoch
            heartbeat.held(sent)
        return held

    def status_text(self):
        current = self.current
        return f"processed={self.processed} failed={self.failed} current={current[0].task if current else '-'}"

    def time_limit_of(self, task_path):
        """The limit the running batch applies to a task (None: unlimited)."""
        return self._batch_options.get(task_path, (None, None))[1]

    def _options(self, task_path):
        """(max_attempts, time_limit) of a task, read once per batch: settings
        lookups are a visible share of a no-op task's cost."""
        options = self._batch_options.get(task_path)
        if options is None:
            options = (mq_settings.task_option(task_path, "max_attempts"), mq_settings.task_option(task_path, "time_limit"))
            self._batch_options[task_path] = options
        return options

    def _run_or_give_up(self, envelope, attempt):
        limit = self._options(envelope.task)[0]
        now = utcnow()
        if attempt > limit:
            error = f"gave up after {attempt - 1} attempts; the last ones never finished (the worker was lost)"
            return Outcome(envelope.id, TaskStatus.DEAD, now, now, error=self._error("mqsite.WorkerLost", error, attempt))
        return self._run(registry.get(envelope.task), envelope, attempt)

    def _run(self, task, envelope, attempt):
        started_at = utcnow()
        self.current = (envelope, time.monotonic())
        try:
            with time_limit(self._options(envelope.task)[1]):
                if task.takes_context:
                    context = TaskContext(task_result=context_result(task, envelope, attempt, self.worker_id, started_at))
                    value = task.call(context, *envelope.args, **envelope.kwargs)
                else:
                    value = task.call(*envelope.args, **envelope.kwargs)
                result = to_json(value)
                problem = unstorable(result)
                if problem:  # fail the run here, rather than the worker at the database write
                    raise ValueError(f"the task's return value cannot be recorded: {problem}")
            return Outcome(envelope.id, TaskStatus.SUCCESSFUL, started_at, utcnow(), result=result)
        except ForcedStop:
            raise  # the operator's second signal ends the worker, not the task
        except BaseException as exc:
            # Whatever task code raises is its failure: sys.exit(), a
            # KeyboardInterrupt (our SIGINT handler raises none), the time
            # limit's exception. Let through, they ended the whole worker.
            error = self._error(f"{type(exc).__module__}.{type(exc).__qualname__}", _traceback(exc), attempt)
            return Outcome(envelope.id, TaskStatus.FAILED, started_at, utcnow(), error=error)
        finally:
            self.current = None
            fault_point("after_run")

    def _settle(self, queue, raw, envelope, attempt, outcome, ack):
        """Decide what an outcome means for the queue, and log it."""
        duration = (outcome.finished_at - outcome.started_at).total_seconds()
        self.processed += 1
        if outcome.status == TaskStatus.SUCCESSFUL:
            ack.successes.append(outcome)
            ack.finished_ids.append(envelope.id)
            verdict, retry = "succeeded", ""
        elif outcome.status == TaskStatus.FAILED and attempt < self._options(envelope.task)[0]:
            outcome.status = TaskStatus.READY
            delay = retry_delay(attempt)
            ack.failures.append(outcome)
            ack.retries.append((raw, envelope.next_attempt(), time.time() + delay))
            verdict, retry = "retried", f" retry_in={delay:.2f}"
        else:
            self.failed += 1
            ack.failures.append(outcome)
            ack.finished_ids.append(envelope.id)
            ack.dead.append(self._dead_entry(raw, outcome.error["exception"], envelope.id, envelope.task))
            verdict, retry = ("dead" if outcome.status == TaskStatus.DEAD else "failed"), ""
        ack.count(verdict, duration)
        log = logger.info if outcome.status == TaskStatus.SUCCESSFUL else logger.warning
        log(
            "event=task_done task_id=%s task=%s queue=%s worker=%s attempt=%d duration=%.4f outcome=%s%s",
            envelope.id,
            envelope.task,
            queue.name,
            self.worker_id,
            attempt,
            duration,
            verdict,
            retry,
        )

    def _adapt_batch_size(self, ran, seconds):
        if ran:
            per_task = max(seconds / ran, 1e-6)
            target = mq_settings.MQ_BATCH_TARGET_SECONDS
            self.batch_size = max(1, min(mq_settings.MQ_MAX_BATCH, int(target / per_task)))

    def _record_bad(self, queue, messages):
        messages = [m if m.id else replace(m, id=new_task_id()) for m in messages]
        for message in messages:
            logger.warning("event=bad_message queue=%s worker=%s task_id=%s reason=%r", queue.name, self.worker_id, message.id, message.reason)
        self._db(self.recorder.record_bad, messages, queue.name, self.worker_id)

    def _dead_entry(self, raw, reason, task_id, task_path):
        return DeadLetter.of(raw, reason, task_id, task_path, mq_settings.MQ_MAX_MESSAGE_BYTES)

    def _error(self, exception, trace, attempt):
        # printable: an exception's message, even its class's module name, may
        # carry NUL or lone surrogates, which the history row cannot store.
        return {"exception": printable(exception), "traceback": printable(trace), "attempt": attempt, "worker": self.worker_id, "at": now_iso()}

    # --- outages -----------------------------------------------------------
    def _db(self, fn, *args):
        """Call fn until the database takes it: an outage pauses the worker.

        The items stay in the processing list under a live lease meanwhile, so
        nothing is lost and nobody else runs them.
        """
        return retry_database(fn, *args, owner=f"worker={self.worker_id}", notifier=self.notifier)

    def _redis_trouble(self, exc):
        """Back off quietly; items taken before the error go back to the queue."""
        self._log_redis_down(exc)
        self._redis_failing = True
        time.sleep(min(5.0, 0.1 * 2 ** min(self._redis_errors, 6)))
        self._redis_errors += 1
        try:
            for queue in self.queues:
                queue.release(self.worker_id)
                queue.register(self.worker_id, mq_settings.MQ_LEASE_SECONDS)
            self._redis_errors = 0
        except RedisError:
            pass

    def _log_redis_down(self, exc):
        if not self._redis_failing:
            logger.error("event=redis_down worker=%s error=%r", self.worker_id, str(exc))
        self._redis_failing = True

    def _shutdown(self):
        self.heartbeat.stop()
        self.heartbeat.tell_stopping()
        try:
            for queue in self.queues:
                queue.release(self.worker_id)
            presence.withdraw(self.client, "worker", self.worker_id)
        except RedisError as exc:
            logger.warning("event=release_failed worker=%s error=%r (the lease will expire)", self.worker_id, str(exc))
        close_old_connections()
        logger.info("event=worker_stop worker=%s processed=%d failed=%d", self.worker_id, self.processed, self.failed)


def utcnow():
    return datetime.now(dt_timezone.utc)


def _traceback(exc):
    return "".join(traceback.format_exception(exc))
