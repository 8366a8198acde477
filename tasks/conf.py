"""mqsite's settings, each with its default.

Read lazily through ``mq_settings`` so that ``override_settings`` in tests
and per-process environment changes are always seen (the pattern of
django-cors-headers' conf.py).
"""

from django.conf import settings

DEFAULTS = {
    # Connection to the Redis server that carries queues and channels.
    "MQ_REDIS_URL": "redis://127.0.0.1:6379/0",
    # Socket timeout for every Redis call. Blocking calls use MQ_BLOCK_SECONDS,
    # which must stay below it, or redis-py would time out a healthy BLMOVE.
    "MQ_SOCKET_TIMEOUT": 5.0,
    "MQ_BLOCK_SECONDS": 1.0,
    # Queue name (as used by @task(queue_name=...)) -> Redis list key.
    # Names not listed map to "mq:queue:<name>".
    "MQ_QUEUES": {"default": "task:prodcons:queue"},
    # Task modules imported at start-up besides every app's tasks.py.
    "MQ_TASK_MODULES": [],
    # Task that receives payloads that are not mqsite envelopes (for example
    # `redis-cli LPUSH task:prodcons:queue 5`), per queue name. A queue without
    # an entry dead-letters such payloads.
    "MQ_RAW_MESSAGE_TASKS": {"default": "tasks.tasks.cook_dish"},
    # Items larger than this are dead-lettered unread (bounded worker memory).
    "MQ_MAX_MESSAGE_BYTES": 1024 * 1024,
    # Attempts (runs started, crashes included) before a task is given up.
    "MQ_MAX_ATTEMPTS": 3,
    # Retry delay: base * 2 ** (attempt - 1), capped, with full jitter.
    "MQ_RETRY_BASE_SECONDS": 1.0,
    "MQ_RETRY_MAX_SECONDS": 300.0,
    # Wall-clock limit for one run of a task; None disables it.
    "MQ_TASK_TIME_LIMIT": 300,
    # Per task path overrides: {"app.tasks.fn": {"max_attempts": 5, "time_limit": 30}}
    "MQ_TASK_OPTIONS": {},
    # A worker's lease; a worker silent for longer is presumed dead and its
    # in-flight tasks go back to the queue.
    "MQ_LEASE_SECONDS": 10.0,
    # Largest batch a worker takes at once when the queue is deep.
    "MQ_MAX_BATCH": 200,
    # How long a batch should take: bigger batches for fast tasks, one at a
    # time for slow ones, so one worker never hoards a queue.
    "MQ_BATCH_TARGET_SECONDS": 0.05,
    # Unfinished tasks absent from Redis for this long are pushed again.
    "MQ_SWEEP_GRACE_SECONDS": 60.0,
    "MQ_SWEEP_INTERVAL_SECONDS": 30.0,
    # Refuse new work (503) when a queue is this long; None means unbounded.
    "MQ_QUEUE_MAX_LENGTH": None,
    "MQ_DEAD_LETTER_MAX": 10000,
    # API
    "MQ_API_TOKENS": [],
    "MQ_API_MAX_BODY_BYTES": 64 * 1024,
    "MQ_RETRY_AFTER_SECONDS": 5,
    # Client networks (CIDR) that may read /metrics without a token, matched
    # against REMOTE_ADDR of requests that did not pass through a proxy (one
    # carrying Forwarded or X-Forwarded-* headers never matches: behind a
    # local reverse proxy every request comes from 127.0.0.1). A valid API
    # bearer token (MQ_API_TOKENS) is accepted from anywhere. []: token only.
    "MQ_METRICS_ALLOW": ["127.0.0.0/8", "::1/128"],
    # Channels
    "MQ_DEFAULT_CHANNEL": "task:pubsub:channel",
    "MQ_CHANNEL_HANDLERS": {},
    "MQ_DEFAULT_CHANNEL_HANDLER": "tasks.channel.handlers.log_message",
    # Periodic tasks (tasks/schedules.py): {"name": {"task": path, "cron": "0 3 * * *",
    # "args": [], "kwargs": {}, "queue": "default", "catch_up": "latest"}}.
    "MQ_SCHEDULES": {},
    # How often each worker looks for schedules that fell due.
    "MQ_SCHEDULE_INTERVAL_SECONDS": 1.0,
    # catch_up="none": a tick this late is a missed one (no worker ran then).
    "MQ_SCHEDULE_MISFIRE_GRACE_SECONDS": 60.0,
    # catch_up="all": at most this many missed ticks are fired after an outage.
    "MQ_SCHEDULE_CATCH_UP_MAX": 1000,
    # Retention: finished history rows older than this many days are deleted
    # by the workers' chores (tasks/worker/retention.py); None keeps them for ever.
    "MQ_HISTORY_RETENTION_DAYS": None,
    # How often the workers (one at a time, fleet-wide) prune.
    "MQ_PRUNE_INTERVAL_SECONDS": 300.0,
    # Rows per DELETE: each batch is its own short transaction.
    "MQ_PRUNE_BATCH_SIZE": 500,
    # Batches per table in one chore run (~30 ms each), so a worker is never
    # held up for long; a run that stops at the cap goes on a second later.
    "MQ_PRUNE_MAX_BATCHES": 4,
    # Test-only fault injection (see tasks/faults.py); never set in production.
    "MQ_FAULT": "",
}


class MqSettings:
    def __getattr__(self, name):
        if name not in DEFAULTS:
            raise AttributeError(name)
        return getattr(settings, name, DEFAULTS[name])

    def queue_key(self, queue_name):
        return self.MQ_QUEUES.get(queue_name, f"mq:queue:{queue_name}")

    def task_option(self, task_path, name):
        per_task = self.MQ_TASK_OPTIONS.get(task_path, {})
        if name in per_task:
            return per_task[name]
        return getattr(self, {"max_attempts": "MQ_MAX_ATTEMPTS", "time_limit": "MQ_TASK_TIME_LIMIT"}[name])

    def api_tokens(self):
        """Map token -> name. Entries are "name:token" or a bare token."""
        tokens = {}
        for index, entry in enumerate(self.MQ_API_TOKENS, start=1):
            name, sep, token = entry.partition(":")
            if not sep:
                name, token = f"token{index}", entry
            tokens[token] = name
        return tokens


mq_settings = MqSettings()
