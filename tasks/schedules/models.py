"""What every host must agree on about a schedule: whether it is paused and
which tick it fired last. Kept in the database, so pausing survives restarts
and applies to every worker on every host at once.

The last tick is bookkeeping, not the guarantee: a tick fires once because
its task id is derived from (schedule, tick) and the history row's primary
key refuses a second one (tasks.worker.scheduler).
"""

from django.db import models
from django.utils.translation import gettext_lazy as _


class ScheduleStateQuerySet(models.QuerySet):
    def ensure(self, names, now):
        """{name: state} for ``names``, creating missing rows.

        A schedule seen for the first time starts at ``now``: it fires the
        ticks after that, never the ones before it.
        """
        states = self.in_bulk(list(names))
        missing = [name for name in names if name not in states]
        if missing:
            self.bulk_create([self.model(name=name, last_tick_at=now) for name in missing], ignore_conflicts=True)
            states = self.in_bulk(list(names))  # another host's row may have won
        return states

    def pause(self):
        return self.update(paused=True)

    def resume(self, now):
        """Unpause, from ``now``: the ticks of the pause were skipped on
        purpose, so catch_up must not fire them."""
        return self.filter(paused=True).update(paused=False, last_tick_at=now)


class ScheduleState(models.Model):
    name = models.CharField(_("name"), primary_key=True, max_length=100)
    paused = models.BooleanField(_("paused"), default=False, help_text=_("A paused schedule fires nothing, on any host."))
    last_tick_at = models.DateTimeField(
        _("last tick at"), null=True, blank=True, help_text=_("The newest tick handled (fired, or skipped by catch_up).")
    )
    last_task_id = models.CharField(_("last task id"), max_length=64, blank=True, help_text=_("The task of the newest tick fired."))

    objects = ScheduleStateQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        verbose_name = _("schedule")
        verbose_name_plural = _("schedules")

    def __str__(self):
        return self.name
