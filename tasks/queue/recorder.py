"""Writes what workers did into the history table, a batch at a time.

The worker hands outcomes here and never touches the ORM itself. The hot
path (enqueue's insert, claim, finish) is raw SQL here; every other change of
a row is a TaskRecordQuerySet method, which this module calls. Claiming a
batch is one UPDATE ... RETURNING and finishing one UPDATE (PostgreSQL) or one
executemany (SQLite), so a deep queue costs two statements per batch, not per
task. Every write is guarded by the row's status, which is what makes a
redelivered task's outcome count once: a finished row is never claimed or
finished again.
"""

import json
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from datetime import timezone as dt_timezone

from django.db import DatabaseError, connections, router, transaction
from django.utils import timezone

from tasks.dbretry import CONNECTION_ERRORS, REFUSALS
from tasks.queue.envelope import now_iso
from tasks.models import OPEN_STATUSES, TaskRecord, TaskStatus
from tasks.storable import printable

logger = logging.getLogger(__name__)

# How often SQLite's write-ahead log is checkpointed (see Recorder.checkpoint).
CHECKPOINT_SECONDS = 1.0


@dataclass
class Outcome:
    id: str
    status: str
    started_at: datetime
    finished_at: datetime
    result: object = None
    error: dict | None = field(default=None)  # {"exception", "traceback", "attempt", "worker", "at"}
    retry_at: datetime | None = None  # when a failed run is retried: the row's new run_after


class Recorder:
    def __init__(self, using=None):
        self.using = using or router.db_for_write(TaskRecord)
        self.table = TaskRecord._meta.db_table
        self.is_sqlite = connections[self.using].vendor == "sqlite"
        self._next_checkpoint = time.monotonic() + CHECKPOINT_SECONDS

    @property
    def connection(self):
        return connections[self.using]

    def _lazy_commit(self):
        """A FROM clause that turns synchronous_commit off for the statement's
        own transaction, on PostgreSQL; "" elsewhere, or inside a transaction
        the statement does not own (the caller's commit is not ours to
        weaken).

        Such a commit returns before its WAL reaches the disk (a few ms of
        fsync on these machines, the largest part of a claim). It is just as
        visible to every other session at once, and survives the death of
        the client; only a crash of the PostgreSQL server or its machine
        within about three wal_writer_delay (600 ms by default) loses it.
        A join with a one-row subquery, not SET LOCAL: that would cost
        BEGIN, SET and COMMIT round trips around a one-statement claim.
        """
        connection = self.connection
        if connection.vendor != "postgresql" or not connection.get_autocommit():
            return ""
        return "FROM (SELECT set_config('synchronous_commit', 'off', true)) AS lazy_commit "

    def _json_param(self):
        return "CAST(%s AS jsonb)" if self.connection.vendor == "postgresql" else "%s"

    def _unindexed(self, column):
        # Without statistics SQLite's planner picks an index on status for
        # "status IN (...)" and scans every open row, a cost that grows with
        # the queue; the unary + keeps it on the primary key. PostgreSQL does
        # the same when its statistics are stale: on a table of ten million
        # finished rows, autovacuum re-analyzes only after a million changes,
        # so a backlog of thousands still looks empty, the partial index of
        # open rows (task_unique_while_open) wins, and every claim or finish
        # read the whole backlog (80x slower at 5,000 open rows, drain at
        # 0.13x an empty table's). Text has no unary + there; || '' does it.
        return f"+{column}" if self.is_sqlite else f"({column} || '')"

    def _id_among(self, column, ids):
        """(SQL, parameters) for "``column`` is one of ``ids``".

        On PostgreSQL one array parameter, so the statement's text is the same
        for every batch: psycopg parses a statement's placeholders in Python,
        and caches the parse only for statements of at most 50 parameters. A
        batch of 200 ids in IN (%s, ...) was parsed anew each time, a fifth of
        a PostgreSQL drain's time.
        """
        if self.is_sqlite:
            return f"{column} IN ({', '.join(['%s'] * len(ids))})", list(ids)
        return f"{column} = ANY(%s)", [list(ids)]

    def _dt(self, value):
        if self.is_sqlite:
            # What adapt_datetimefield_value does, without its settings lookups
            # (a visible cost at thousands of rows a second).
            return str(value.astimezone(dt_timezone.utc).replace(tzinfo=None))
        return self.connection.ops.adapt_datetimefield_value(value)

    def insert_enqueued(self, envelopes, backend_alias, now, run_after=None):
        """The rows of newly enqueued tasks (READY): one statement, no ORM
        objects, as this is on every producer's path."""
        sql = self._insert_sql()
        rows = self._enqueued_rows(envelopes, backend_alias, now, run_after)
        with self.connection.cursor() as cursor:
            if len(rows) == 1:
                cursor.execute(sql, rows[0])
            else:
                with transaction.atomic(using=self.using):
                    cursor.executemany(sql, rows)

    def _insert_sql(self, unique=False):
        json_param = self._json_param()
        key_column, key_param = (", unique_key", ", %s") if unique else ("", "")
        return (
            f"INSERT INTO {self.table} (id, task_path, queue, backend, args, kwargs, status, attempts, worker, "
            f"enqueued_at, run_after, error, errors, priority{key_column}) VALUES (%s, %s, %s, %s, {json_param}, {json_param}, %s, 0, '', "
            f"%s, %s, '', {json_param}, %s{key_param})"
        )

    def _enqueued_rows(self, envelopes, backend_alias, now, run_after):
        enqueued_at, due = self._dt(now), self._dt(run_after) if run_after else None
        return [
            (e.id, e.task, e.queue, backend_alias, json.dumps(e.args), json.dumps(e.kwargs), TaskStatus.READY, enqueued_at, due, "[]", e.priority)
            for e in envelopes
        ]

    def insert_unique(self, envelope, backend_alias, now, run_after, unique_key):
        """insert_enqueued for a unique task: True if the row was written,
        False if an open row holds ``unique_key`` already.

        ON CONFLICT DO NOTHING against the partial unique index on open rows'
        keys: a concurrent inserter of the same key waits for the first one's
        transaction, then inserts nothing.
        """
        sql = self._insert_sql(unique=True)
        [row] = self._enqueued_rows([envelope], backend_alias, now, run_after)
        with self.connection.cursor() as cursor:
            cursor.execute(sql + " ON CONFLICT DO NOTHING", (*row, unique_key))
            return cursor.rowcount == 1

    def insert_enqueued_once(self, envelopes, backend_alias, now, run_after=None, unique_keys=None):
        """insert_enqueued for ids chosen by the caller: a row whose id exists
        already is left alone, not an error. Returns the ids it inserted.

        ON CONFLICT DO NOTHING (SQLite and PostgreSQL alike): a second
        inserter of the same id waits for the first one's transaction and
        then inserts nothing, so exactly one caller learns it owns the id.
        With ``unique_keys`` (one per envelope: a unique task), a row is not
        written either while an open row holds its key, as insert_unique.
        """
        keys: list[tuple] = [()] * len(envelopes)
        sql = self._insert_sql() + " ON CONFLICT (id) DO NOTHING"
        if unique_keys is not None:
            sql, keys = self._insert_sql(unique=True) + " ON CONFLICT DO NOTHING", [(key,) for key in unique_keys]
        inserted = []
        with self.connection.cursor() as cursor:
            for envelope, row, key in zip(envelopes, self._enqueued_rows(envelopes, backend_alias, now, run_after), keys):
                cursor.execute(sql, (*row, *key))
                if cursor.rowcount == 1:
                    inserted.append(envelope.id)
        return inserted

    @property
    def rows(self):
        return TaskRecord.objects.using(self.using)

    def delete(self, ids):
        self.rows.filter(id__in=ids).delete()

    def claim(self, ids, worker_id, now=None):
        """Mark open rows RUNNING and count the attempt; return {id: attempts}.

        Ids with no row, or with a finished one, are left out.

        On PostgreSQL this commit does not wait for the disk (see
        _lazy_commit): it is the one commit between a task's arrival and
        its start that may be lost. A claim lost in a PostgreSQL crash
        leaves the row as it was (READY, or RUNNING from an earlier
        attempt) while the item sits in this worker's processing list:
        the sweeper leaves it alone (Redis holds its id), the outcome's
        UPDATE accepts any open row, and if this worker dies too, recovery
        puts the item back. What is lost is that attempt's count.
        """
        if not ids:
            return {}
        now = now or timezone.now()
        among, id_params = self._id_among("id", ids)
        sql = (
            f"UPDATE {self.table} SET status = %s, attempts = attempts + 1, worker = %s, started_at = %s "
            f"{self._lazy_commit()}"
            f"WHERE {among} AND {self._unindexed('status')} IN (%s, %s) RETURNING id, attempts"
        )
        params = [TaskStatus.RUNNING, worker_id, self._dt(now), *id_params, *OPEN_STATUSES]
        with self.connection.cursor() as cursor:
            cursor.execute(sql, params)
            return dict(cursor.fetchall())

    def given_up_reason(self, task_id):
        """Why a task that ended FAILED or DEAD was given up (its last
        error's exception: the dead-letter entry's reason), or None."""
        row = self.rows.filter(id=task_id, status__in=(TaskStatus.FAILED, TaskStatus.DEAD)).values_list("errors", "status").first()
        if row is None:
            return None
        errors, status = row
        return errors[-1].get("exception", status) if errors else status

    def cancel_requested_among(self, ids):
        """The ids among ``ids`` asked to stop (see TaskRecordQuerySet.cancel)."""
        return self.rows.cancel_requested_among(ids) if ids else set()

    def record_progress(self, task_id, progress):
        """A running task's latest progress report."""
        self.rows.record_progress(task_id, progress)

    def checkpoint(self):
        """Fold SQLite's write-ahead log into the database, without blocking.

        Otherwise SQLite checkpoints inside whichever commit grows the log past
        1000 pages (a producer's INSERT, a worker's claim), and that commit
        pays the fsync: the worst latencies came from there. Done often from
        the worker's heartbeat thread, the log never grows that far.
        """
        if self.is_sqlite:
            with self.connection.cursor() as cursor:
                cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def checkpoint_if_due(self):
        """checkpoint() once a CHECKPOINT_SECONDS; for a thread that calls
        often and has no database work of its own (the worker's heartbeat).

        A database error is left for the main loop to report: it meets the
        same outage at its next write.
        """
        if not self.is_sqlite or time.monotonic() < self._next_checkpoint:
            return
        self._next_checkpoint = time.monotonic() + CHECKPOINT_SECONDS
        try:
            self.checkpoint()
        except DatabaseError:
            pass

    def unclaim(self, ids, worker_id):
        """Undo the claim of tasks this worker did not get to run."""
        self.rows.unclaim(ids, worker_id)

    def reopen_running(self, worker_id):
        """At a worker's start: its id's RUNNING rows go back to READY.

        They belong to a previous life of the worker, which was killed; the
        attempt it started stays counted.
        """
        return self.rows.reopen_running(worker_id)

    def create_missing(self, envelopes, now=None):
        """Rows for envelopes pushed by someone who wrote none (ignored if present)."""
        now = now or timezone.now()
        self.rows.bulk_create(
            [
                TaskRecord(
                    id=e.id,
                    task_path=e.task,
                    queue=e.queue,
                    args=e.args,
                    kwargs=e.kwargs,
                    priority=e.priority,
                    enqueued_at=_parse_time(e.enqueued_at) or now,
                )
                for e in envelopes
            ],
            ignore_conflicts=True,
        )

    def finish(self, outcomes):
        """Record successful runs: one statement on PostgreSQL, one
        executemany in a transaction on SQLite.

        Unlike the claim's, this commit waits for the disk: the worker
        acknowledges the items in Redis right after it, and an outcome lost
        behind that acknowledgement would leave an open row Redis no longer
        holds. RUNNING, with its worker alive, the sweeper could not tell it
        from a task that worker is still running after Redis lost its data,
        and would leave it open as long as the worker lives.
        """
        self._unless_refused(self._finish, outcomes)

    def _finish(self, outcomes):
        if self.connection.vendor == "postgresql":
            return self._finish_in_one_statement(outcomes)
        sql = (
            # A task asked to stop while it ran ends CANCELLED, whatever it returned.
            f"UPDATE {self.table} SET status = CASE WHEN cancel_requested THEN '{TaskStatus.CANCELLED}' ELSE %s END, "
            f"started_at = %s, finished_at = %s, "
            f"result = {self._json_param()} WHERE id = %s AND {self._unindexed('status')} IN (%s, %s)"
        )
        rows = [
            (o.status, self._dt(o.started_at), self._dt(o.finished_at), json.dumps(o.result), o.id, *OPEN_STATUSES)
            for o in outcomes
        ]
        with transaction.atomic(using=self.using), self.connection.cursor() as cursor:
            cursor.executemany(sql, rows)

    def _finish_in_one_statement(self, outcomes):
        """UPDATE ... FROM jsonb_to_recordset(...): the batch's outcomes in one
        round trip and one implicit transaction, where executemany costs
        BEGIN, the statements and COMMIT (a batch on PostgreSQL is often a few
        tasks: its commit's fsync weighs on the batch size the worker picks).

        The outcomes travel as one JSON parameter, so the statement's text is
        the same for every batch and psycopg parses it once (see _id_among):
        VALUES with five placeholders a task was parsed anew each batch."""
        sql = (
            f"UPDATE {self.table} AS task SET status = CASE WHEN task.cancel_requested THEN '{TaskStatus.CANCELLED}' "
            "ELSE outcome.status END, started_at = outcome.started_at, "
            "finished_at = outcome.finished_at, result = outcome.result "
            # LIMIT tells the planner the batch's size (it assumes 100 rows
            # of a function), so it picks the primary key's index.
            "FROM (SELECT * FROM jsonb_to_recordset(CAST(%s AS jsonb)) "
            "AS batch (id text, status text, started_at timestamptz, finished_at timestamptz, result jsonb) LIMIT %s) AS outcome "
            f"WHERE task.id = outcome.id AND {self._unindexed('task.status')} IN (%s, %s)"
        )
        batch = json.dumps([
            {"id": o.id, "status": o.status, "started_at": o.started_at.isoformat(),
             "finished_at": o.finished_at.isoformat(), "result": o.result}
            for o in outcomes
        ])
        # Alone, the statement is its own transaction. Inside someone's
        # transaction, a savepoint: a refused batch must not abort it, since
        # _unless_refused goes on to record the outcomes one by one.
        nested = transaction.atomic(using=self.using) if self.connection.in_atomic_block else nullcontext()
        with nested, self.connection.cursor() as cursor:
            cursor.execute(sql, [batch, len(outcomes), *OPEN_STATUSES])

    def fail(self, outcomes):
        """Record failed runs (the rare path), keeping every attempt's error."""
        self._unless_refused(self._fail, outcomes)

    def _fail(self, outcomes):
        with transaction.atomic(using=self.using):
            for outcome in outcomes:
                self.rows.record_failure(outcome.id, outcome.status, outcome.error, outcome.started_at, outcome.finished_at, outcome.retry_at)

    def _unless_refused(self, write, outcomes):
        """write(outcomes); if the database refuses the batch, each outcome on
        its own, and one refused even alone is recorded failed with the reason.

        The worker checks results and errors before they get here; this is for
        whatever those checks miss. One outcome must not cost its batch their
        records, nor end the worker (the batch would come back to end the
        next one). A lost connection is raised, for the caller to wait out.
        """
        if not outcomes:
            return
        try:
            return write(outcomes)
        except CONNECTION_ERRORS:
            raise
        except REFUSALS:
            pass  # find which one
        for outcome in outcomes:
            try:
                write([outcome])
            except CONNECTION_ERRORS:
                raise
            except REFUSALS as exc:
                self._record_refused(outcome, exc)

    def _record_refused(self, outcome, exc):
        reason = printable(f"the outcome could not be recorded: {type(exc).__name__}: {exc}".strip())
        logger.error("event=record_refused task_id=%s status=%s error=%r", outcome.id, outcome.status, reason)
        # A refused success is a failure; a failure keeps its course (READY
        # when a retry is on its way).
        status = TaskStatus.FAILED if outcome.status == TaskStatus.SUCCESSFUL else outcome.status
        try:
            self.rows.record_refusal(outcome.id, status, reason, outcome.started_at, outcome.finished_at, now_iso())
        except CONNECTION_ERRORS:
            raise
        except REFUSALS as again:
            # Left open: the sweeper resends it once this worker is gone.
            logger.error("event=record_lost task_id=%s error=%r", outcome.id, str(again))

    def record_bad(self, bad_messages, queue_name, worker_id, now=None):
        """History rows for messages that could not be run at all (DEAD)."""
        now = now or timezone.now()
        self.rows.bulk_create(
            [
                TaskRecord(
                    id=bad.id,
                    task_path=bad.task or "(unreadable message)",
                    queue=queue_name,
                    status=TaskStatus.DEAD,
                    worker=worker_id,
                    enqueued_at=now,
                    finished_at=now,
                    error=bad.reason,
                    errors=[{"exception": "mqsite.BadMessage", "traceback": bad.reason, "worker": worker_id}],
                )
                for bad in bad_messages
            ],
            ignore_conflicts=True,
        )
        # A message for a row that exists (say, its task was removed from the
        # code since) must still end that row, or the sweeper would resend it.
        for bad in bad_messages:
            self.rows.give_up([bad.id], bad.reason, now, worker=worker_id)


def _parse_time(value):
    try:
        parsed = datetime.fromisoformat(value)
        parsed = parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed, dt_timezone.utc)
        # Converted here, where an overflow can be caught: a message's
        # "0001-01-01T00:00:00+14:00" is before year 1 in UTC, and the
        # OverflowError raised while saving the row ended the worker.
        return parsed.astimezone(dt_timezone.utc)
    except (TypeError, ValueError, OverflowError):
        return None
