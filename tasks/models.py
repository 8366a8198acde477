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
    task_path = models.CharField("task", max_length=255, db_index=True)
    queue = models.CharField(max_length=100, default="default")
    backend = models.CharField(max_length=100, default="default")
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=TaskStatus.choices, default=TaskStatus.READY, db_index=True)
    attempts = models.PositiveIntegerField(default=0, help_text="Runs started, crashed runs included.")
    worker = models.CharField(max_length=100, blank=True, help_text="Worker of the latest attempt.")
    enqueued_at = models.DateTimeField(db_index=True)
    run_after = models.DateTimeField(null=True, blank=True)
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
