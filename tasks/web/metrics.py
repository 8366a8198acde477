"""/metrics: the read model's figures for Prometheus, through prometheus-client.

The figures are read from Redis and the database on every scrape (see
tasks/web/status.py), never counted in this process: a custom collector turns
one snapshot into metric families on a private registry made for the scrape,
and the library writes the format the scraper asks for (the text format
0.0.4, or OpenMetrics when its Accept header prefers it). A dependency that
does not answer leaves its series out and sets ``mqsite_up{component=...}``
to 0: the scrape itself still succeeds, which is what an alert on
``mqsite_up == 0`` needs.
"""

import math

from django.http import HttpResponse, HttpResponseForbidden
from django.utils.cache import add_never_cache_headers, patch_vary_headers
from django.views.decorators.http import require_safe
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from tasks.web.auth import may_read_metrics
from tasks.web.status import read_snapshot
from tasks.worker.outcomes import DURATION_BUCKETS

# Every outcome has a series from the start, so rate() works on the first task.
OUTCOMES = ("succeeded", "retried", "failed", "dead")
QUEUE_GAUGES = (
    ("pending", "Tasks waiting in the queue list (recovered ones included)."),
    ("in_flight", "Tasks taken by a worker and not yet acknowledged."),
    ("delayed", "Tasks waiting for a retry or their run_after time."),
    ("dead", "Entries in the dead-letter list."),
)


class SnapshotCollector:
    """Metric families of one read-model snapshot (prometheus-client's custom
    collector protocol: ``collect()`` yields families)."""

    def __init__(self, snapshot):
        self.snapshot = snapshot

    def collect(self):
        snapshot = self.snapshot
        up = GaugeMetricFamily("mqsite_up", "1 if the component answered this scrape, else 0.", labels=["component"])
        up.add_metric(["redis"], int(snapshot.redis_up))
        up.add_metric(["database"], int(snapshot.database_up))
        yield up
        if snapshot.redis_up:
            yield from _queue_families(snapshot.queues)
            yield from _process_families(snapshot)
        if snapshot.database_up:
            history = GaugeMetricFamily(
                "mqsite_history_tasks", "Task history rows in the database, by status.", labels=["status"]
            )
            for status, count in snapshot.history.items():
                history.add_metric([status], count)
            yield history


def _queue_families(queues):
    gauges = {
        part: GaugeMetricFamily(f"mqsite_queue_{part}", text, labels=["queue"]) for part, text in QUEUE_GAUGES
    }
    age = GaugeMetricFamily(
        "mqsite_queue_oldest_pending_age_seconds",
        "Seconds the oldest waiting task has waited since it was enqueued (0 when none waits). "
        "Absent while the oldest is a raw payload, which carries no time.",
        labels=["queue"],
    )
    total = CounterMetricFamily(
        "mqsite_tasks", "Task runs finished, by outcome, counted by every worker.", labels=["queue", "outcome"]
    )
    duration = HistogramMetricFamily("mqsite_task_duration_seconds", "Wall-clock time of a task run.", labels=["queue"])
    for name, figures in queues.items():
        for part, family in gauges.items():
            family.add_metric([name], getattr(figures, part))
        if figures.oldest_pending_age is not None:
            age.add_metric([name], figures.oldest_pending_age)
        stats = figures.stats
        recorded = sorted(key[8:] for key in stats if key.startswith("outcome:") and key[8:] not in OUTCOMES)
        for outcome in (*OUTCOMES, *recorded):
            total.add_metric([name, outcome], stats.get(f"outcome:{outcome}", 0))
        duration.add_metric([name], buckets=cumulative_buckets(stats), sum_value=stats.get("duration_sum", 0.0))
    return [*gauges.values(), age, total, duration]


def cumulative_buckets(stats):
    """[(le, count)] from the per-bucket counts workers store, cumulative as
    Prometheus wants them, ending with +Inf. A bound another version of the
    worker wrote is kept, so no run goes uncounted."""
    counts = dict.fromkeys([*DURATION_BUCKETS, math.inf], 0.0)
    for key, value in stats.items():
        if key.startswith("duration_bucket:"):
            bound = float(key.partition(":")[2])
            counts[bound] = counts.get(bound, 0.0) + value
    running, buckets = 0.0, []
    for bound in sorted(counts):
        running += counts[bound]
        buckets.append((_bound(bound), running))
    return buckets


def _bound(value):
    # As the official clients write bounds: 1.0, not 1, so le labels stay
    # the same series whichever client or version wrote them.
    return "+Inf" if value == math.inf else repr(float(value))


def _process_families(snapshot):
    workers = _presence_families(
        snapshot.workers,
        ("mqsite_workers", "Queue workers alive (heartbeat within three leases)."),
        ("mqsite_worker_processed", "Tasks run by one worker since it started.", "worker", "processed"),
    )
    # Busy against total: a worker whose slots are all busy for long wants
    # more --concurrency (I/O-bound tasks) or more processes (CPU-bound ones).
    busy = GaugeMetricFamily("mqsite_worker_busy_slots", "Tasks one worker is running or recording now.", labels=["worker"])
    slots = GaugeMetricFamily("mqsite_worker_slots", "Tasks one worker may run at once (--concurrency).", labels=["worker"])
    for member in snapshot.workers:
        busy.add_metric([member["id"]], member.get("busy", 0))
        slots.add_metric([member["id"]], member.get("slots", 1))
    workers += [busy, slots]
    listeners = _presence_families(
        snapshot.listeners,
        ("mqsite_listeners", "Channel listeners alive (heartbeat within three leases)."),
        ("mqsite_listener_received", "Messages received by one listener since it started.", "listener", "received"),
    )
    subscribers = GaugeMetricFamily(
        "mqsite_channel_subscribers",
        "Subscribers of a channel as Redis counts them (PUBSUB NUMSUB), mqsite's or not.",
        labels=["channel"],
    )
    for channel, count in snapshot.channels.items():
        subscribers.add_metric([channel], count)
    return [*workers, *listeners, subscribers]


def _presence_families(members, alive, counter):
    """How many processes of a kind are alive, and one counter of each."""
    name, text = alive
    count = GaugeMetricFamily(name, text)
    count.add_metric([], len(members))
    name, text, label, figure = counter
    per_member = CounterMetricFamily(name, text, labels=[label])
    for member in members:
        per_member.add_metric([member["id"]], member.get(figure, 0))
    return [count, per_member]


def exposition(snapshot, accept=""):
    """(body, content type) of a snapshot, in the format ``accept`` prefers."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    encode, content_type = choose_encoder(accept)
    return encode(registry), content_type


@require_safe
def metrics(request):
    if not may_read_metrics(request):
        return HttpResponseForbidden(
            "/metrics is readable from MQ_METRICS_ALLOW networks or with 'Authorization: Bearer <API token>'.\n",
            content_type="text/plain; charset=utf-8",
        )
    body, content_type = exposition(read_snapshot(), request.headers.get("Accept", ""))
    response = HttpResponse(body, content_type=content_type)
    patch_vary_headers(response, ["Accept"])
    add_never_cache_headers(response)
    return response
