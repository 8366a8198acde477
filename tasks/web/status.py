"""The one read model: every figure that `/`, `/api/stats`, `queue_status`
and `/metrics` show, read in one place.

Figures live in Redis and the database, never in this process's memory:
every worker adds its outcomes and durations to a per-queue hash when it
acknowledges, so one read from any web process on any host sees all of them,
and no web process holds state a restart loses.

A source that does not answer leaves its part out of the snapshot and its
error in it; each consumer decides what that means for it: the index shows
the history alone, /api/stats and queue_status refuse, /metrics reports
``mqsite_up 0`` for that part.
"""

import logging
import time
from dataclasses import dataclass, field

from django.db import DatabaseError
from redis.exceptions import RedisError

from tasks.conf import mq_settings
from tasks.models import TaskRecord
from tasks.queue.backend import queue_for
from tasks.queue.server import Server
from tasks.schedules.status import overview

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueueFigures:
    key: str
    pending: int
    in_flight: int
    delayed: int
    dead: int
    # Seconds the oldest waiting task has waited; None when it carries no time.
    oldest_pending_age: float | None
    # Counters summed over every worker: "outcome:<name>", "duration_bucket:<le>", "duration_sum".
    stats: dict = field(default_factory=dict)

    def as_status(self):
        """The queue's entry in the stable JSON (DESIGN.md section 3)."""
        return {"key": self.key, "pending": self.pending, "in_flight": self.in_flight, "delayed": self.delayed, "dead": self.dead}


@dataclass(frozen=True)
class Snapshot:
    """Every figure, read at one moment. The Redis parts are None when Redis
    did not answer, ``history`` is None when the database did not."""

    queues: dict | None = None  # name -> QueueFigures
    workers: list | None = None
    listeners: list | None = None
    channels: dict | None = None  # channel -> subscribers, as Redis counts them
    redis: dict | None = None  # {"kind": single|sentinel|cluster, "master": where writes go now}
    warnings: list = field(default_factory=list)
    history: dict | None = None  # status -> task rows
    schedules: list = field(default_factory=list)  # periodic tasks, from the database
    redis_error: Exception | None = None
    database_error: Exception | None = None

    @property
    def redis_up(self):
        return self.redis_error is None

    @property
    def database_up(self):
        return self.database_error is None

    def raise_if_down(self, redis=True, database=True):
        """Raise the error of a source a consumer cannot do without (Redis first,
        as a read that needs both would have met it first)."""
        if redis and self.redis_error is not None:
            raise self.redis_error
        if database and self.database_error is not None:
            raise self.database_error

    def as_status(self):
        """The stable JSON of `queue_status --json` and /api/stats (DESIGN.md
        section 3), with only the parts that answered."""
        status: dict[str, object] = {}
        if self.redis_up and self.queues is not None:
            status.update(
                queues={name: figures.as_status() for name, figures in self.queues.items()},
                workers=self.workers,
                listeners=self.listeners,
                channels=self.channels,
                warnings=self.warnings,
                redis=self.redis,
            )
        if self.database_up:
            status["history"] = self.history
            if self.schedules:  # the key appears once schedules exist
                status["schedules"] = self.schedules
        return status


def next_firings(schedules, count=5):
    """The dashboard's few schedules that fire soonest; paused ones last."""
    return sorted(schedules, key=lambda s: (s["paused"] or s["next_run"] is None, s["next_run"] or ""))[:count]


def read_snapshot(now=None):
    """Ask Redis and the database for every figure; never raises for a source
    that is down (see Snapshot)."""
    now = time.time() if now is None else now
    parts, redis_error = {}, None
    try:
        parts = _redis_parts(now)
    except RedisError as exc:
        redis_error = exc
        logger.warning("event=figures_partial part=redis error=%r", str(exc))
    history, schedules, database_error = None, [], None
    try:
        history = history_counts()
        schedules = overview()
    except DatabaseError as exc:
        database_error = exc
        logger.warning("event=figures_partial part=database error=%r", str(exc))
    return Snapshot(**parts, history=history, schedules=schedules, redis_error=redis_error, database_error=database_error)


def _redis_parts(now):
    # One socket timeout at most when Redis hangs: a timeout is never retried
    # (tasks/queue/connection.py), so a scrape still answers within
    # Prometheus's default 10 s timeout, with mqsite_up{component="redis"} 0.
    server = Server()
    listeners = server.listeners()
    return {
        "queues": {name: _queue_figures(name, now) for name in queue_names()},
        "workers": server.workers(),
        "listeners": listeners,
        "channels": server.channel_subscribers(listeners),
        "redis": server.topology(),
        "warnings": server.warnings(),
    }


def _queue_figures(name, now):
    queue = queue_for(name)
    return QueueFigures(**queue.counts(), oldest_pending_age=queue.oldest_pending_age(now), stats=queue.stats())


def queue_names():
    return list(dict.fromkeys([*mq_settings.MQ_QUEUES, *_configured_queue_names()]))


def _configured_queue_names():
    from django.conf import settings

    return [q for backend in getattr(settings, "TASKS", {}).values() for q in backend.get("QUEUES", [])]


def history_counts():
    return TaskRecord.objects.history_counts()


def collect_status():
    """The stable JSON of every figure, for consumers that need both sources:
    the error of one that is down is raised, not left out."""
    snapshot = read_snapshot()
    snapshot.raise_if_down()
    return snapshot.as_status()
