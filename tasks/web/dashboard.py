"""The index: every figure (queues, workers, listeners, schedules, history),
the charts, the running tasks and the dead letters; and the one action it
offers, re-enqueueing a dead letter's task (staff with the operate
permission, POST with CSRF, as the admin's action does).
"""

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST, require_safe
from redis.exceptions import RedisError

from tasks.exceptions import QueueUnavailable
from tasks.models import REQUEUEABLE, TaskRecord, TaskStatus
from tasks.queue.backend import queue_for, requeue
from tasks.storable import unstorable
from tasks.web.access import refuse_unless_permitted
from tasks.web.charts import bars, rate_polylines, read_charts
from tasks.web.status import next_firings, queue_names, read_snapshot

# Who may re-enqueue: as the admin's "operate" actions ask.
OPERATE_PERMISSION = "tasks.change_taskrecord"
SHOWN = 20  # running tasks and dead letters listed, newest first


@require_safe
def index(request):
    snapshot = read_snapshot()
    # Without Redis the page still shows the history, which lives in the database.
    snapshot.raise_if_down(redis=False)
    context = {
        "status": snapshot.as_status(),
        "redis_down": not snapshot.redis_up,
        "next_firings": next_firings(snapshot.schedules),
        "running": _running(),
        # The history's statuses as the reader's language says them.
        "history": [(TaskStatus(name).label, count) for name, count in (snapshot.history or {}).items() if name in TaskStatus.values],
        "may_requeue": request.user.is_staff and request.user.has_perm(OPERATE_PERMISSION),
    }
    if snapshot.redis_up:
        context.update(_charts(snapshot), dead_letters=_dead_letters())
    return render(request, "index.html", context)


def _charts(snapshot):
    charts = read_charts(queue_names())
    depth = [(name, q.pending + q.in_flight + q.delayed) for name, q in snapshot.queues.items()]
    return {
        "charts": [{"queue": chart, "lines": rate_polylines(chart)} for chart in charts],
        "depth_bars": bars(depth),
        "latency_rows": [chart for chart in charts if chart.latency],
    }


def _running():
    """The running tasks, longest running first (a read of the status index, LIMITed)."""
    now = timezone.now()
    rows = TaskRecord.objects.filter(status=TaskStatus.RUNNING).order_by("started_at")[:SHOWN]
    return [{"task": row, "seconds": (now - row.started_at).total_seconds() if row.started_at else None} for row in rows]


def _dead_letters():
    """The newest dead letters of every queue, with their history row's
    status when there is one (a letter of an unknown task has none)."""
    letters = []
    for name in queue_names():
        for letter in queue_for(name).dead_letters(0, SHOWN - 1):
            letters.append({**letter, "queue": name})
    letters.sort(key=lambda letter: str(letter.get("at", "")), reverse=True)
    letters = letters[:SHOWN]
    ids = [str(letter.get("id", "")) for letter in letters if letter.get("id") and not unstorable(str(letter["id"]))]
    statuses = dict(TaskRecord.objects.filter(id__in=ids).values_list("id", "status"))
    for letter in letters:
        letter["status"] = statuses.get(str(letter.get("id", "")))
        letter["status_label"] = TaskStatus(letter["status"]).label if letter["status"] in TaskStatus.values else ""
        letter["requeueable"] = letter["status"] in REQUEUEABLE
    return letters


@require_POST
def requeue_dead_letter(request):
    """Re-enqueue one dead letter's task under its id; back to the index (303)."""
    if refusal := refuse_unless_permitted(request, OPERATE_PERMISSION):
        return refusal
    if not request.user.is_staff:
        raise PermissionDenied("re-enqueueing is for staff")
    task_id = request.POST.get("requeue", "")
    record = None if unstorable(task_id) else TaskRecord.objects.filter(id=task_id).first()
    back = HttpResponseRedirect(reverse("tasks:index") + "#dead-letters", status=303)
    if record is None:
        messages.error(request, _("No task with that id is in the history."))
        return back
    try:
        done = record.status in REQUEUEABLE and requeue(record)
    except (QueueUnavailable, RedisError):
        messages.error(request, _("Redis did not take the task; nothing changed. Please try again."))
        return back
    if done:
        messages.success(request, _("Re-enqueued task %(id)s.") % {"id": task_id})
    else:
        messages.warning(request, _("Only a failed or dead task of a registered task can be re-enqueued."))
    return back
