"""System checks: `manage.py check` reports bad mqsite settings.

Each check has an id that never changes meaning (README, "Configuration",
lists them), so a project may silence one with SILENCED_SYSTEM_CHECKS and
scripts may grep for it. New checks take the next free number; a retired
id is not reused.
"""

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from django.apps import AppConfig
from django.core.checks import CheckMessage, Error, Info, Warning, register
from django.utils.module_loading import import_string

from tasks.conf import mq_settings
from tasks.queue import topology

REDIS_SCHEMES = (
    "redis://",
    "rediss://",
    "unix://",
    "redis+sentinel://",
    "rediss+sentinel://",
    "redis+cluster://",
    "rediss+cluster://",
)
GLOB_CHARACTERS = ("*", "?", "[")
TASK_OPTION_NAMES = {"max_attempts": "MQ_MAX_ATTEMPTS", "time_limit": "MQ_TASK_TIME_LIMIT"}


class NumberRule(NamedTuple):
    check_id: str
    setting: str
    whole: bool  # a count, not a duration
    minimum: float
    allow_none: bool  # None means "no limit"

    def broken_by(self, value: object) -> bool:
        if value is None:
            return not self.allow_none
        # bool is an int to Python, never a count or a duration to a reader.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return True
        return (self.whole and not isinstance(value, int)) or value < self.minimum

    def describe(self) -> str:
        kind = "a whole number" if self.whole else "a number"
        return f"{kind} >= {self.minimum}" + (" or None" if self.allow_none else "")


NUMBERS = tuple(
    NumberRule(*rule)
    for rule in (
        ("mqsite.E002", "MQ_SOCKET_TIMEOUT", False, 0.1, False),
        ("mqsite.E003", "MQ_BLOCK_SECONDS", False, 0.01, False),
        ("mqsite.E009", "MQ_MAX_MESSAGE_BYTES", True, 64, False),
        ("mqsite.E010", "MQ_MAX_ATTEMPTS", True, 1, False),
        ("mqsite.E011", "MQ_RETRY_BASE_SECONDS", False, 0, False),
        ("mqsite.E012", "MQ_RETRY_MAX_SECONDS", False, 0, False),
        ("mqsite.E013", "MQ_TASK_TIME_LIMIT", False, 1, True),
        ("mqsite.E015", "MQ_LEASE_SECONDS", False, 1, False),
        ("mqsite.E016", "MQ_MAX_BATCH", True, 1, False),
        ("mqsite.E017", "MQ_BATCH_TARGET_SECONDS", False, 0, False),
        ("mqsite.E018", "MQ_SWEEP_GRACE_SECONDS", False, 0, False),
        ("mqsite.E019", "MQ_SWEEP_INTERVAL_SECONDS", False, 0.1, False),
        ("mqsite.E020", "MQ_QUEUE_MAX_LENGTH", True, 1, True),
        ("mqsite.E021", "MQ_DEAD_LETTER_MAX", True, 1, False),
        ("mqsite.E023", "MQ_API_MAX_BODY_BYTES", True, 2, False),
        ("mqsite.E024", "MQ_RETRY_AFTER_SECONDS", True, 0, False),
        ("mqsite.E032", "MQ_WORKER_CONCURRENCY", True, 1, False),
    )
)
NUMBER_RULES = {rule.setting: rule for rule in NUMBERS}


def is_str_map(value: object, non_empty_values: bool = True) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) and (v or not non_empty_values) for k, v in value.items()
    )


def is_str_list(value: object) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(entry, str) and entry for entry in value)


def importable(path: object) -> bool:
    try:
        import_string(path)  # type: ignore[arg-type]  # anything else fails here too, as it should
    except (ImportError, TypeError, ValueError):
        return False
    return True


def check_numbers() -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    for rule in NUMBERS:
        value = getattr(mq_settings, rule.setting)
        if rule.broken_by(value):
            errors.append(Error(f"{rule.setting} must be {rule.describe()}, not {value!r}.", id=rule.check_id))
    return errors


def check_redis_url() -> list[CheckMessage]:
    url = mq_settings.MQ_REDIS_URL
    # Empty is allowed: commands that need Redis then say so (tasks/queue/connection.py).
    if isinstance(url, str) and (not url or url.startswith(REDIS_SCHEMES)):
        try:
            topology.parse(url) if url else None
        except ValueError as exc:
            return [Error(f"MQ_REDIS_URL: {exc}.", id="mqsite.E001")]
        return []
    return [Error(f"MQ_REDIS_URL must be a {', '.join(REDIS_SCHEMES)} URL, not {_redacted(url)!r}.", id="mqsite.E001")]


def _redacted(url: object) -> object:
    """The URL without its password, for a message that may reach a log."""
    if isinstance(url, str) and "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url


def _on_cluster() -> bool:
    url = mq_settings.MQ_REDIS_URL
    try:
        return isinstance(url, str) and bool(url) and topology.parse(url).kind == topology.CLUSTER
    except ValueError:
        return False  # E001 says what is wrong


def check_queue_keys_one_slot() -> list[CheckMessage]:
    """A queue's companions wrap its key in a hash tag ({key}:delayed...).
    Braces inside the key would make Redis hash only the part between the
    first { and }, so on a cluster the companions would land in another slot
    than the queue itself, and every script touching both fails with CROSSSLOT."""
    if not is_str_map(mq_settings.MQ_QUEUES):
        return []  # E005 says what is wrong
    return [
        Error(
            f"MQ_QUEUES[{name!r}] = {key!r}: a queue key may not contain {{ or }}; mqsite wraps it in a "
            "hash tag itself, and braces inside it would split the queue's keys over Redis Cluster slots.",
            id="mqsite.E030",
        )
        for name, key in mq_settings.MQ_QUEUES.items()
        if "{" in key or "}" in key
    ]


def check_no_patterns_on_cluster() -> list[CheckMessage]:
    handlers = mq_settings.MQ_CHANNEL_HANDLERS
    if not _on_cluster() or not is_str_map(handlers):
        return []
    return [
        Error(
            f"MQ_CHANNEL_HANDLERS[{name!r}] is a pattern; on Redis Cluster channels are sharded "
            "(SSUBSCRIBE) and pattern subscriptions cannot be: name channels one by one.",
            id="mqsite.E031",
        )
        for name in handlers
        if any(c in name for c in GLOB_CHARACTERS)
    ]


def check_block_below_socket_timeout() -> list[CheckMessage]:
    block, timeout = mq_settings.MQ_BLOCK_SECONDS, mq_settings.MQ_SOCKET_TIMEOUT
    if NUMBER_RULES["MQ_BLOCK_SECONDS"].broken_by(block) or NUMBER_RULES["MQ_SOCKET_TIMEOUT"].broken_by(timeout):
        return []  # a value that is not a number has its own error
    if block < timeout:
        return []
    return [
        Error(
            "MQ_BLOCK_SECONDS must be shorter than MQ_SOCKET_TIMEOUT, or a healthy blocking read would time out.",
            id="mqsite.E004",
        )
    ]


def check_queues() -> list[CheckMessage]:
    if is_str_map(mq_settings.MQ_QUEUES):
        return []
    return [Error("MQ_QUEUES must map queue names to Redis key names (non-empty strings).", id="mqsite.E005")]


def check_task_modules() -> list[CheckMessage]:
    if is_str_list(mq_settings.MQ_TASK_MODULES):
        return []
    return [Error("MQ_TASK_MODULES must be a list of module names.", id="mqsite.E006")]


def check_raw_message_tasks() -> list[CheckMessage]:
    tasks = mq_settings.MQ_RAW_MESSAGE_TASKS
    if not is_str_map(tasks):
        return [Error("MQ_RAW_MESSAGE_TASKS must map queue names to task paths.", id="mqsite.E007")]
    from tasks import registry

    return [
        Error(f"MQ_RAW_MESSAGE_TASKS[{queue!r}] = {path!r} is not a registered task.", id="mqsite.E008")
        for queue, path in tasks.items()
        if registry.get(path) is None
    ]


def check_task_options() -> list[CheckMessage]:
    options = mq_settings.MQ_TASK_OPTIONS
    error = Error(
        "MQ_TASK_OPTIONS must map task paths to {'max_attempts': n, 'time_limit': seconds or None, 'unique': bool}, "
        f"valid as MQ_MAX_ATTEMPTS and MQ_TASK_TIME_LIMIT, not {options!r}.",
        id="mqsite.E014",
    )
    if not isinstance(options, dict):
        return [error]
    for path, per_task in options.items():
        if not isinstance(path, str) or not isinstance(per_task, dict):
            return [error]
        for option, value in per_task.items():
            if option == "unique":
                if not isinstance(value, bool):
                    return [error]
                continue
            if option not in TASK_OPTION_NAMES or NUMBER_RULES[TASK_OPTION_NAMES[option]].broken_by(value):
                return [error]
    return []


def check_api_tokens() -> list[CheckMessage]:
    tokens = mq_settings.MQ_API_TOKENS
    # "name:" would accept an empty bearer token.
    if is_str_list(tokens) and all(entry.partition(":")[2 if ":" in entry else 0] for entry in tokens):
        return []
    return [Error("MQ_API_TOKENS must be a list of 'name:secret' strings with a non-empty secret.", id="mqsite.E022")]


def check_metrics_allow() -> list[CheckMessage]:
    value = mq_settings.MQ_METRICS_ALLOW
    error = Error(
        f"MQ_METRICS_ALLOW must be a list of IP networks such as '127.0.0.0/8', not {value!r}.", id="mqsite.E025"
    )
    if not is_str_list(value):
        return [error]
    try:
        for entry in value:
            ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return [error]
    return []


def check_default_channel() -> list[CheckMessage]:
    channel = mq_settings.MQ_DEFAULT_CHANNEL
    if isinstance(channel, str) and channel.strip():
        return []
    return [Error(f"MQ_DEFAULT_CHANNEL must be a non-empty channel name, not {channel!r}.", id="mqsite.E026")]


def check_channel_handlers() -> list[CheckMessage]:
    handlers = mq_settings.MQ_CHANNEL_HANDLERS
    if not is_str_map(handlers):
        return [Error("MQ_CHANNEL_HANDLERS must map channels or patterns to handler paths.", id="mqsite.E027")]
    return [
        Error(f"MQ_CHANNEL_HANDLERS[{channel!r}]: channel handler {path!r} cannot be imported.", id="mqsite.E028")
        for channel, path in handlers.items()
        if not importable(path)
    ]


def check_default_channel_handler() -> list[CheckMessage]:
    path = mq_settings.MQ_DEFAULT_CHANNEL_HANDLER
    if importable(path):
        return []
    return [Error(f"MQ_DEFAULT_CHANNEL_HANDLER: channel handler {path!r} cannot be imported.", id="mqsite.E029")]


SETTINGS_CHECKS: Sequence[Callable[[], list[CheckMessage]]] = (
    check_redis_url,
    check_numbers,
    check_block_below_socket_timeout,
    check_queues,
    check_queue_keys_one_slot,
    check_no_patterns_on_cluster,
    check_task_modules,
    check_raw_message_tasks,
    check_task_options,
    check_api_tokens,
    check_metrics_allow,
    check_default_channel,
    check_channel_handlers,
    check_default_channel_handler,
)


@register("mqsite")
def check_settings(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    return [message for check in SETTINGS_CHECKS for message in check()]


@register("mqsite", deploy=True)
def check_deploy(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    if not mq_settings.MQ_API_TOKENS:
        messages.append(
            Warning(
                "MQ_API_TOKENS is empty: the JSON API refuses every call.",
                hint="Set MQ_API_TOKENS=name:secret in the environment.",
                id="mqsite.W001",
            )
        )
    if mq_settings.MQ_FAULT:
        messages.append(
            Warning(
                f"MQ_FAULT is set ({mq_settings.MQ_FAULT!r}): workers will kill or freeze themselves on purpose.",
                hint="MQ_FAULT is for the fault test suite only; remove it.",
                id="mqsite.W003",
            )
        )
    return messages


@register("mqsite_redis", deploy=True)
def check_redis_eviction(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    """The Redis server's eviction policy must not drop queue keys.

    It asks the server itself, so it is a deploy check: it runs with
    `check --deploy` (alone: `check --deploy --tag mqsite_redis`), never on
    every `runserver` or `migrate`. An unreachable server is only noted: a
    build machine without Redis must still pass `check --deploy`.
    """
    from redis.exceptions import RedisError

    from tasks.queue.connection import get_redis
    from tasks.queue.server import server_warnings

    try:
        found = server_warnings(get_redis(retries=0))
    except RedisError as exc:
        return [Info(f"Could not ask Redis for its eviction policy: {exc}", id="mqsite.I001")]
    return [
        Warning(
            text,
            hint="CONFIG SET maxmemory-policy noeviction, and set it in the server's configuration too.",
            id="mqsite.W002",
        )
        for text in found
    ]
