"""The schedules as people look at them: queue_status, its JSON, the admin.

Reads only: looking never creates state rows (workers and the admin's own
page do), so a schedule no worker has seen yet shows no last run.
"""

from django.utils import timezone

from tasks.schedules.models import ScheduleState
from tasks.schedules import cron_problem, declared


def next_run(schedule, paused, now):
    """The next tick after ``now``, or None when paused or unparseable."""
    if paused or cron_problem(schedule.cron):
        return None
    return schedule.next_after(now)


def overview(now=None):
    """One dict per declared schedule, by name: the `schedules` list of
    `queue_status --json` (DESIGN section 3)."""
    now = now or timezone.now()
    schedules = declared()
    states = ScheduleState.objects.in_bulk(list(schedules))
    rows = []
    for name, schedule in sorted(schedules.items()):
        state = states.get(name)
        paused = bool(state and state.paused)
        last_run = schedule.tick_of(state.last_task_id) if state else None
        upcoming = next_run(schedule, paused, now)
        rows.append(
            {
                "name": name,
                "task": schedule.task,
                "cron": schedule.cron,
                "next_run": upcoming.isoformat() if upcoming else None,
                "last_run": last_run.isoformat() if last_run else None,
                "paused": paused,
            }
        )
    return rows
