"""What every host must agree on about a schedule: whether it is paused and
which tick it fired last. Kept in the database, so pausing survives restarts
and applies to every worker on every host at once.

The last tick is bookkeeping, not the guarantee: a tick fires once because
its task id is derived from (schedule, tick) and the history row's primary
key refuses a second one (tasks.worker.scheduler).
"""

from django.db import models


class ScheduleState(models.Model):
    name = models.CharField(primary_key=True, max_length=100)
    paused = models.BooleanField(default=False, help_text="A paused schedule fires nothing, on any host.")
    last_tick_at = models.DateTimeField(
        null=True, blank=True, help_text="The newest tick handled (fired, or skipped by catch_up)."
    )
    last_task_id = models.CharField(max_length=64, blank=True, help_text="The task of the newest tick fired.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "schedule"

    def __str__(self):
        return self.name
