"""Figures about queues, workers, listeners and history, for queue_status,
the index page and /api/stats."""

from django.db.models import Count
from redis.exceptions import ResponseError

from tasks.queue import presence
from tasks.queue.backend import queue_for
from tasks.conf import mq_settings
from tasks.queue.connection import get_redis
from tasks.models import TaskRecord, TaskStatus


def queue_names():
    return list(dict.fromkeys([*mq_settings.MQ_QUEUES, *_configured_queue_names()]))


def _configured_queue_names():
    from django.conf import settings

    return [q for backend in getattr(settings, "TASKS", {}).values() for q in backend.get("QUEUES", [])]


def history_counts():
    counts = dict.fromkeys(TaskStatus.values, 0)
    for row in TaskRecord.objects.values("status").annotate(n=Count("id")).order_by():
        counts[row["status"]] = row["n"]
    return counts


def collect_status():
    client = get_redis()
    listeners = presence.active(client, "listener")
    return {
        "queues": {name: queue_for(name).counts() for name in queue_names()},
        "workers": presence.active(client, "worker"),
        "listeners": listeners,
        "channels": channel_subscribers(client, listeners),
        "history": history_counts(),
        "warnings": redis_warnings(client),
    }


def channel_subscribers(client, listeners):
    """Redis's own PUBSUB NUMSUB for the default channel and every channel a
    listener announces: it counts every subscriber, mqsite's or not, and shows
    a listener that is registered but not actually subscribed."""
    names = [mq_settings.MQ_DEFAULT_CHANNEL, *(c for listener in listeners for c in listener.get("channels", []))]
    names = list(dict.fromkeys(names))
    return {_text(name): count for name, count in client.pubsub_numsub(*names)}


def _text(value):
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


def redis_warnings(client):
    """Server settings that could silently drop queued tasks."""
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy", "noeviction")
    except ResponseError:  # CONFIG is disabled on some managed services
        return []
    # volatile-* policies evict only keys with a TTL, but worker leases have
    # one: an evicted lease makes a live worker's tasks run a second time.
    if policy != "noeviction":
        return [f"Redis maxmemory-policy is {policy!r}: under memory pressure it may evict queue keys or leases. Use noeviction."]
    return []
