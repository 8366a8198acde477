"""History: what was asked of the workers and what came of it.

Models know nothing of Redis; workers write here through tasks/recorder.py.
"""

from django.db import models


class TaskStatus(models.TextChoices):
    READY = "READY", "Ready"
    RUNNING = "RUNNING", "Running"
    SUCCESSFUL = "SUCCESSFUL", "Successful"
    FAILED = "FAILED", "Failed"
    # Never completed: a bad message, an unknown task, or a task that kept
    # killing its workers. Reported as FAILED through the Tasks API.
    DEAD = "DEAD", "Dead"


FINAL_STATUSES = (TaskStatus.SUCCESSFUL, TaskStatus.FAILED, TaskStatus.DEAD)
OPEN_STATUSES = (TaskStatus.READY, TaskStatus.RUNNING)


class TaskRecord(models.Model):
    """One row per task id, created at enqueue, updated by the workers."""

    id = models.CharField(primary_key=True, max_length=64)
    # Not indexed: each index is rewritten on every status change, and on
    # PostgreSQL a CharField index comes with a second "_like" one.
    task_path = models.CharField("task", max_length=255)
    queue = models.CharField(max_length=100, default="default")
    backend = models.CharField(max_length=100, default="default")
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    # No index of its own: "task_open_by_queue" starts with status.
    status = models.CharField(max_length=10, choices=TaskStatus.choices, default=TaskStatus.READY)
    attempts = models.PositiveIntegerField(default=0, help_text="Runs started, crashed runs included.")
    worker = models.CharField(max_length=100, blank=True, help_text="Worker of the latest attempt.")
    enqueued_at = models.DateTimeField(db_index=True)
    # Due time of a delayed task: run_after at enqueue, or the next retry.
    run_after = models.DateTimeField("delayed until", null=True, blank=True)
    # Higher is taken first within a queue (-100..100, the Tasks API's range).
    priority = models.SmallIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, help_text="The latest error, with its traceback.")
    errors = models.JSONField(default=list, blank=True, help_text="Every failed attempt, oldest first.")

    class Meta:
        ordering = ["-enqueued_at"]
        indexes = [models.Index(fields=["status", "queue", "enqueued_at"], name="task_open_by_queue")]

    def __str__(self):
        return f"{self.task_path} [{self.id}] {self.status}"

    @property
    def is_finished(self):
        return self.status in FINAL_STATUSES


class PublishedMessage(models.Model):
    """One row per broadcast, written by tasks.channel.publish.publish.

    ``receivers`` is what Redis answered to PUBLISH: the subscriptions that
    got the message at that instant, not a promise that anyone handled it.
    """

    channel = models.CharField(max_length=255, db_index=True)
    payload = models.TextField(help_text="Exactly the text sent to Redis.")
    digest = models.CharField(max_length=64, editable=False, help_text="SHA-256 of the payload, to find its receipts.")
    published_at = models.DateTimeField(db_index=True)
    receivers = models.PositiveIntegerField(default=0, help_text="Subscriptions Redis delivered the message to.")
    publisher = models.CharField(max_length=150, blank=True, help_text='Who published: "user:<name>", "api:<token name>", "command".')

    class Meta:
        ordering = ["-published_at", "-id"]
        indexes = [models.Index(fields=["channel", "digest", "published_at"], name="published_by_digest")]

    def __str__(self):
        return f"{self.channel} @ {self.published_at:%Y-%m-%d %H:%M:%S} -> {self.receivers}"


class ReceivedMessage(models.Model):
    """One row per message per listener, written by tasks.channel.listener.

    ``published`` points at the PublishedMessage it came from when mqsite
    published it; messages from other publishers (``redis-cli PUBLISH``)
    have none. See tasks/receipts.py for how the two are matched without
    adding anything to the message on the wire.
    """

    listener = models.CharField(max_length=100, db_index=True)
    channel = models.CharField(max_length=255, db_index=True)
    pattern = models.CharField(max_length=255, blank=True, help_text="The pattern subscription that matched, if any.")
    payload = models.TextField(help_text="The message as text (invalid UTF-8 bytes backslash-escaped).")
    digest = models.CharField(max_length=64, editable=False)
    is_json = models.BooleanField(default=False, help_text="Whether the payload parsed as JSON.")
    data = models.JSONField(null=True, blank=True, help_text="The parsed payload, when it is JSON.")
    received_at = models.DateTimeField(db_index=True)
    handler = models.CharField(max_length=255, blank=True)
    ok = models.BooleanField("handled", default=True, db_index=True)
    error = models.TextField(blank=True, help_text="Why handling failed, with the traceback.")
    published = models.ForeignKey(
        PublishedMessage,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="receipts",
        help_text="The publish this receipt belongs to, when mqsite published it.",
    )

    class Meta:
        ordering = ["-received_at", "-id"]
        indexes = [models.Index(fields=["channel", "digest", "received_at"], name="received_by_digest")]

    def __str__(self):
        return f"{self.listener} <- {self.channel} @ {self.received_at:%Y-%m-%d %H:%M:%S}"


# Periodic tasks' state lives in its own module; imported here so Django
# finds the model with the app's others.
from tasks.schedule_models import ScheduleState  # noqa: E402, F401
