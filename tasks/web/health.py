"""Is each dependency answering? For /healthz.

Each probe returns a small dict and never raises: a health check that
crashes tells a load balancer nothing. The failure detail goes to the log,
not to the (unauthenticated) response, which only says which part failed.
"""

import logging
import time

from django.db import DatabaseError
from redis.exceptions import RedisError

from tasks.queue.server import Server
from tasks.models import TaskRecord

logger = logging.getLogger(__name__)


def _timed(probe, name):
    started = time.perf_counter()
    try:
        probe()
    except (RedisError, DatabaseError, OSError) as exc:
        logger.warning("event=health_failed part=%s error=%r", name, str(exc))
        return {"ok": False, "error": f"{name} did not answer"}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 3)}


def redis_health():
    """Also names where writes go now (the Sentinel-managed master after a
    failover, the cluster's masters): an operator's first question."""
    found = {}

    def probe():
        server = Server()
        server.ping()
        found.update(server.topology())

    return {**_timed(probe, "Redis"), **found}


def database_health():
    return _timed(TaskRecord.objects.database_answers, "database")


def check_all():
    """(healthy, report) where report has one entry per dependency."""
    report = {"redis": redis_health(), "database": database_health()}
    return all(part["ok"] for part in report.values()), report
