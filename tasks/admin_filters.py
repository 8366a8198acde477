"""List filters for the task history that cost no query to draw.

Django's filter on a plain column lists its values with SELECT DISTINCT over
the whole table, and date_hierarchy does the same per year, month or day:
a full scan on every changelist page, seconds at millions of rows. These
take their choices from the configuration instead (registered tasks,
configured queues) and filter through the indexed enqueued_at by age.
"""

from datetime import timedelta

from django.contrib import admin
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from tasks import registry
from tasks.conf import mq_settings


class TaskPathFilter(admin.SimpleListFilter):
    title = _("task")
    parameter_name = "task_path__exact"

    def lookups(self, request, model_admin):
        return [(path, path) for path in sorted(registry.paths())]

    def queryset(self, request, queryset):
        return queryset.filter(task_path=self.value()) if self.value() else queryset


class QueueFilter(admin.SimpleListFilter):
    title = _("queue")
    parameter_name = "queue__exact"

    def lookups(self, request, model_admin):
        tasks = (registry.get(path) for path in registry.paths())
        names = set(mq_settings.MQ_QUEUES) | {task.queue_name for task in tasks if task is not None}
        return [(name, name) for name in sorted(names)]

    def queryset(self, request, queryset):
        return queryset.filter(queue=self.value()) if self.value() else queryset


class EnqueuedFilter(admin.SimpleListFilter):
    """By age, in place of date_hierarchy (whose links cost a DISTINCT scan)."""

    title = _("enqueued")
    parameter_name = "enqueued"
    AGES = {
        "hour": (_("Past hour"), timedelta(hours=1)),
        "day": (_("Past 24 hours"), timedelta(days=1)),
        "week": (_("Past 7 days"), timedelta(days=7)),
        "older": (_("Older than 30 days"), timedelta(days=30)),
    }

    def lookups(self, request, model_admin):
        return [(key, label) for key, (label, _age) in self.AGES.items()]

    def queryset(self, request, queryset):
        value = self.value()
        if value is None or value not in self.AGES:
            return queryset
        since = timezone.now() - self.AGES[value][1]
        if value == "older":
            return queryset.filter(enqueued_at__lt=since)
        return queryset.filter(enqueued_at__gte=since)
