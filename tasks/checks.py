"""System checks: `manage.py check` reports bad mqsite settings."""

import ipaddress

from django.core.checks import Error, Info, Warning, register

from tasks.conf import mq_settings


def _number(name, minimum, allow_none=False):
    value = getattr(mq_settings, name)
    if value is None and allow_none:
        return []
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        return [Error(f"{name} must be a number >= {minimum}, not {value!r}.", id=f"mqsite.E_{name}")]
    return []


def _networks(name):
    value = getattr(mq_settings, name)
    error = Error(f"{name} must be a list of IP networks such as '127.0.0.0/8', not {value!r}.", id=f"mqsite.E_{name}")
    if not isinstance(value, (list, tuple)) or not all(isinstance(entry, str) for entry in value):
        return [error]
    try:
        for entry in value:
            ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return [error]
    return []


@register("mqsite")
def check_settings(app_configs, **kwargs):
    errors = []
    for name, minimum in (
        ("MQ_SOCKET_TIMEOUT", 0.1),
        ("MQ_BLOCK_SECONDS", 0.01),
        ("MQ_MAX_MESSAGE_BYTES", 64),
        ("MQ_MAX_ATTEMPTS", 1),
        ("MQ_RETRY_BASE_SECONDS", 0),
        ("MQ_RETRY_MAX_SECONDS", 0),
        ("MQ_LEASE_SECONDS", 1),
        ("MQ_MAX_BATCH", 1),
        ("MQ_BATCH_TARGET_SECONDS", 0),
        ("MQ_SWEEP_GRACE_SECONDS", 0),
        ("MQ_SWEEP_INTERVAL_SECONDS", 0.1),
        ("MQ_DEAD_LETTER_MAX", 1),
        ("MQ_API_MAX_BODY_BYTES", 2),
    ):
        errors += _number(name, minimum)
    errors += _number("MQ_TASK_TIME_LIMIT", 1, allow_none=True)
    errors += _number("MQ_QUEUE_MAX_LENGTH", 1, allow_none=True)
    if not errors and mq_settings.MQ_BLOCK_SECONDS >= mq_settings.MQ_SOCKET_TIMEOUT:
        errors.append(
            Error(
                "MQ_BLOCK_SECONDS must be shorter than MQ_SOCKET_TIMEOUT, or a healthy blocking read would time out.",
                id="mqsite.E_BLOCK",
            )
        )
    if not isinstance(mq_settings.MQ_QUEUES, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in mq_settings.MQ_QUEUES.items()
    ):
        errors.append(Error("MQ_QUEUES must map queue names to Redis key names.", id="mqsite.E_QUEUES"))
    errors += _networks("MQ_METRICS_ALLOW")
    for name in ("MQ_RAW_MESSAGE_TASKS", "MQ_TASK_OPTIONS", "MQ_CHANNEL_HANDLERS"):
        if not isinstance(getattr(mq_settings, name), dict):
            errors.append(Error(f"{name} must be a dict.", id=f"mqsite.E_{name}"))
    if not errors:
        from tasks import registry

        for queue, path in mq_settings.MQ_RAW_MESSAGE_TASKS.items():
            if registry.get(path) is None:
                errors.append(
                    Error(f"MQ_RAW_MESSAGE_TASKS[{queue!r}] = {path!r} is not a registered task.", id="mqsite.E_RAW_TASK")
                )
    return errors


@register("mqsite", deploy=True)
def check_deploy(app_configs, **kwargs):
    errors = []
    if not mq_settings.MQ_API_TOKENS:
        errors.append(
            Warning(
                "MQ_API_TOKENS is empty: the JSON API refuses every call.",
                hint="Set MQ_API_TOKENS=name:secret in the environment.",
                id="mqsite.W_NO_TOKENS",
            )
        )
    return errors


@register("mqsite_redis", deploy=True)
def check_redis_eviction(app_configs, **kwargs):
    """The Redis server's eviction policy must not drop queue keys.

    It asks the server itself, so it is a deploy check: it runs with
    `check --deploy` (alone: `check --deploy --tag mqsite_redis`), never on
    every `runserver` or `migrate`. An unreachable server is only noted: a
    build machine without Redis must still pass `check --deploy`.
    """
    from redis.exceptions import RedisError

    from tasks.queue.connection import get_redis, server_warnings

    try:
        found = server_warnings(get_redis(retries=0))
    except RedisError as exc:
        return [Info(f"Could not ask Redis for its eviction policy: {exc}", id="mqsite.I_REDIS_UNREACHABLE")]
    return [
        Warning(
            text,
            hint="CONFIG SET maxmemory-policy noeviction, and set it in the server's configuration too.",
            id="mqsite.W_REDIS_EVICTION",
        )
        for text in found
    ]
