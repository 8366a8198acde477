"""Figures about queues, workers, listeners and history, for queue_status,
the index page and /api/stats."""

from tasks.queue import presence
from tasks.queue.backend import queue_for
from tasks.conf import mq_settings
from tasks.queue.connection import get_redis, server_warnings
from tasks.models import TaskRecord
from tasks.storable import as_text


def queue_names():
    return list(dict.fromkeys([*mq_settings.MQ_QUEUES, *_configured_queue_names()]))


def _configured_queue_names():
    from django.conf import settings

    return [q for backend in getattr(settings, "TASKS", {}).values() for q in backend.get("QUEUES", [])]


def history_counts():
    return TaskRecord.objects.history_counts()


def collect_status():
    client = get_redis()
    listeners = presence.active(client, "listener")
    return {
        "queues": {name: queue_for(name).counts() for name in queue_names()},
        "workers": presence.active(client, "worker"),
        "listeners": listeners,
        "channels": channel_subscribers(client, listeners),
        "history": history_counts(),
        "warnings": server_warnings(client),
    }


def channel_subscribers(client, listeners):
    """Redis's own PUBSUB NUMSUB for the default channel and every channel a
    listener announces: it counts every subscriber, mqsite's or not, and shows
    a listener that is registered but not actually subscribed."""
    names = [mq_settings.MQ_DEFAULT_CHANNEL, *(c for listener in listeners for c in listener.get("channels", []))]
    names = list(dict.fromkeys(names))
    return {as_text(name): count for name, count in client.pubsub_numsub(*names)}
