"""The admin's Schedules page: every declared schedule with its last run and
outcome, its next run, and pause/resume.

Schedules are declared in code and settings, so the page cannot add or edit
one; opening it creates the state rows of schedules no worker has seen yet,
so every declared schedule is listed. Pause, resume and delete (a reset) are
POST actions (CSRF-checked like every admin action) gated on the change
permission of the schedule model.
"""

from django.contrib import admin, messages
from django.db.models import OuterRef, Subquery
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import gettext, ngettext

from tasks.admin_display import status_badge_html
from tasks.models import TaskRecord
from tasks.schedules.models import ScheduleState
from tasks.schedules.status import next_run
from tasks.schedules import declared


@admin.register(ScheduleState)
class ScheduleStateAdmin(admin.ModelAdmin):
    list_display = ["name", "task", "cron", "last_run", "last_outcome", "next_run", "paused"]
    list_filter = ["paused"]
    search_fields = ["name"]
    actions = ["pause_schedules", "resume_schedules"]
    fields = ("name", "task", "cron", "catch_up", "paused", "last_run", "last_outcome", "last_task_id", "next_run")
    readonly_fields = fields

    def changelist_view(self, request, extra_context=None):
        ScheduleState.objects.ensure(declared(), timezone.now())
        return super().changelist_view(request, extra_context)

    def get_queryset(self, request):
        outcome = TaskRecord.objects.filter(id=OuterRef("last_task_id")).values("status")[:1]
        return super().get_queryset(request).annotate(last_status=Subquery(outcome))

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_operate_permission(self, request):
        return request.user.has_perm(f"{self.opts.app_label}.change_{self.opts.model_name}")

    def has_delete_permission(self, request, obj=None):
        # A deleted row of a declared schedule comes back unpaused, from now:
        # a resume, which needs the change permission.
        return super().has_delete_permission(request, obj) and self.has_operate_permission(request)

    def _schedule(self, state):
        return declared().get(state.name)

    @admin.display(description=_("task"))
    def task(self, state):
        schedule = self._schedule(state)
        return schedule.task if schedule else gettext("(no longer declared)")

    @admin.display(description=_("cron"))
    def cron(self, state):
        schedule = self._schedule(state)
        return schedule.cron if schedule else "-"

    @admin.display(description=_("catch up"))
    def catch_up(self, state):
        schedule = self._schedule(state)
        return schedule.catch_up if schedule else "-"

    @admin.display(description=_("last run"))
    def last_run(self, state):
        schedule = self._schedule(state)
        return (schedule.tick_of(state.last_task_id) if schedule else None) or "-"

    @admin.display(description=_("outcome"))
    def last_outcome(self, state):
        status = getattr(state, "last_status", None)
        if status is None and state.last_task_id:
            status = TaskRecord.objects.filter(id=state.last_task_id).values_list("status", flat=True).first()
        return status_badge_html(status) if status else "-"

    @admin.display(description=_("next run"))
    def next_run(self, state):
        schedule = self._schedule(state)
        return (next_run(schedule, state.paused, timezone.now()) if schedule else None) or "-"

    @admin.action(description=_("Pause the selected schedules (on every host)"), permissions=["operate"])
    def pause_schedules(self, request, queryset):
        count = queryset.pause()
        self.message_user(request, ngettext("Paused %d schedule.", "Paused %d schedules.", count) % count, messages.SUCCESS)

    @admin.action(description=_("Resume the selected schedules (from now: paused ticks are not caught up)"), permissions=["operate"])
    def resume_schedules(self, request, queryset):
        count = queryset.resume(timezone.now())
        self.message_user(request, ngettext("Resumed %d schedule.", "Resumed %d schedules.", count) % count, messages.SUCCESS)
