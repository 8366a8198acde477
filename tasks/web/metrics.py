"""/metrics: mqsite's figures in the Prometheus text exposition format 0.0.4.

Everything comes from Redis and the database, never from this process's
memory: every worker adds its outcomes and durations to a per-queue hash
when it acknowledges (ReliableQueue.stats), so one scrape of any web process
sees all workers on all hosts, and no web worker holds state a restart loses.

``gather`` reads the figures; ``render`` turns them into text and is pure, so
the format is tested without a server. A dependency that does not answer
leaves its series out and sets ``mqsite_up{component=...}`` to 0: the scrape
itself still succeeds, which is what an alert on ``mqsite_up == 0`` needs.
"""

import ipaddress
import logging
import math
from bisect import insort
from dataclasses import dataclass, field

from django.db import DatabaseError
from django.http import HttpResponse, HttpResponseForbidden
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_safe
from redis.exceptions import RedisError

from tasks.queue import presence
from tasks.web.api import ApiError, authenticate
from tasks.conf import mq_settings
from tasks.queue.connection import get_redis
from tasks.queue.reliable import ReliableQueue
from tasks.web.status import channel_subscribers, history_counts, queue_names
from tasks.worker.outcomes import DURATION_BUCKETS

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OUTCOMES = ("succeeded", "retried", "failed", "dead")
# Headers a reverse proxy adds. Behind one on the same host every request
# arrives from 127.0.0.1, so only a request without them is really local.
PROXY_HEADERS = (
    "HTTP_FORWARDED",
    "HTTP_X_FORWARDED_FOR",
    "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_FORWARDED_HOST",
    "HTTP_X_REAL_IP",
)


# --- gathering -------------------------------------------------------------------
def gather():
    """Every figure /metrics shows. A part whose source is down is left out."""
    figures = {"up": {"redis": False, "database": False}}
    try:
        figures.update(_redis_figures())
        figures["up"]["redis"] = True
    except RedisError as exc:
        logger.warning("event=metrics_partial part=redis error=%r", str(exc))
    try:
        figures["history"] = history_counts()
        figures["up"]["database"] = True
    except DatabaseError as exc:
        logger.warning("event=metrics_partial part=database error=%r", str(exc))
    return figures


def _redis_figures():
    # No retry: a hung Redis costs one socket timeout, well inside
    # Prometheus's default 10 s scrape timeout, so the scrape reports up=0.
    client = get_redis(retries=0)
    queues = {}
    for name in queue_names():
        queue = ReliableQueue(client, name, mq_settings.queue_key(name))
        queues[name] = {**queue.counts(), "stats": queue.stats()}
    listeners = presence.active(client, "listener")
    return {
        "queues": queues,
        "workers": presence.active(client, "worker"),
        "listeners": listeners,
        "channels": channel_subscribers(client, listeners),
    }


# --- rendering (pure) ------------------------------------------------------------
@dataclass
class Family:
    name: str
    kind: str
    help: str
    samples: list = field(default_factory=list)  # (suffix, labels as pairs, value)

    def add(self, value, suffix="", **labels):
        self.samples.append((suffix, tuple(labels.items()), value))
        return self


def render(figures):
    """The exposition text for figures shaped like ``gather()``'s."""
    return exposition(families(figures))


def families(figures):
    result = [Family("mqsite_up", "gauge", "1 if the component answered this scrape, else 0.")]
    for component in ("redis", "database"):
        result[0].add(int(bool(figures["up"].get(component))), component=component)
    if "queues" in figures:
        result += _queue_families(figures["queues"])
        result += _process_families(figures)
    if "history" in figures:
        history = Family("mqsite_history_tasks", "gauge", "Task history rows in the database, by status.")
        for status, count in figures["history"].items():
            history.add(count, status=status)
        result.append(history)
    return [family for family in result if family.samples]


def _queue_families(queues):
    gauges = {
        part: Family(f"mqsite_queue_{part}", "gauge", text)
        for part, text in (
            ("pending", "Tasks waiting in the queue list (recovered ones included)."),
            ("in_flight", "Tasks taken by a worker and not yet acknowledged."),
            ("delayed", "Tasks waiting for a retry or their run_after time."),
            ("dead", "Entries in the dead-letter list."),
        )
    }
    total = Family("mqsite_tasks_total", "counter", "Task runs finished, by outcome, counted by every worker.")
    duration = Family("mqsite_task_duration_seconds", "histogram", "Wall-clock time of a task run.")
    for name, figures in queues.items():
        for part, family in gauges.items():
            family.add(figures[part], queue=name)
        stats = figures.get("stats", {})
        outcomes = [*OUTCOMES, *sorted(k[8:] for k in stats if k.startswith("outcome:") and k[8:] not in OUTCOMES)]
        for outcome in outcomes:
            total.add(stats.get(f"outcome:{outcome}", 0), queue=name, outcome=outcome)
        _histogram(duration, stats, queue=name)
    return [*gauges.values(), total, duration]


def _histogram(family, stats, **labels):
    """Workers store per-bucket counts; Prometheus wants them cumulative."""
    counts = {bound: 0.0 for bound in DURATION_BUCKETS}
    bounds = sorted(counts)
    for key, value in stats.items():
        if key.startswith("duration_bucket:"):
            bound = float(key.partition(":")[2])
            if bound not in counts:  # written by a worker with other buckets
                counts[bound] = 0.0
                insort(bounds, bound)
            counts[bound] += value
    if bounds[-1] != math.inf:
        bounds.append(math.inf)
        counts[math.inf] = 0.0
    running = 0.0
    for bound in bounds:
        running += counts[bound]
        family.add(running, "_bucket", **labels, le=_bound(bound))
    family.add(stats.get("duration_sum", 0.0), "_sum", **labels)
    family.add(running, "_count", **labels)


def _process_families(figures):
    workers = Family("mqsite_workers", "gauge", "Queue workers alive (heartbeat within three leases).")
    processed = Family("mqsite_worker_processed_total", "counter", "Tasks run by one worker since it started.")
    workers.add(len(figures["workers"]))
    for worker in figures["workers"]:
        processed.add(worker.get("processed", 0), worker=worker["id"])
    listeners = Family("mqsite_listeners", "gauge", "Channel listeners alive (heartbeat within three leases).")
    received = Family(
        "mqsite_listener_received_total", "counter", "Messages received by one listener since it started."
    )
    listeners.add(len(figures["listeners"]))
    for listener in figures["listeners"]:
        received.add(listener.get("received", 0), listener=listener["id"])
    subscribers = Family(
        "mqsite_channel_subscribers",
        "gauge",
        "Subscribers of a channel as Redis counts them (PUBSUB NUMSUB), mqsite's or not.",
    )
    for channel, count in figures.get("channels", {}).items():
        subscribers.add(count, channel=channel)
    return [workers, processed, listeners, received, subscribers]


def exposition(families):
    lines = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for suffix, labels, value in family.samples:
            text = ",".join(f'{name}="{_escape_label(str(v))}"' for name, v in labels)
            lines.append(
                f"{family.name}{suffix}{{{text}}} {_number(value)}"
                if text
                else f"{family.name}{suffix} {_number(value)}"
            )
    return "\n".join(lines) + "\n"


def _escape_help(text):
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text):
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _bound(value):
    # As the official clients write bounds: 1.0, not 1, so le labels stay
    # the same series whichever client or version wrote them.
    return "+Inf" if value == math.inf else repr(float(value))


def _number(value):
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    # Counters come back from Redis as floats; 3 reads better than 3.0.
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


# --- the view ----------------------------------------------------------------------
def allowed(request):
    """A direct request from an allowed network, or one with an API token."""
    if _from_allowed_network(request):
        return True
    try:
        authenticate(request)
    except ApiError:
        return False
    return True


def _from_allowed_network(request):
    if any(request.META.get(header) for header in PROXY_HEADERS):
        return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:  # ::ffff:127.0.0.1 on a dual-stack socket
        address = address.ipv4_mapped
    for entry in mq_settings.MQ_METRICS_ALLOW:
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except (TypeError, ValueError):
            continue  # reported by `manage.py check`; never widens access
    return False


@require_safe
def metrics(request):
    if not allowed(request):
        return HttpResponseForbidden(
            "/metrics is readable from MQ_METRICS_ALLOW networks or with 'Authorization: Bearer <API token>'.\n",
            content_type="text/plain; charset=utf-8",
        )
    response = HttpResponse(render(gather()), content_type=CONTENT_TYPE)
    add_never_cache_headers(response)
    return response
