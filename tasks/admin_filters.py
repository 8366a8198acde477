"""List filters for the history (tasks and messages) that cost no query to draw.

Django's filter on a plain column lists its values with SELECT DISTINCT over
the whole table, and date_hierarchy does the same per year, month or day:
a full scan on every changelist page, seconds at millions of rows. These
take their choices from the configuration instead (registered tasks,
configured queues and channels) and filter through an indexed time by age.
"""

from datetime import timedelta

from django.contrib import admin
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from tasks import registry
from tasks.checks import GLOB_CHARACTERS
from tasks.conf import mq_settings


class ConfiguredChoiceFilter(admin.SimpleListFilter):
    """Filters ``field`` on the chosen value, offering the names the
    subclass's ``choices_from_configuration()`` gives."""

    field = ""

    def choices_from_configuration(self):
        raise NotImplementedError

    def lookups(self, request, model_admin):
        return [(name, name) for name in sorted(self.choices_from_configuration())]

    def queryset(self, request, queryset):
        return queryset.filter(**{self.field: self.value()}) if self.value() else queryset


class TaskPathFilter(ConfiguredChoiceFilter):
    title = _("task")
    parameter_name = "task_path__exact"
    field = "task_path"

    def choices_from_configuration(self):
        return registry.paths()


class QueueFilter(ConfiguredChoiceFilter):
    title = _("queue")
    parameter_name = "queue__exact"
    field = "queue"

    def choices_from_configuration(self):
        tasks = (registry.get(path) for path in registry.paths())
        return set(mq_settings.MQ_QUEUES) | {task.queue_name for task in tasks if task is not None}


class ChannelFilter(ConfiguredChoiceFilter):
    """The default channel and those named in MQ_CHANNEL_HANDLERS (patterns
    are not channels); any other name still filters from the query string."""

    title = _("channel")
    parameter_name = "channel"
    field = "channel"

    def choices_from_configuration(self):
        handled = mq_settings.MQ_CHANNEL_HANDLERS
        named = [name for name in handled if isinstance(name, str) and not any(c in name for c in GLOB_CHARACTERS)]
        return {mq_settings.MQ_DEFAULT_CHANNEL, *named}


class AgeFilter(admin.SimpleListFilter):
    """By the age of ``field``, an indexed time, in place of date_hierarchy
    (whose links cost a DISTINCT scan)."""

    field = ""
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
            return queryset.filter(**{f"{self.field}__lt": since})
        return queryset.filter(**{f"{self.field}__gte": since})


class EnqueuedFilter(AgeFilter):
    title = _("enqueued")
    parameter_name = "enqueued"
    field = "enqueued_at"


class PublishedFilter(AgeFilter):
    title = _("published")
    parameter_name = "published"
    field = "published_at"


class ReceivedFilter(AgeFilter):
    title = _("received")
    parameter_name = "received"
    field = "received_at"
