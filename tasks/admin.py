import json

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import flatten_fieldsets
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.text import Truncator
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from tasks import registry
from tasks.admin_display import status_badge_html
from tasks.admin_filters import ChannelFilter, EnqueuedFilter, PublishedFilter, QueueFilter, ReceivedFilter, TaskPathFilter
from tasks.exceptions import QueueUnavailable, TaskAlreadyFinished
from tasks.models import OPEN_STATUSES, REQUEUEABLE, PublishedMessage, ReceivedMessage, TaskRecord, TaskStatus
from tasks.paginator import EstimatedCountPaginator
from tasks.queue.backend import cancel, purge_dead_letters, requeue
from tasks.storable import unstorable


class ReadOnlyAdmin(admin.ModelAdmin):
    """History is written by the system; the admin only browses it (and
    prunes what may go: each admin below says what).

    History tables grow to millions of rows: no second COUNT(*) of the whole
    table for "N total", and an estimated count past a size (tasks/paginator.py)."""

    show_full_result_count = False
    paginator = EstimatedCountPaginator
    # Filter counts ("Show counts") aggregate the whole filtered table on
    # every page, whatever the paginator does.
    show_facets = admin.ShowFacets.NEVER

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def get_changelist_instance(self, request):
        # Django runs any lookup on a model's own column from the query
        # string (?listener=...). PostgreSQL refuses NUL and lone surrogates
        # in a query, a 500: answer as Django does to any lookup it cannot
        # run, with the unfiltered list (?e=1).
        for values in request.GET.lists():
            if any(unstorable(value) for value in values[1]):
                raise IncorrectLookupParameters("a value no database stores")
        return super().get_changelist_instance(request)


# Characters of a task id the list shows; ids are random, 8 tell them apart.
SHORT_ID = 8

admin.site.site_header = "mqsite"
admin.site.site_title = "mqsite"
# The nav sidebar would take a quarter of a 1280 px screen from the task list.
admin.site.enable_nav_sidebar = False


def _seconds(moment):
    """A time to the second, in the current time zone: the list's times.
    Today's show the time alone (narrow columns); the full one is on hover."""
    if moment is None:
        return "-"
    local = timezone.localtime(moment)
    full = local.strftime("%Y-%m-%d %H:%M:%S")
    shown = local.strftime("%H:%M:%S") if local.date() == timezone.localdate() else full
    return format_html('<time datetime="{}" title="{}">{}</time>', moment.isoformat(timespec="seconds"), full, shown)


def _preview(text):
    return Truncator(text).chars(80)


@admin.register(PublishedMessage)
class PublishedMessageAdmin(ReadOnlyAdmin):
    list_display = ["published_at", "channel", "payload_preview", "receivers", "publisher", "receipts_link"]
    # No date_hierarchy and no filter on a free-form column (publisher): their
    # choices are a scan of the whole table (tasks/admin_filters.py).
    list_filter = [ChannelFilter, PublishedFilter]
    search_fields = ["channel", "payload", "publisher"]
    exclude = ["digest"]

    def get_queryset(self, request):
        # A subquery per row shown, through the receipts' published_id index:
        # a join with GROUP BY counted every receipt of the table before the page's LIMIT.
        receipts = (
            ReceivedMessage.objects.filter(published=OuterRef("pk")).order_by().values("published").annotate(n=Count("*")).values("n")
        )
        return super().get_queryset(request).annotate(receipt_count=Coalesce(Subquery(receipts), 0))

    @admin.display(description=_("payload"))
    def payload_preview(self, obj):
        return _preview(obj.payload)

    @admin.display(description=_("receipts"))
    def receipts_link(self, obj):
        url = reverse("admin:tasks_receivedmessage_changelist") + f"?published__id__exact={obj.pk}"
        return format_html('<a href="{}">{}</a>', url, gettext("%(count)d recorded") % {"count": obj.receipt_count})


@admin.register(ReceivedMessage)
class ReceivedMessageAdmin(ReadOnlyAdmin):
    list_display = ["received_at", "listener", "channel", "pattern", "payload_preview", "ok", "handler", "published_link"]
    # The listener is searched, not filtered: see PublishedMessageAdmin.
    list_filter = ["ok", ChannelFilter, ReceivedFilter, "is_json"]
    search_fields = ["payload", "channel", "listener", "error"]
    exclude = ["digest"]

    @admin.display(description=_("payload"))
    def payload_preview(self, obj):
        return _preview(obj.payload)

    @admin.display(description=_("publish"))
    def published_link(self, obj):
        if obj.published_id is None:
            return "-"
        url = reverse("admin:tasks_publishedmessage_change", args=[obj.published_id])
        return format_html('<a href="{}">#{}</a>', url, obj.published_id)


# --- task history -------------------------------------------------------------
# Rows are written by the enqueueing code and the workers only; an edit here
# would contradict what really ran. Re-enqueue and purge are what an operator
# may do, both gated on the model's change permission: the admin stays
# read-only, so "change" here means "may operate the queues".

PRE = '<pre style="white-space: pre-wrap; margin: 0">{}</pre>'


def _pretty_json(value):
    return format_html(PRE, json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True))


class PriorityFilter(admin.SimpleListFilter):
    """Fixed choices: the field's own filter would read every distinct value,
    a scan of the whole history on each changelist."""

    title = _("priority")
    parameter_name = "priority"

    def lookups(self, request, model_admin):
        return [("above", _("above 0")), ("zero", "0"), ("below", _("below 0"))]

    def queryset(self, request, queryset):
        lookup = {"above": {"priority__gt": 0}, "zero": {"priority": 0}, "below": {"priority__lt": 0}}.get(self.value() or "")
        return queryset.filter(**lookup) if lookup else queryset


class DelayedFilter(admin.SimpleListFilter):
    """Tasks waiting for their run_after or their next retry."""

    title = _("delayed until")
    parameter_name = "delayed"

    def lookups(self, request, model_admin):
        return [("later", _("still delayed")), ("due", _("due, not yet run"))]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "later":
            return queryset.filter(status=TaskStatus.READY, run_after__gt=now)
        if self.value() == "due":
            return queryset.filter(status=TaskStatus.READY, run_after__lte=now)
        return queryset


@admin.register(TaskRecord)
class TaskRecordAdmin(ReadOnlyAdmin):
    # What matters first, readable at 1280 px: the id is shortened (in full
    # on hover and on its page), times show seconds, the duration is computed.
    # The worker is on each row's page.
    list_display = [
        "short_id", "status_badge", "task_path", "queue", "priority", "attempts", "task_progress", "duration", "run_after_s", "finished",
    ]
    # No date_hierarchy and no plain column filters: both list their choices
    # with a scan of the whole table (tasks/admin_filters.py).
    list_filter = ["status", QueueFilter, TaskPathFilter, EnqueuedFilter, PriorityFilter, DelayedFilter]
    search_fields = ["id", "task_path", "error"]  # draws the box; get_search_results searches
    search_help_text = _("A task id or its beginning, part of a task path, or words of an error message.")
    actions = ["requeue_tasks", "cancel_tasks", "purge_dead_letters"]
    fieldsets = [
        (None, {"fields": ["id", "task_path", "queue", "backend", "status", "task_progress", "cancel_requested", "priority", "attempts", "worker"]}),
        (_("Times"), {"fields": ["enqueued_at", "run_after", "started_at", "finished_at"]}),
        (_("Call"), {"fields": ["call_args", "call_kwargs"]}),
        (_("Outcome"), {"fields": ["outcome_result", "latest_error", "attempt_errors"]}),
    ]
    readonly_fields = flatten_fieldsets(fieldsets)

    def get_search_results(self, request, queryset, search_term):
        """Only searches an index serves (TaskRecordQuerySet.search): the
        default substring search of every field read the whole table, over a
        second a page at a million rows."""
        return queryset.search(search_term, registry.paths()), False

    def has_delete_permission(self, request, obj=None):
        # Deleting an open row would let the sweeper lose track of its task.
        return False

    def has_operate_permission(self, request):
        return request.user.has_perm(f"{self.opts.app_label}.change_{self.opts.model_name}")

    @admin.display(description=_("id"), ordering="id")
    def short_id(self, record):
        return format_html('<span title="{}">{}…</span>', record.id, record.id[:SHORT_ID])

    @admin.display(description=_("status"), ordering="status")
    def status_badge(self, record):
        return status_badge_html(record.status)

    @admin.display(description=_("duration"))
    def duration(self, record):
        if not (record.started_at and record.finished_at):
            return "-"
        return f"{(record.finished_at - record.started_at).total_seconds():.3f} s"

    @admin.display(description=_("delayed until"), ordering="run_after")
    def run_after_s(self, record):
        # Only while the task is open: a finished task's run_after is when it
        # was once due, stale here (its own page still shows it).
        if record.status not in OPEN_STATUSES or record.run_after is None:
            return None  # the admin's empty value
        return _seconds(record.run_after)

    @admin.display(description=_("finished"), ordering="finished_at")
    def finished(self, record):
        return _seconds(record.finished_at)

    @admin.display(description=_("progress"))
    def task_progress(self, record):
        progress = record.progress
        if not progress:
            return "-"
        done, total = progress.get("done"), progress.get("total")
        amount = f"{done}" if total is None else f"{done}/{total}"
        return f"{amount} {progress.get('text', '')}".strip()

    @admin.display(description=_("args"))
    def call_args(self, record):
        return _pretty_json(record.args)

    @admin.display(description=_("kwargs"))
    def call_kwargs(self, record):
        return _pretty_json(record.kwargs)

    @admin.display(description=_("result"))
    def outcome_result(self, record):
        return _pretty_json(record.result)

    @admin.display(description=_("latest error"))
    def latest_error(self, record):
        return format_html(PRE, record.error) if record.error else "-"

    @admin.display(description=_("every failed attempt"))
    def attempt_errors(self, record):
        if not record.errors:
            return "-"
        return format_html_join(
            "",
            "<p><strong>" + gettext("attempt {} · {} · {}") + "</strong><br>{}</p>" + PRE,
            (
                (e.get("attempt", "?"), e.get("worker", "?"), e.get("at", "?"), e.get("exception", ""), e.get("traceback", ""))
                for e in record.errors
            ),
        )

    @admin.action(description=_("Re-enqueue selected failed/dead tasks (same id)"), permissions=["operate"])
    def requeue_tasks(self, request, queryset):
        done, skipped = 0, queryset.exclude(status__in=REQUEUEABLE).count()
        for record in list(queryset.filter(status__in=REQUEUEABLE)):
            try:
                if requeue(record):
                    done += 1
                else:  # its task is no longer registered, or another admin was faster
                    skipped += 1
            except QueueUnavailable as exc:
                text = gettext("Redis refused the task (%(error)s); %(done)d re-enqueued before that.") % {"error": exc, "done": done}
                self.message_user(request, text, messages.ERROR)
                return
        if done:
            self.message_user(request, ngettext("Re-enqueued %d task.", "Re-enqueued %d tasks.", done) % done, messages.SUCCESS)
        if skipped:
            text = ngettext(
                "Skipped %d task: only failed or dead tasks of a registered task can be re-enqueued.",
                "Skipped %d tasks: only failed or dead tasks of a registered task can be re-enqueued.",
                skipped,
            )
            self.message_user(request, text % skipped, messages.WARNING)

    @admin.action(description=_("Cancel selected ready, delayed or running tasks"), permissions=["operate"])
    def cancel_tasks(self, request, queryset):
        cancelled, asked, finished = 0, 0, queryset.exclude(status__in=OPEN_STATUSES).count()
        for task_id in list(queryset.filter(status__in=OPEN_STATUSES).values_list("id", flat=True)):
            try:
                status = cancel(task_id)
            except (TaskAlreadyFinished, TaskRecord.DoesNotExist):
                finished += 1
                continue
            if status == TaskStatus.CANCELLED:
                cancelled += 1
            else:
                asked += 1
        self.message_user(
            request,
            gettext("Cancelled %(cancelled)d task(s); asked %(asked)d running task(s) to stop; skipped %(finished)d finished task(s).")
            % {"cancelled": cancelled, "asked": asked, "finished": finished},
            messages.WARNING if finished else messages.SUCCESS,
        )

    @admin.action(description=_("Purge the dead-letter lists of the selected tasks' queues"), permissions=["operate"])
    def purge_dead_letters(self, request, queryset):
        names = sorted(set(queryset.values_list("queue", flat=True)))
        try:
            purge_dead_letters(names)
        except QueueUnavailable as exc:
            self.message_user(request, gettext("Redis did not answer (%(error)s); nothing more was purged.") % {"error": exc}, messages.ERROR)
            return
        text = gettext("Purged the dead-letter list of queue(s): %(queues)s.") % {"queues": ", ".join(names)}
        self.message_user(request, text, messages.SUCCESS)


# The Schedules page registers itself.
from tasks.schedules import admin as schedules_admin  # noqa: E402, F401  the Schedules page
