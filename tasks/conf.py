"""mqsite's settings: one typed property per MQ_* setting, with its default.

Read lazily, on every access, so that ``override_settings`` in tests and
per-process environment changes are always seen (the pattern of
django-cors-headers' conf.py). The types say what a valid value is;
tasks/checks.py reports a value that is not (``manage.py check``).
"""

from collections.abc import Mapping, Sequence
from typing import Any, Literal, overload

from django.conf import settings

Number = int | float


class MqSettings:
    # Connection to the Redis server that carries queues and channels.
    @property
    def MQ_REDIS_URL(self) -> str:
        return getattr(settings, "MQ_REDIS_URL", "redis://127.0.0.1:6379/0")

    # Socket timeout for every Redis call. Blocking calls use MQ_BLOCK_SECONDS,
    # which must stay below it, or redis-py would time out a healthy BLMOVE.
    @property
    def MQ_SOCKET_TIMEOUT(self) -> Number:
        return getattr(settings, "MQ_SOCKET_TIMEOUT", 5.0)

    @property
    def MQ_BLOCK_SECONDS(self) -> Number:
        return getattr(settings, "MQ_BLOCK_SECONDS", 1.0)

    # Queue name (as used by @task(queue_name=...)) -> Redis list key.
    # Names not listed map to "mq:queue:<name>".
    @property
    def MQ_QUEUES(self) -> Mapping[str, str]:
        return getattr(settings, "MQ_QUEUES", {"default": "task:prodcons:queue"})

    # Task modules imported at start-up besides every app's tasks.py.
    @property
    def MQ_TASK_MODULES(self) -> Sequence[str]:
        return getattr(settings, "MQ_TASK_MODULES", [])

    # Task that receives payloads that are not mqsite envelopes (for example
    # `redis-cli LPUSH task:prodcons:queue 5`), per queue name. A queue without
    # an entry dead-letters such payloads.
    @property
    def MQ_RAW_MESSAGE_TASKS(self) -> Mapping[str, str]:
        return getattr(settings, "MQ_RAW_MESSAGE_TASKS", {"default": "tasks.tasks.cook_dish"})

    # Items larger than this are dead-lettered unread (bounded worker memory).
    @property
    def MQ_MAX_MESSAGE_BYTES(self) -> int:
        return getattr(settings, "MQ_MAX_MESSAGE_BYTES", 1024 * 1024)

    # Attempts (runs started, crashes included) before a task is given up.
    @property
    def MQ_MAX_ATTEMPTS(self) -> int:
        return getattr(settings, "MQ_MAX_ATTEMPTS", 3)

    # Retry delay: base * 2 ** (attempt - 1), capped, with full jitter.
    @property
    def MQ_RETRY_BASE_SECONDS(self) -> Number:
        return getattr(settings, "MQ_RETRY_BASE_SECONDS", 1.0)

    @property
    def MQ_RETRY_MAX_SECONDS(self) -> Number:
        return getattr(settings, "MQ_RETRY_MAX_SECONDS", 300.0)

    # Wall-clock limit for one run of a task; None disables it.
    @property
    def MQ_TASK_TIME_LIMIT(self) -> Number | None:
        return getattr(settings, "MQ_TASK_TIME_LIMIT", 300)

    # Per task path overrides: {"app.tasks.fn": {"max_attempts": 5, "time_limit": 30}}
    @property
    def MQ_TASK_OPTIONS(self) -> Mapping[str, Mapping[str, Number | None]]:
        return getattr(settings, "MQ_TASK_OPTIONS", {})

    # A worker's lease; a worker silent for longer is presumed dead and its
    # in-flight tasks go back to the queue.
    @property
    def MQ_LEASE_SECONDS(self) -> Number:
        return getattr(settings, "MQ_LEASE_SECONDS", 10.0)

    # Tasks one listen_queue runs at once (threads, and async def tasks on its
    # event loop) when --concurrency is not given.
    @property
    def MQ_WORKER_CONCURRENCY(self) -> int:
        return getattr(settings, "MQ_WORKER_CONCURRENCY", 1)

    # Largest batch a worker takes at once when the queue is deep.
    @property
    def MQ_MAX_BATCH(self) -> int:
        return getattr(settings, "MQ_MAX_BATCH", 200)

    # How long a batch should take: bigger batches for fast tasks, one at a
    # time for slow ones, so one worker never hoards a queue.
    @property
    def MQ_BATCH_TARGET_SECONDS(self) -> Number:
        return getattr(settings, "MQ_BATCH_TARGET_SECONDS", 0.05)

    # Unfinished tasks absent from Redis for this long are pushed again.
    @property
    def MQ_SWEEP_GRACE_SECONDS(self) -> Number:
        return getattr(settings, "MQ_SWEEP_GRACE_SECONDS", 60.0)

    @property
    def MQ_SWEEP_INTERVAL_SECONDS(self) -> Number:
        return getattr(settings, "MQ_SWEEP_INTERVAL_SECONDS", 30.0)

    # Refuse new work (503) when a queue is this long; None means unbounded.
    @property
    def MQ_QUEUE_MAX_LENGTH(self) -> int | None:
        return getattr(settings, "MQ_QUEUE_MAX_LENGTH", None)

    @property
    def MQ_DEAD_LETTER_MAX(self) -> int:
        return getattr(settings, "MQ_DEAD_LETTER_MAX", 10000)

    # JSON API bearer tokens, "name:secret" or a bare secret.
    @property
    def MQ_API_TOKENS(self) -> Sequence[str]:
        return getattr(settings, "MQ_API_TOKENS", [])

    @property
    def MQ_API_MAX_BODY_BYTES(self) -> int:
        return getattr(settings, "MQ_API_MAX_BODY_BYTES", 64 * 1024)

    # Sent as Retry-After with a 503, which takes whole seconds.
    @property
    def MQ_RETRY_AFTER_SECONDS(self) -> int:
        return getattr(settings, "MQ_RETRY_AFTER_SECONDS", 5)

    # Client networks (CIDR) that may read /metrics without a token, matched
    # against REMOTE_ADDR of requests that did not pass through a proxy (one
    # carrying Forwarded or X-Forwarded-* headers never matches: behind a
    # local reverse proxy every request comes from 127.0.0.1). A valid API
    # bearer token (MQ_API_TOKENS) is accepted from anywhere. []: token only.
    @property
    def MQ_METRICS_ALLOW(self) -> Sequence[str]:
        return getattr(settings, "MQ_METRICS_ALLOW", ["127.0.0.0/8", "::1/128"])

    # Channels
    @property
    def MQ_DEFAULT_CHANNEL(self) -> str:
        return getattr(settings, "MQ_DEFAULT_CHANNEL", "task:pubsub:channel")

    # Periodic tasks (tasks/schedules/): {"name": {"task": path, "cron": "0 3 * * *",
    # "args": [], "kwargs": {}, "queue": "default", "catch_up": "latest"}}.
    @property
    def MQ_SCHEDULES(self) -> Mapping[str, Mapping[str, Any]]:
        return getattr(settings, "MQ_SCHEDULES", {})

    # How often each worker looks for schedules that fell due.
    @property
    def MQ_SCHEDULE_INTERVAL_SECONDS(self) -> float:
        return getattr(settings, "MQ_SCHEDULE_INTERVAL_SECONDS", 1.0)

    # catch_up="none": a tick this late is a missed one (no worker ran then).
    @property
    def MQ_SCHEDULE_MISFIRE_GRACE_SECONDS(self) -> float:
        return getattr(settings, "MQ_SCHEDULE_MISFIRE_GRACE_SECONDS", 60.0)

    # catch_up="all": at most this many missed ticks are fired after an outage.
    @property
    def MQ_SCHEDULE_CATCH_UP_MAX(self) -> int:
        return getattr(settings, "MQ_SCHEDULE_CATCH_UP_MAX", 1000)

    # Retention: finished history rows older than this many days are deleted
    # by the workers' chores (tasks/worker/retention.py); None keeps them for ever.
    @property
    def MQ_HISTORY_RETENTION_DAYS(self) -> float | None:
        return getattr(settings, "MQ_HISTORY_RETENTION_DAYS", None)

    # How often the workers (one at a time, fleet-wide) prune.
    @property
    def MQ_PRUNE_INTERVAL_SECONDS(self) -> float:
        return getattr(settings, "MQ_PRUNE_INTERVAL_SECONDS", 300.0)

    # Rows per DELETE: each batch is its own short transaction.
    @property
    def MQ_PRUNE_BATCH_SIZE(self) -> int:
        return getattr(settings, "MQ_PRUNE_BATCH_SIZE", 500)

    # Batches per table in one chore run (~30 ms each), so a worker is never
    # held up for long; a run that stops at the cap goes on a second later.
    @property
    def MQ_PRUNE_MAX_BATCHES(self) -> int:
        return getattr(settings, "MQ_PRUNE_MAX_BATCHES", 4)

    # {channel or pattern: dotted path of a handler function}
    @property
    def MQ_CHANNEL_HANDLERS(self) -> Mapping[str, str]:
        return getattr(settings, "MQ_CHANNEL_HANDLERS", {})

    @property
    def MQ_DEFAULT_CHANNEL_HANDLER(self) -> str:
        return getattr(settings, "MQ_DEFAULT_CHANNEL_HANDLER", "tasks.channel.handlers.log_message")

    # Test-only fault injection (see tasks/worker/faults.py); never set in production.
    @property
    def MQ_FAULT(self) -> str:
        return getattr(settings, "MQ_FAULT", "")

    def queue_key(self, queue_name: str) -> str:
        return self.MQ_QUEUES.get(queue_name, f"mq:queue:{queue_name}")

    @overload
    def task_option(self, task_path: str, name: Literal["max_attempts"]) -> int: ...
    @overload
    def task_option(self, task_path: str, name: Literal["time_limit"]) -> Number | None: ...
    def task_option(self, task_path: str, name: str) -> Number | None:
        per_task: Mapping[str, Number | None] = self.MQ_TASK_OPTIONS.get(task_path, {})
        if name in per_task:
            return per_task[name]
        return self.MQ_MAX_ATTEMPTS if name == "max_attempts" else self.MQ_TASK_TIME_LIMIT

    def task_is_unique(self, task_path: str) -> bool:
        """Whether MQ_TASK_OPTIONS declares the task unique by its arguments."""
        return self.MQ_TASK_OPTIONS.get(task_path, {}).get("unique") is True

    def api_tokens(self) -> dict[str, str]:
        """Map token -> name. Entries are "name:token" or a bare token."""
        tokens = {}
        for index, entry in enumerate(self.MQ_API_TOKENS, start=1):
            name, sep, token = entry.partition(":")
            if not sep:
                name, token = f"token{index}", entry
            tokens[token] = name
        return tokens


mq_settings = MqSettings()

# Every setting mqsite reads, for checks and tests that walk them all.
SETTING_NAMES = tuple(name for name in vars(MqSettings) if name.startswith("MQ_"))
