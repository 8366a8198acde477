"""Periodic tasks: what a schedule is, where schedules are declared, and when
they tick.

Two ways to declare one, both landing in the same place (``declared()``):

    MQ_SCHEDULES = {"nightly": {"task": "app.tasks.build", "cron": "0 3 * * *"}}

    @cron("*/5 * * * *")
    @task
    def refresh(): ...

Cron strings are evaluated by cronsim in settings.TIME_ZONE. cronsim follows
Debian cron through daylight-saving changes: a daily 02:30 runs at 03:00 on
the spring-forward day and once (not twice) on the fall-back day. A sixth,
leading field gives seconds ("*/10 * * * * *": every ten seconds).

This module knows no database: the firing, and the state it keeps, live in
tasks.worker.scheduler and tasks.schedules.models.
"""

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from cronsim import CronSim, CronSimError
from django.utils import timezone

from tasks import registry
from tasks.compat import InvalidTaskError, Task
from tasks.conf import mq_settings

CATCH_UP_POLICIES = ("latest", "all", "none")
TICK_FORMAT = "%Y%m%dT%H%M%SZ"
ID_PREFIX = "sched"
# A tick's task id is "sched:<name>:<tick>" and must fit the history's id
# column and the envelope's ID_PATTERN (64 characters of [A-Za-z0-9_.:-]).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")
MAX_NAME_LENGTH = 64 - len(f"{ID_PREFIX}::") - len("20260101T000000Z")

_decorated: dict[str, "Schedule"] = {}  # name -> Schedule, filled by @cron at import time


@dataclass(frozen=True)
class Schedule:
    name: str
    task: str  # the task's module path
    cron: str
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)
    queue: str | None = None  # None: the task's own queue
    catch_up: str = "latest"

    def task_id(self, tick):
        """The id of this schedule's firing at ``tick``: the same on every host,
        so the history row's primary key lets only one of them through."""
        return f"{ID_PREFIX}:{self.name}:{tick.astimezone(dt_timezone.utc).strftime(TICK_FORMAT)}"

    def tick_of(self, task_id):
        """The tick a task id of this schedule was fired for, or None."""
        prefix = f"{ID_PREFIX}:{self.name}:"
        if not task_id or not task_id.startswith(prefix):
            return None
        return datetime.strptime(task_id[len(prefix) :], TICK_FORMAT).replace(tzinfo=dt_timezone.utc)

    def ticks_back(self, until, after, limit):
        """Ticks t with after < t <= until, newest first, at most ``limit``."""
        ticks: list[datetime] = []
        for tick in _iterate(self.cron, until + timedelta(microseconds=1), reverse=True):
            if tick <= after or len(ticks) >= limit:
                break
            ticks.append(tick)
        return ticks

    def next_after(self, moment):
        """The first tick after ``moment`` (UTC), or None if it never ticks."""
        return next(_iterate(self.cron, moment), None)


def _iterate(expression, start, reverse=False):
    """cronsim's ticks from ``start`` in TIME_ZONE, as aware UTC datetimes.

    cronsim strips microseconds from ``start`` and, going backwards, counts
    the stripped instant itself as a tick candidate: ticks_back adds one
    microsecond so that a tick exactly at ``until`` is included.
    """
    local = start.astimezone(timezone.get_default_timezone())
    for tick in CronSim(expression, local, reverse=reverse):
        yield tick.astimezone(dt_timezone.utc)


def cron_problem(expression):
    """Why ``expression`` is not a cron string cronsim accepts, or ''."""
    if not isinstance(expression, str):
        return f"must be a string, not {type(expression).__name__}"
    try:
        CronSim(expression, datetime.now(dt_timezone.utc))
    except CronSimError as exc:
        return str(exc) or "invalid"
    return ""


def cron(expression, *, name=None, args=(), kwargs=None, queue=None, catch_up="latest"):
    """Fire the task below on ``expression``, stacked on top of @task.

    The schedule's name defaults to the task's path; `manage.py check`
    reports a bad expression, name or policy.
    """

    def declare(task):
        if not isinstance(task, Task):
            raise TypeError("@cron goes above @task: it schedules a task, not a plain function")
        schedule = Schedule(
            name=name or task.module_path,
            task=task.module_path,
            cron=expression,
            args=list(args),
            kwargs=dict(kwargs or {}),
            queue=queue,
            catch_up=catch_up,
        )
        _decorated[schedule.name] = schedule
        return task

    return declare


def from_setting(name, spec):
    """A Schedule from one MQ_SCHEDULES entry (checked by problems(), not here)."""
    spec = spec if isinstance(spec, dict) else {}
    return Schedule(
        name=name,
        task=spec.get("task", ""),
        cron=spec.get("cron", ""),
        args=spec.get("args", []),
        kwargs=spec.get("kwargs", {}),
        queue=spec.get("queue"),
        catch_up=spec.get("catch_up", "latest"),
    )


def declared():
    """Every schedule, from MQ_SCHEDULES and @cron, by name.

    A name declared both ways is the setting's (checks report it), so a
    deployment can override a schedule that ships with an app.
    """
    configured = mq_settings.MQ_SCHEDULES
    configured = configured if isinstance(configured, dict) else {}
    schedules = dict(_decorated)
    schedules.update({name: from_setting(name, spec) for name, spec in configured.items()})
    return schedules


def problems(schedule):
    """[(check id, message)] for what keeps ``schedule`` from firing."""
    found = []
    if not isinstance(schedule.name, str) or not NAME_PATTERN.match(schedule.name) or len(schedule.name) > MAX_NAME_LENGTH:
        found.append(
            ("mqsite.E104", f"the name must be 1 to {MAX_NAME_LENGTH} characters of letters, digits, '_', '.' or '-'")
        )
    if registry.get(schedule.task) is None:
        found.append(("mqsite.E101", f"task {schedule.task!r} is not a registered task"))
    problem = cron_problem(schedule.cron)
    if problem:
        found.append(("mqsite.E102", f"cron {schedule.cron!r} is not valid: {problem}"))
    if schedule.catch_up not in CATCH_UP_POLICIES:
        found.append(("mqsite.E103", f"catch_up must be one of {', '.join(CATCH_UP_POLICIES)}, not {schedule.catch_up!r}"))
    if schedule.queue is not None and not _queue_accepted(schedule):
        found.append(("mqsite.E103", f"queue {schedule.queue!r} is not a queue of the task's backend"))
    if not isinstance(schedule.args, (list, tuple)) or not isinstance(schedule.kwargs, dict):
        found.append(("mqsite.E103", "args must be a list and kwargs a dict"))
    return found


def _queue_accepted(schedule):
    if not isinstance(schedule.queue, str) or not schedule.queue:
        return False
    task = registry.get(schedule.task)
    if task is None:
        return True  # reported as an unknown task
    try:
        task.using(queue_name=schedule.queue)  # the backend validates its queues
    except InvalidTaskError:
        return False
    return True


def valid():
    """The declared schedules that can fire, by name."""
    return {name: schedule for name, schedule in declared().items() if not problems(schedule)}
