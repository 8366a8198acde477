"""One task's page (/tasks/<id>) and the JSON its script polls
(/tasks/<id>/status), for people who may read the history.

The JSON is the page's own, same-origin and session-authenticated: the
token API (/api/tasks/<id>) is for programs. Both read one row by its
primary key; nothing here scans the history.
"""

from datetime import datetime, timedelta

from django.http import Http404, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from tasks.models import FINAL_STATUSES, TaskRecord, TaskStatus
from tasks.storable import unstorable
from tasks.web.access import refuse_unless_permitted

# A task's page shows its arguments and result: who may read the history may read it.
VIEW_PERMISSION = "tasks.view_taskrecord"
# Milliseconds between two polls of an unfinished task's status.
POLL_MS = 1500


def _record(task_id):
    record = None if unstorable(task_id) else TaskRecord.objects.filter(id=task_id).first()
    if record is None:
        raise Http404("no such task")
    return record


def _seconds(start, end):
    return (end - start).total_seconds() if start and end else None


def timeline(record):
    """Every attempt, oldest first: worker, start, duration and error of each.

    A failed attempt's entry (models.TaskRecord.errors) holds when it ended
    and, since the worker keeps it, how long it ran; the last attempt is the
    row itself when it has run and did not fail.
    """
    attempts = []
    for entry in record.errors or []:
        ended = _parse(entry.get("at"))
        duration = entry.get("duration")
        started = ended - timedelta(seconds=duration) if ended and isinstance(duration, (int, float)) else None
        attempts.append(
            {"number": entry.get("attempt"), "worker": entry.get("worker", ""), "started": started, "ended": ended,
             "duration": duration, "error": entry.get("exception", ""), "traceback": entry.get("traceback", "")}
        )
    # A READY row's started_at is its failed attempt's, already listed above.
    if record.started_at and record.status in (TaskStatus.RUNNING, TaskStatus.SUCCESSFUL, TaskStatus.CANCELLED):
        attempts.append(
            {"number": record.attempts, "worker": record.worker, "started": record.started_at, "ended": record.finished_at,
             "duration": _seconds(record.started_at, record.finished_at), "error": "", "traceback": "", "status": record.status}
        )
    return attempts


def _parse(value):
    try:
        return datetime.fromisoformat(value) if value else None
    except (TypeError, ValueError):
        return None


def status_json(record):
    return {
        "id": record.id,
        "status": record.status,
        "label": str(record.get_status_display()),
        "final": record.status in FINAL_STATUSES,
        "attempts": record.attempts,
        "worker": record.worker,
        "progress": record.progress,
    }


@require_safe
def task_page(request, task_id):
    """One task: its status (live while unfinished), progress, attempts, result."""
    if refusal := refuse_unless_permitted(request, VIEW_PERMISSION):
        return refusal
    record = _record(task_id)
    context = {
        "task": record,
        "final": record.status in FINAL_STATUSES,
        "duration": _seconds(record.started_at, record.finished_at),
        "attempts": timeline(record),
        "progress": record.progress,
        "poll_ms": POLL_MS,
    }
    return render(request, "task.html", context)


@require_safe
def task_status(request, task_id):
    """The live part of a task's page, as JSON. 403 (never a login redirect:
    a script cannot follow one) for who may not read it, 404 for no such task."""
    if not request.user.has_perm(VIEW_PERMISSION):
        return JsonResponse({"error": "forbidden"}, status=403)
    try:
        record = _record(task_id)
    except Http404:
        return JsonResponse({"error": "not_found"}, status=404)
    response = JsonResponse(status_json(record))
    response["Cache-Control"] = "no-store"
    return response
