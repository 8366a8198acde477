"""History: what was asked of the workers and what came of it.

Models know nothing of Redis. Every query and state change of task rows is
a method of TaskRecordQuerySet, so each rule about a row's life (a finished
row is never reopened by a sweep, a requeue starts a fresh round of
attempts) is written once. Only the worker's hot path (claim, finish) keeps
its raw SQL, in tasks/queue/recorder.py.
"""

from django.db import IntegrityError, connections, models, router, transaction
from django.utils import timezone
from django.utils.translation import ngettext
from django.utils.translation import gettext_lazy as _

from tasks.compat import TaskError, TaskResult, TaskResultStatus
from tasks.exceptions import TaskAlreadyFinished
from tasks.paginator import ESTIMATE_ABOVE, planner_estimate


class TaskStatus(models.TextChoices):
    READY = "READY", _("Ready")
    RUNNING = "RUNNING", _("Running")
    SUCCESSFUL = "SUCCESSFUL", _("Successful")
    FAILED = "FAILED", _("Failed")
    # Never completed: a bad message, an unknown task, or a task that kept
    # killing its workers. Reported as FAILED through the Tasks API.
    DEAD = "DEAD", _("Dead")
    # Cancelled before it ran, or stopped on request while it ran. Reported
    # as FAILED through the Tasks API.
    CANCELLED = "CANCELLED", _("Cancelled")


FINAL_STATUSES = (TaskStatus.SUCCESSFUL, TaskStatus.FAILED, TaskStatus.DEAD, TaskStatus.CANCELLED)
# Read as FAILED through the Tasks API, whose statuses are fixed.
API_FAILED = (TaskStatus.DEAD, TaskStatus.CANCELLED)
OPEN_STATUSES = (TaskStatus.READY, TaskStatus.RUNNING)


REQUEUEABLE = (TaskStatus.FAILED, TaskStatus.DEAD)
# What a requeue resets, and an undone one puts back.
REQUEUE_FIELDS = ("status", "attempts", "enqueued_at", "started_at", "finished_at")


class TaskRecordQuerySet(models.QuerySet["TaskRecord"]):
    def open(self):
        return self.filter(status__in=OPEN_STATUSES)

    def history_counts(self):
        """{status: rows}, every status present, for the figures.

        One count per status, through the index that leads with it; a status
        with more than ESTIMATE_ABOVE rows is given the PostgreSQL planner's
        estimate instead (tasks/paginator.py): counting ten million finished
        rows exactly would read them all on every scrape."""
        counts = {}
        for status in TaskStatus.values:
            rows = self.filter(status=status)
            estimate = planner_estimate(rows)
            counts[status] = estimate if estimate is not None and estimate > ESTIMATE_ABOVE else rows.count()
        return counts

    def search(self, term, task_paths=()):
        """The rows someone typing ``term`` in a search box looks for, each
        kind found through an index, never by reading the whole table: the
        task with that id; else, when ``term`` is part of some of
        ``task_paths`` (the registered tasks), their rows; else the tasks
        whose id starts with it (the primary key's pattern index) or whose
        error contains it, case-insensitively (a trigram index on
        PostgreSQL, migration 0010). The term is one phrase, not split in
        words: its own trigrams narrow the error search down."""
        term = term.strip()
        if not term:
            return self
        if self.filter(id=term).exists():
            return self.filter(id=term)
        paths = [path for path in task_paths if term.lower() in path.lower()]
        if paths:
            return self.filter(task_path__in=paths)
        # error <> '' matches the partial index's condition, so PostgreSQL uses it.
        return self.filter(models.Q(id__startswith=term) | (models.Q(error__icontains=term) & ~models.Q(error="")))

    def database_answers(self):
        """Ask the database the rows live in for a trivial answer (health)."""
        with connections[self.db or router.db_for_read(self.model)].cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()

    # --- the outbox sweeper ------------------------------------------------
    def open_page_after(self, queue_name, cutoff, now, cursor, limit):
        """The next ``limit`` open rows of a queue enqueued before ``cutoff``
        and due by ``now``, in (enqueued_at, id) order after ``cursor`` (an
        (enqueued_at, id) pair, or None for the oldest).

        Only what tells a lost row: the full rows are read for the few resent."""
        rows = self.open().filter(queue=queue_name, enqueued_at__lt=cutoff).exclude(run_after__gt=now)
        if cursor is not None:
            at, task_id = cursor
            # (enqueued_at, id) > cursor, written so that the index on enqueued_at bounds the scan.
            rows = rows.filter(enqueued_at__gte=at).exclude(enqueued_at=at, id__lte=task_id)
        return list(rows.order_by("enqueued_at", "id").values("id", "enqueued_at", "status", "worker")[:limit])

    def open_calls(self, ids):
        """What a resend needs of those rows still open, oldest first."""
        rows = self.open().filter(id__in=ids).order_by("enqueued_at", "id")
        return rows.values("id", "task_path", "args", "kwargs", "enqueued_at", "attempts", "priority")

    def give_up(self, ids, reason, now, **fields):
        """End the open rows among ``ids`` DEAD with ``reason``; finished rows stay."""
        return self.open().filter(id__in=ids).update(status=TaskStatus.DEAD, finished_at=now, error=reason, **fields)

    # --- workers -----------------------------------------------------------
    def unclaim(self, ids, worker_id):
        """Undo the claim of tasks a worker did not get to run: it is stopping,
        or was stalled and lost them. The attempt it counted goes in any case;
        the row goes back to READY only if no other worker claimed it since."""
        mine = models.Q(status=TaskStatus.RUNNING, worker=worker_id)
        return self.filter(id__in=ids).update(
            attempts=models.F("attempts") - 1,
            status=models.Case(
                models.When(mine & models.Q(cancel_requested=True), then=models.Value(TaskStatus.CANCELLED)),
                models.When(mine, then=models.Value(TaskStatus.READY)),
                default=models.F("status"),
            ),
        )

    def reopen_running(self, worker_id):
        """A worker's RUNNING rows go back to READY (CANCELLED if a cancel was
        asked for meanwhile); the attempts stay counted."""
        running = self.filter(worker=worker_id, status=TaskStatus.RUNNING)
        running.filter(cancel_requested=True).update(status=TaskStatus.CANCELLED, finished_at=timezone.now())
        return running.update(status=TaskStatus.READY)

    def cancel(self, task_id, now):
        """Cancel a task: a READY (or delayed) row becomes CANCELLED at once and
        its item is dropped unrun by whichever worker takes it; a RUNNING row is
        asked to stop (``cancel_requested``, read by its context and by the
        worker before it starts a batched task) and ends CANCELLED.

        Returns the row's status after the call (CANCELLED or RUNNING); raises
        TaskRecord.DoesNotExist, or TaskAlreadyFinished for a final row.
        """
        for _attempt in range(5):  # a row moving READY -> RUNNING -> READY meanwhile: read again
            if self.filter(id=task_id, status=TaskStatus.READY).update(
                status=TaskStatus.CANCELLED, cancel_requested=True, finished_at=now
            ):
                return TaskStatus.CANCELLED
            if self.filter(id=task_id, status=TaskStatus.RUNNING).update(cancel_requested=True):
                return TaskStatus.RUNNING
            status = self.filter(id=task_id).values_list("status", flat=True).first()
            if status is None:
                raise self.model.DoesNotExist(task_id)
            if status in FINAL_STATUSES:
                raise TaskAlreadyFinished(f"task {task_id} has already finished ({status})")
        raise TaskAlreadyFinished(f"task {task_id} kept changing status; try again")

    def open_with_key(self, unique_key):
        """The open row holding ``unique_key``, or None."""
        return self.open().filter(unique_key=unique_key).first()

    def record_progress(self, task_id, progress):
        """Store a running task's progress ({"done", "total", "text"})."""
        return self.filter(id=task_id, status=TaskStatus.RUNNING).update(progress=progress)

    def cancel_requested_among(self, ids):
        """The ids among ``ids`` whose cancel was asked for (a worker's check
        before it starts the rest of a batch)."""
        return set(self.filter(id__in=ids, cancel_requested=True).values_list("id", flat=True))

    def record_failure(self, task_id, status, entry, started_at, finished_at, retry_at=None):
        """Add a failed attempt's ``entry`` to an open row and set its status
        (READY when a retry follows, due at ``retry_at``); False if the row is
        gone or finished."""
        record = self.filter(id=task_id).first()
        if record is None or record.is_finished:
            return False
        if record.cancel_requested:  # no retry for a task asked to stop
            status, retry_at = TaskStatus.CANCELLED, None
        record.status = status
        record.errors = [*record.errors, entry]
        record.error = f"{entry['exception']}\n{entry['traceback']}".strip()
        record.started_at = started_at
        if status in FINAL_STATUSES:
            record.finished_at = finished_at
        if retry_at is not None:
            record.run_after = retry_at
        record.save(update_fields=["status", "errors", "error", "started_at", "finished_at", "run_after"])
        return True

    def record_refusal(self, task_id, status, reason, started_at, finished_at, at):
        """Record why the database refused an outcome, as the row's error and
        an entry of its attempt; False if the row is gone or finished."""
        record = self.filter(id=task_id).first()
        if record is None or record.is_finished:
            return False
        entry = {"exception": "mqsite.RecordRefused", "traceback": reason, "attempt": record.attempts, "worker": record.worker, "at": at}
        record.status, record.error, record.errors = status, reason, [*record.errors, entry]
        record.started_at = started_at
        record.finished_at = finished_at if status in FINAL_STATUSES else None
        record.save(update_fields=["status", "error", "errors", "started_at", "finished_at"])
        return True

    # --- operators -----------------------------------------------------------
    def requeue(self, task_id, now):
        """Put a FAILED or DEAD row back to READY, for a run under the same id.

        A fresh round of attempts (the worker gives up on a row whose attempts
        already reached the limit, so keeping the count would make the re-run
        die unrun); ``errors`` keep every earlier attempt; ``enqueued_at``
        becomes now, so the sweeper's grace period covers the push that
        follows. Returns the values it replaced, for ``undo_requeue``, or
        None when the row is no longer FAILED/DEAD, or is a unique task's
        whose key an open copy holds now.
        """
        try:
            with transaction.atomic(using=self.db):
                rows = self.select_for_update().filter(id=task_id, status__in=REQUEUEABLE)
                before = rows.values(*REQUEUE_FIELDS).first()
                if before is not None:
                    rows.update(status=TaskStatus.READY, attempts=0, enqueued_at=now, started_at=None, finished_at=None)
        except IntegrityError:  # the partial unique index on open rows' keys
            return None
        return before

    def undo_requeue(self, task_id, before):
        """Restore a requeued row whose push failed, unless a worker took it since."""
        return self.filter(id=task_id, status=TaskStatus.READY, attempts=0).update(**before)

    # --- retention and listing -------------------------------------------------
    def finished_before(self, cutoff, statuses=FINAL_STATUSES):
        """Finished rows of ``statuses`` that finished before ``cutoff``: what
        retention may delete. Never an open row, whatever ``statuses`` says.

        Bounded by enqueued_at too (a row finishes after it is enqueued), so
        the (enqueued_at, id) index serves the walk and no index is needed on
        finished_at, a column every finishing update would rewrite."""
        final = [status for status in statuses if status in FINAL_STATUSES]
        return self.filter(status__in=final, finished_at__lt=cutoff, enqueued_at__lt=cutoff)

    def newest_first(self, before=None):
        """Rows newest first by (enqueued_at, id), after the cursor ``before``
        (the (enqueued_at, id) of the last row already seen), for the API's list."""
        rows = self
        if before is not None:
            at, task_id = before
            # (enqueued_at, id) < cursor, written so that the index bounds the scan.
            rows = rows.filter(enqueued_at__lte=at).exclude(enqueued_at=at, id__gte=task_id)
        return rows.order_by("-enqueued_at", "-id")


class TaskRecord(models.Model):
    """One row per task id, created at enqueue, updated by the workers."""

    objects = TaskRecordQuerySet.as_manager()

    id = models.CharField(_("id"), primary_key=True, max_length=64)
    # Not indexed: each index is rewritten on every status change, and on
    # PostgreSQL a CharField index comes with a second "_like" one.
    task_path = models.CharField(_("task"), max_length=255)
    queue = models.CharField(_("queue"), max_length=100, default="default")
    backend = models.CharField(_("backend"), max_length=100, default="default")
    args = models.JSONField(_("args"), default=list, blank=True)
    kwargs = models.JSONField(_("kwargs"), default=dict, blank=True)
    # No index of its own: "task_open_by_queue" starts with status.
    status = models.CharField(_("status"), max_length=10, choices=TaskStatus.choices, default=TaskStatus.READY)
    attempts = models.PositiveIntegerField(_("attempts"), default=0, help_text=_("Runs started, crashed runs included."))
    worker = models.CharField(_("worker"), max_length=100, blank=True, help_text=_("Worker of the latest attempt."))
    # Indexed with id ("task_by_enqueued" below).
    enqueued_at = models.DateTimeField(_("enqueued at"))
    # Due time of a delayed task: run_after at enqueue, or the next retry.
    run_after = models.DateTimeField(_("delayed until"), null=True, blank=True)
    # Higher is taken first within a queue (-100..100, the Tasks API's range).
    priority = models.SmallIntegerField(_("priority"), default=0)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    result = models.JSONField(_("result"), null=True, blank=True)
    error = models.TextField(_("error"), blank=True, help_text=_("The latest error, with its traceback."))
    errors = models.JSONField(_("errors"), default=list, blank=True, help_text=_("Every failed attempt, oldest first."))
    # A unique task's key (see tasks/queue/uniqueness.py): no two open rows share one.
    unique_key = models.CharField(_("unique key"), max_length=64, null=True, blank=True, editable=False)
    # {"done", "total", "text"}, the latest a running task reported.
    progress = models.JSONField(_("progress"), null=True, blank=True)
    cancel_requested = models.BooleanField(
        _("cancel requested"),
        default=False,
        db_default=False,
        help_text=_("A cancel was asked for; a running task is told through its context."),
    )

    class Meta:
        verbose_name = _("task record")
        verbose_name_plural = _("task records")
        ordering = ["-enqueued_at"]
        indexes = [
            models.Index(fields=["status", "queue", "enqueued_at"], name="task_open_by_queue"),
            # Newest first for the admin (its ordering, made total with the pk),
            # the API's cursor, the sweeper's walk and retention's: it replaces
            # the index on enqueued_at alone, so the table keeps as many indexes.
            models.Index(fields=["enqueued_at", "id"], name="task_by_enqueued"),
            # The admin's "delayed until" and "priority" filters. Partial: only
            # delayed tasks and those of a priority other than 0 are in them,
            # so the plain enqueue-and-run path writes neither.
            models.Index(fields=["run_after"], condition=models.Q(status="READY", run_after__isnull=False), name="task_delayed"),
            models.Index(fields=["priority", "enqueued_at"], condition=~models.Q(priority=0), name="task_prioritised"),
        ]
        constraints = [
            # A partial unique index: a finished copy releases its key.
            models.UniqueConstraint(fields=["unique_key"], condition=models.Q(status__in=OPEN_STATUSES), name="task_unique_while_open"),
        ]

    def __str__(self):
        # The admin's page title and breadcrumbs: the status as its label, in
        # the reader's language (the raw value stays in the API's JSON).
        return f"{self.task_path} [{self.id}] {self.get_status_display()}"

    @property
    def is_finished(self):
        return self.status in FINAL_STATUSES

    def to_task_result(self, task):
        """This row as the Tasks API's TaskResult of ``task`` (DEAD and CANCELLED read FAILED)."""
        status = TaskResultStatus.FAILED if self.status in API_FAILED else TaskResultStatus(self.status)
        errors = [
            TaskError(exception_class_path=e.get("exception", "builtins.Exception"), traceback=e.get("traceback", ""))
            for e in self.errors
        ]
        # The Tasks API counts attempts as len(worker_ids): one entry per run.
        failed_on = [e.get("worker", "") for e in self.errors]
        worker_ids = (failed_on + [self.worker] * self.attempts)[: self.attempts]
        result: TaskResult = TaskResult(
            task=task,
            id=self.id,
            status=status,
            enqueued_at=self.enqueued_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            last_attempted_at=self.started_at,
            args=self.args,
            kwargs=self.kwargs,
            backend=self.backend,
            errors=errors,
            worker_ids=worker_ids,
        )
        object.__setattr__(result, "_return_value", self.result)
        return result

    def as_api_dict(self):
        """The JSON of GET /api/tasks/<id> (a documented contract: DESIGN.md section 3)."""
        return {
            "id": self.id,
            "task": self.task_path,
            "queue": self.queue,
            "status": self.status,
            "attempts": self.attempts,
            "priority": self.priority,
            "worker": self.worker,
            "enqueued_at": _iso(self.enqueued_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            # When a waiting task becomes due (run_after, or its next retry).
            "run_after": _iso(self.run_after),
            "result": self.result,
            "error": self.error,
            "cancel_requested": self.cancel_requested,
            "progress": self.progress,
        }


def _iso(moment):
    return moment.isoformat() if moment else None


def excerpt(text, length=24):
    """The start of a message, on one line, for titles."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= length else flat[:length] + "..."


class PublishedMessage(models.Model):
    """One row per broadcast, written by tasks.channel.publish.publish.

    ``receivers`` is what Redis answered to PUBLISH: the subscriptions that
    got the message at that instant, not a promise that anyone handled it.
    """

    channel = models.CharField(_("channel"), max_length=255, db_index=True)
    payload = models.TextField(_("payload"), help_text=_("Exactly the text sent to Redis."))
    digest = models.CharField(_("digest"), max_length=64, editable=False, help_text=_("SHA-256 of the payload, to find its receipts."))
    published_at = models.DateTimeField(_("published at"), db_index=True)
    receivers = models.PositiveIntegerField(_("receivers"), default=0, help_text=_("Subscriptions Redis delivered the message to."))
    publisher = models.CharField(
        _("publisher"), max_length=150, blank=True, help_text=_('Who published: "user:<name>", "api:<token name>", "command".')
    )

    class Meta:
        verbose_name = _("published message")
        verbose_name_plural = _("published messages")
        ordering = ["-published_at", "-id"]
        indexes = [models.Index(fields=["channel", "digest", "published_at"], name="published_by_digest")]

    def __str__(self):
        # What the admin's page title and breadcrumbs show: what was said,
        # where, and to how many (not just when).
        # One message per language, so each puts the count where it belongs.
        text = ngettext(
            "%(channel)s: %(payload)s -> %(n)d listener",
            "%(channel)s: %(payload)s -> %(n)d listeners",
            self.receivers,
        )
        return text % {"channel": self.channel, "payload": excerpt(self.payload), "n": self.receivers}


class ReceivedMessage(models.Model):
    """One row per message per listener, written by tasks.channel.listener.

    ``published`` points at the PublishedMessage it came from when mqsite
    published it; messages from other publishers (``redis-cli PUBLISH``)
    have none. See tasks/channel/receipts.py for how the two are matched without
    adding anything to the message on the wire.
    """

    listener = models.CharField(_("listener"), max_length=100, db_index=True)
    channel = models.CharField(_("channel"), max_length=255, db_index=True)
    pattern = models.CharField(_("pattern"), max_length=255, blank=True, help_text=_("The pattern subscription that matched, if any."))
    payload = models.TextField(_("payload"), help_text=_("The message as text (invalid UTF-8 bytes backslash-escaped)."))
    digest = models.CharField(_("digest"), max_length=64, editable=False)
    is_json = models.BooleanField(_("is json"), default=False, help_text=_("Whether the payload parsed as JSON."))
    data = models.JSONField(_("data"), null=True, blank=True, help_text=_("The parsed payload, when it is JSON."))
    received_at = models.DateTimeField(_("received at"), db_index=True)
    handler = models.CharField(_("handler"), max_length=255, blank=True)
    ok = models.BooleanField(_("handled"), default=True, db_index=True)
    error = models.TextField(_("error"), blank=True, help_text=_("Why handling failed, with the traceback."))
    published = models.ForeignKey(
        PublishedMessage,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="receipts",
        verbose_name=_("published"),
        help_text=_("The publish this receipt belongs to, when mqsite published it."),
    )

    class Meta:
        verbose_name = _("received message")
        verbose_name_plural = _("received messages")
        ordering = ["-received_at", "-id"]
        indexes = [models.Index(fields=["channel", "digest", "received_at"], name="received_by_digest")]

    def __str__(self):
        return f"{self.listener} <- {self.channel}: {excerpt(self.payload)}"


# Periodic tasks' state lives in its own module; imported here so Django
# finds the model with the app's others.
from tasks.schedules.models import ScheduleState  # noqa: E402, F401
