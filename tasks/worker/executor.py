"""Runs one batch of taken items, from classification to acknowledgement.

A batch costs the database two statements however large it is (one
UPDATE ... RETURNING claims it, one executemany records its successes) and
Redis one script (ACK). Between them each task runs, and its end is decided
by one method per verdict: succeeded, retry, failed or dead, each returning
the Verdict the acknowledgement is built from. Outcomes are recorded before
the items leave the processing list: a worker killed at any point loses
nothing.

Before a task runs, the executor makes sure the item is still this worker's
(see _owns): a worker stalled past its lease may have lost its batch.

On PostgreSQL the serial worker records and acknowledges a batch on a thread
of its own while it runs the next (tasks.worker.record_behind).
"""

import logging
import time
import traceback
from dataclasses import replace
from datetime import datetime
from datetime import timezone as dt_timezone

from django.db import close_old_connections
from redis.exceptions import RedisError

from tasks import registry
from tasks.compat import TaskContext
from tasks.conf import mq_settings
from tasks.exceptions import ForcedStop
from tasks.logfmt import task_context
from tasks.models import TaskStatus
from tasks.queue.backend import context_result, finished_result, new_task_id, to_json
from tasks.queue.envelope import BadMessage, DeadLetter, Envelope, RawPayload, decode, now_iso
from tasks.queue.recorder import Outcome
from tasks.signals import listened, task_finished, task_started
from tasks.storable import printable, unstorable
from tasks.worker.context import CHECK_SECONDS, TaskControl, WorkerTaskContext
from tasks.worker.faults import fault_point
from tasks.worker.heartbeat import lease_clock
from tasks.worker.invoke import call
from tasks.worker.outcomes import CANCELLED, DEAD, FAILED, RETRIED, SUCCEEDED, Ack, Verdict, retry_delay
from tasks.worker.record_behind import RecordBehind
from tasks.worker.timelimit import time_limit

logger = logging.getLogger(__name__)

# How long a batch runs before the executor asks which of its remaining tasks
# were cancelled meanwhile.
CANCEL_CHECK_SECONDS = CHECK_SECONDS


class BatchExecutor:
    """Runs batches for one worker, and counts what it ran.

    ``db(fn, *args)`` retries a database call until the database answers;
    ``clock()`` is the unix time retries are scheduled from; ``should_stop()``
    says the worker was asked to stop, so the rest of a batch is left unrun.
    """

    def __init__(self, worker_id, recorder, heartbeat, db, clock, should_stop):
        self.worker_id = worker_id
        self.recorder = recorder
        self.heartbeat = heartbeat
        self.db = db
        self.clock = clock
        self.should_stop = should_stop
        self.processed = 0
        self.failed_count = 0
        # (envelope, time.monotonic() start, time limit) of the running task,
        # read by the heartbeat thread: replaced whole, never changed in place.
        self.current = None
        self._batch_options = {}
        self._epoch = 0
        self._connections_checked = float("-inf")  # time.monotonic() of the last close_old_connections()
        self._send_started = self._send_finished = False
        self._behind: RecordBehind | None = None  # started by the first batch that may use it

    def execute(self, queue, items, epoch):
        """Run a batch taken from ``queue`` while the heartbeat was in ``epoch``;
        return how many tasks ran."""
        runnable, attempts, ack = self.begin_batch(queue, items, epoch)

        unrun, owned = [], True
        cancelled, check_cancels_at = set(), time.monotonic() + CANCEL_CHECK_SECONDS
        for index, (raw, envelope) in enumerate(runnable):
            attempt = attempts.get(envelope.id)
            stopping = self.should_stop()
            if attempt is not None and owned and not stopping:
                if time.monotonic() >= check_cancels_at:
                    # A batch that has run a while: ask once for cancels of what is
                    # left of it, never per task (a fast batch asks nothing).
                    rest = [e.id for _, e in runnable[index:] if e.id in attempts]
                    cancelled = self.db(self.recorder.cancel_requested_among, rest)
                    check_cancels_at = time.monotonic() + CANCEL_CHECK_SECONDS
                # Once one item is gone, all are: a recovery takes the whole list.
                # Asked last before the run: the query above may have waited out
                # the lease (a host cut off from the database and Redis alike).
                owned = self._owns(queue, raw)
            if stopping or not owned:
                if attempt is not None:
                    unrun.append(envelope.id)
                continue
            if attempt is None:  # finished already: a duplicate delivery
                self.finished_duplicate(ack, raw, envelope)
                continue
            if envelope.id in cancelled:
                verdict = self.cancelled(envelope)
            else:
                verdict = self._run_to_verdict(raw, envelope, attempt)
            if self._send_finished:
                self.signal_finished(envelope, attempt, verdict, self.db(self.recorder.cancel_requested_among, [envelope.id]))
            ack.add(raw, verdict, envelope.enqueued_at)
            self._count_and_log(queue, envelope, attempt, verdict)

        if len(items) > 1 and self.recorder.connection.vendor == "postgresql":
            if self._behind is None:
                self._behind = RecordBehind()
            self._behind.submit([envelope.id for _, envelope in runnable], self.acknowledge, queue, ack, unrun)
        else:
            try:
                self.settle()
            finally:
                # Even when the batch behind met an error: these tasks ran,
                # and their items may go back to the queue next.
                self.acknowledge(queue, ack, unrun)
        return len(runnable) - len(unrun)

    def settle(self):
        """Wait until the batch being recorded behind (if any) is recorded and
        acknowledged; raises what its thread met."""
        if self._behind is not None:
            self._behind.wait()

    def close(self):
        """settle(), and end the thread that records behind."""
        if self._behind is not None:
            self._behind.close()
            self._behind = None  # kept when close() is interrupted: see recording_behind

    @property
    def recording_behind(self):
        """Whether a batch handed to the record thread may still be committing."""
        return self._behind is not None and self._behind.busy

    def begin_batch(self, queue, items, epoch):
        """What every batch does before its tasks, serial or in slots: sort
        out bad messages (their dead letters go on the returned Ack) and claim
        the rest in one statement. Returns (runnable (raw, envelope) pairs,
        {id: attempt} of the claimed ones, the batch's Ack)."""
        fault_point("after_take")
        # As Django does around a request: drop a connection past CONN_MAX_AGE
        # or broken by the previous batch, before this batch's statements.
        # At most once a second: with CONN_HEALTH_CHECKS each call costs the
        # next statement a SELECT 1, a round trip on PostgreSQL.
        now = time.monotonic()
        if now - self._connections_checked >= 1.0:
            close_old_connections()
            self._connections_checked = now
        self._batch_options = {}
        self._epoch = epoch
        # Asked once a batch: a TaskResult per signal per task only when someone listens.
        self._send_started, self._send_finished = listened(task_started), listened(task_finished)
        runnable, bad = self._classify(queue, items)
        if self._behind is not None:
            # A redelivered item of the batch still being recorded: its row is
            # RUNNING, and a claim now would run it again.
            self._behind.wait([envelope.id for _, envelope in runnable])
        attempts = self._claim([envelope for _, envelope in runnable])
        ack = Ack()
        self._reject(queue, bad, ack)
        return runnable, attempts, ack

    def signal_finished(self, envelope, attempt, verdict, cancelled):
        """task_finished, if the task finished for good. One asked to stop
        while it ran ends CANCELLED whatever it returned or raised (its
        record's statement decides, and a retry's item finds the row closed):
        ``cancelled``, the ids asked to stop, comes from a query the callers
        make only when a receiver listens."""
        record = verdict.record
        if envelope.id in cancelled:
            record = replace(record, status=TaskStatus.CANCELLED, result=None)
        elif verdict.retry is not None:
            return
        task = registry.get(envelope.task)
        self._signal(task_finished, task, finished_result(task, envelope, attempt, self.worker_id, record))

    def finished_duplicate(self, ack, raw, envelope):
        """Acknowledge, unrun, a delivery of a task that finished already.
        Its worker may have died between recording it and acknowledging it:
        one that ended FAILED or DEAD then gets the dead-letter entry that
        acknowledgement would have carried (a query, on this rare path only)."""
        ack.done.append(raw)
        ack.finished_ids.append(envelope.id)
        reason = self.db(self.recorder.given_up_reason, envelope.id)
        if reason is not None:
            ack.dead.append(DeadLetter.of(raw, reason, envelope.id, envelope.task, mq_settings.MQ_MAX_MESSAGE_BYTES))

    def acknowledge(self, queue, ack, unrun=()):
        """Record the outcomes of ``ack``, then take its items off the
        processing list: one Redis round trip."""
        self.record_outcomes(ack, unrun)
        fault_point("after_record")
        self.send_ack(queue, ack)

    def record_outcomes(self, ack, unrun=()):
        self.db(self.recorder.finish, ack.successes)
        if ack.failures:
            self.db(self.recorder.fail, ack.failures)
        if unrun:
            self.db(self.recorder.unclaim, unrun, self.worker_id)

    def send_ack(self, queue, ack):
        """Take the recorded items of ``ack`` off the processing list."""
        queue.ack(self.worker_id, **ack_arguments(ack))

    # --- before running ------------------------------------------------------
    def _classify(self, queue, items):
        """(runnable, bad): pairs of (raw item, Envelope) and of (raw item,
        BadMessage with an id, or None for a second delivery in the batch)."""
        runnable, replacements, seen = [], [], set()
        bad: list[tuple[bytes, BadMessage | None]] = []
        for raw in items:
            message = decode(raw, queue.name, mq_settings.MQ_MAX_MESSAGE_BYTES)
            if isinstance(message, RawPayload):
                message = self._wrap_raw(message, queue.name)
                if isinstance(message, Envelope):
                    replacements.append((raw, message))
                    raw = message.encode()
            elif isinstance(message, Envelope):
                if registry.get(message.task) is None:
                    reason = f"unknown task {message.task!r}: not registered with @task"
                    message = BadMessage(reason, id=message.id, task=message.task)
            elif not message.id:
                message = replace(message, id=new_task_id())
            if isinstance(message, BadMessage):
                bad.append((raw, message))
            elif message.id in seen:
                bad.append((raw, None))  # the same delivery twice in one batch: run it once
            else:
                seen.add(message.id)
                runnable.append((raw, message))
        if replacements:
            queue.replace_in_flight(self.worker_id, replacements)
        return runnable, bad

    def _wrap_raw(self, payload, queue_name):
        """An Envelope for the queue's raw-message task, or a BadMessage."""
        raw_task = mq_settings.MQ_RAW_MESSAGE_TASKS.get(queue_name)
        if not raw_task or registry.get(raw_task) is None:
            return BadMessage(f"not an mqsite envelope, and queue {queue_name!r} has no raw-message task", id=new_task_id())
        return Envelope(id=new_task_id(), task=raw_task, queue=queue_name, args=[payload.text], enqueued_at=now_iso())

    def _claim(self, envelopes):
        if not envelopes:
            return {}
        ids = [envelope.id for envelope in envelopes]
        attempts = self.db(self.recorder.claim, ids, self.worker_id)
        missing = [envelope for envelope in envelopes if envelope.id not in attempts]
        if missing:
            # Pushed by a producer that wrote no row (the sweeper's resend of a
            # finished task is told apart by its row being final already).
            self.db(self.recorder.create_missing, missing)
            attempts.update(self.db(self.recorder.claim, [e.id for e in missing], self.worker_id))
        return attempts

    def _reject(self, queue, bad, ack):
        """Dead-letter what cannot run, with a DEAD history row."""
        messages = []
        for raw, message in bad:
            ack.done.append(raw)
            if message is not None:
                ack.dead.append(DeadLetter.of(raw, message.reason, message.id, message.task, mq_settings.MQ_MAX_MESSAGE_BYTES))
                ack.finished_ids.append(message.id)
                messages.append(message)
        if messages:
            self.record_bad(queue, messages)

    def record_bad(self, queue, messages):
        """History rows (DEAD) for messages that cannot run, dead-lettered already
        or about to be."""
        messages = [m if m.id else replace(m, id=new_task_id()) for m in messages]
        for message in messages:
            logger.warning("event=bad_message queue=%s worker=%s task_id=%s reason=%r", queue.name, self.worker_id, message.id, message.reason)
        self.db(self.recorder.record_bad, messages, queue.name, self.worker_id)

    def _owns(self, queue, raw, epoch=None):
        """Whether a taken item is still this worker's to run.

        A worker stalled past its lease (stopped, or its heartbeat starved by
        a task holding the GIL) may have lost its batch: another worker took
        it back, and may have run it already. While the lease has been held
        without a break since the take, the answer is yes without a round
        trip; otherwise Redis says whether the item is still in this worker's
        processing list, and renews the lease if so.
        """
        heartbeat = self.heartbeat
        # ``epoch``: the heartbeat's epoch when the item was taken, for an
        # item kept from an earlier take (the slot pool's reserve).
        if heartbeat.holds(self._epoch if epoch is None else epoch):
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

    def _options(self, task_path):
        """(max_attempts, time_limit) of a task, read once per batch: settings
        lookups are a visible share of a no-op task's cost."""
        options = self._batch_options.get(task_path)
        if options is None:
            options = (mq_settings.task_option(task_path, "max_attempts"), mq_settings.task_option(task_path, "time_limit"))
            self._batch_options[task_path] = options
        return options

    # --- running -------------------------------------------------------------
    def _run_to_verdict(self, raw, envelope, attempt, guard=None):
        """Run one task and decide its end. ``guard(task, limit)``: the time
        limit of a task run in a slot thread (--concurrency), else SIGALRM's."""
        max_attempts, limit = self._options(envelope.task)
        if attempt > max_attempts:
            return self.dead(raw, envelope, attempt)
        started_at = utcnow()
        if self._send_started:
            task = registry.get(envelope.task)
            self._signal(task_started, task, context_result(task, envelope, attempt, self.worker_id, started_at))
        result, error = self._run(envelope, attempt, started_at, limit, guard)
        return self.verdict(raw, envelope, attempt, max_attempts, started_at, result, error)

    def verdict(self, raw, envelope, attempt, max_attempts, started_at, result, error):
        """The end of a run that gave ``result`` or ``error``."""
        finished_at = utcnow()
        if error is None:
            return self.succeeded(envelope, started_at, finished_at, result)
        if attempt < max_attempts:
            return self.retry(raw, envelope, attempt, started_at, finished_at, error)
        return self.failed(raw, envelope, started_at, finished_at, error)

    def _run(self, envelope, attempt, started_at, limit, guard=None):
        """(result, None) or (None, error entry) of one run of the task."""
        task = registry.get(envelope.task)
        assert task is not None  # classify() turned unknown tasks into bad messages
        if guard is None:
            self.current = (envelope, time.monotonic(), limit)
            limiter = time_limit(limit)
        else:
            limiter = guard(envelope.task, limit)
        control = None
        try:
            with task_context(envelope.id, envelope.task), limiter:
                args = envelope.args
                if task.takes_context:
                    control = TaskControl(envelope.id, self.recorder)
                    args = [self.context(task, envelope, attempt, started_at, control), *args]
                value = call(task, args, envelope.kwargs, limit)
                result = self.storable(value)
            return result, None
        except ForcedStop:
            raise  # the operator's second signal ends the worker, not the task
        except BaseException as exc:
            # Whatever task code raises is its failure: sys.exit(), a
            # KeyboardInterrupt (our SIGINT handler raises none), the time
            # limit's exception. Let through, they ended the whole worker.
            return None, self.error_of(exc, attempt)
        finally:
            if guard is None:
                self.current = None
            if control is not None:
                control.flush()  # the last progress, however recent the previous write
            fault_point("after_run")

    def context(self, task, envelope, attempt, started_at, control) -> TaskContext:
        running = context_result(task, envelope, attempt, self.worker_id, started_at)
        return WorkerTaskContext(task_result=running, control=control)

    @staticmethod
    def storable(value):
        """A task's return value as the history keeps it; ValueError if it cannot."""
        result = to_json(value)
        problem = unstorable(result)
        if problem:  # fail the run here, rather than the worker at the database write
            raise ValueError(f"the task's return value cannot be recorded: {problem}")
        return result

    def error_of(self, exc, attempt):
        return self._error(f"{type(exc).__module__}.{type(exc).__qualname__}", _traceback(exc), attempt)

    def _signal(self, signal, task, task_result):
        """Send a Tasks API signal; a receiver's exception is logged, and
        changes neither the task's outcome nor the rest of the batch."""
        for receiver, response in signal.send_robust(type(task.get_backend()), task_result=task_result):
            if isinstance(response, Exception):
                logger.error("event=signal_receiver_failed receiver=%s task_id=%s error=%r", getattr(receiver, "__qualname__", receiver), task_result.id, str(response))

    # --- one method per verdict ------------------------------------------------
    def succeeded(self, envelope, started_at, finished_at, result):
        record = Outcome(envelope.id, TaskStatus.SUCCESSFUL, started_at, finished_at, result=result)
        return Verdict(SUCCEEDED, record, _seconds(started_at, finished_at))

    def retry(self, raw, envelope, attempt, started_at, finished_at, error):
        """Failed with attempts left: the next one waits in the delayed set,
        and the row is READY again, keeping this attempt's error."""
        delay = retry_delay(attempt)
        due_at = self.clock() + delay
        record = Outcome(
            envelope.id, TaskStatus.READY, started_at, finished_at, error=error,
            retry_at=datetime.fromtimestamp(due_at, dt_timezone.utc),
        )
        due = (raw, envelope.next_attempt(), due_at)
        return Verdict(RETRIED, record, _seconds(started_at, finished_at), retry=due, retry_in=delay)

    def failed(self, raw, envelope, started_at, finished_at, error):
        """Failed its last attempt: dead-lettered, the row FAILED."""
        record = Outcome(envelope.id, TaskStatus.FAILED, started_at, finished_at, error=error)
        dead_letter = DeadLetter.of(raw, error["exception"], envelope.id, envelope.task, mq_settings.MQ_MAX_MESSAGE_BYTES)
        return Verdict(FAILED, record, _seconds(started_at, finished_at), dead_letter=dead_letter)

    def dead(self, raw, envelope, attempt):
        """Not run again: its earlier attempts never finished, so it may be
        what keeps killing workers."""
        now = utcnow()
        reason = f"gave up after {attempt - 1} attempts; the last ones never finished (the worker was lost)"
        error = self._error("mqsite.WorkerLost", reason, attempt)
        record = Outcome(envelope.id, TaskStatus.DEAD, now, now, error=error)
        dead_letter = DeadLetter.of(raw, error["exception"], envelope.id, envelope.task, mq_settings.MQ_MAX_MESSAGE_BYTES)
        return Verdict(DEAD, record, 0.0, dead_letter=dead_letter)

    def cancelled(self, envelope):
        """Cancelled after the worker took it, before it started: not run."""
        now = utcnow()
        return Verdict(CANCELLED, Outcome(envelope.id, TaskStatus.CANCELLED, now, now), 0.0)

    def _count_and_log(self, queue, envelope, attempt, verdict):
        self.processed += 1
        if verdict.name == SUCCEEDED:
            log, retry = logger.info, ""
        else:
            log, retry = logger.warning, "" if verdict.retry_in is None else f" retry_in={verdict.retry_in:.2f}"
            if verdict.name not in (RETRIED, CANCELLED):
                self.failed_count += 1
        log(
            "event=task_done task_id=%s task=%s queue=%s worker=%s attempt=%d duration=%.4f outcome=%s%s",
            envelope.id,
            envelope.task,
            queue.name,
            self.worker_id,
            attempt,
            verdict.duration,
            verdict.name,
            retry,
        )

    # --- what the history keeps ---------------------------------------------------
    def _error(self, exception, trace, attempt):
        # printable: an exception's message, even its class's module name, may
        # carry NUL or lone surrogates, which the history row cannot store.
        return {"exception": printable(exception), "traceback": printable(trace), "attempt": attempt, "worker": self.worker_id, "at": now_iso()}


def ack_arguments(ack):
    """ReliableQueue.ack()'s keyword arguments for an Ack."""
    return {
        "done": ack.done,
        "finished_ids": ack.finished_ids,
        "retries": ack.retries,
        "dead": ack.dead,
        "dead_max": mq_settings.MQ_DEAD_LETTER_MAX,
        "stats": ack.stats,
        "rates": ack.rates,
        "latencies": ack.latencies,
    }


def utcnow():
    return datetime.now(dt_timezone.utc)


def _seconds(started_at, finished_at):
    return (finished_at - started_at).total_seconds()


def _traceback(exc):
    return "".join(traceback.format_exception(exc))
