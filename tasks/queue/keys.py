"""Every Redis key name mqsite uses, and nowhere else.

A queue's companions wrap the queue key in a hash tag, so that on Redis
Cluster they share the queue's slot: ``{task:prodcons:queue}:delayed``
hashes exactly like the brace-less ``task:prodcons:queue`` itself, which
keeps the classic key name working and lets one Lua script touch them all.
"""

WORKERS = "mq:workers"  # zset: worker id -> last heartbeat (unix time)
LISTENERS = "mq:listeners"  # zset: listener id -> last heartbeat


def processing(queue_key, worker_id):
    """List of the items a worker has taken and not yet acknowledged."""
    return f"{{{queue_key}}}:processing:{worker_id}"


def lease(queue_key, worker_id):
    """Present (with a TTL) while the worker is alive."""
    return f"{{{queue_key}}}:lease:{worker_id}"


def recovered(queue_key):
    """Items of dead workers, waiting to be run one at a time (see scripts.RECOVER)."""
    return f"{{{queue_key}}}:recovered"


def lane(queue_key, priority):
    """List of the waiting items of one priority. Priority 0 is the queue key
    itself, so a foreign producer's raw LPUSH (and the seed's key) is priority 0."""
    return queue_key if priority == 0 else f"{lane_prefix(queue_key)}{priority}"


def lane_prefix(queue_key):
    """What a non-zero lane's key starts with; the Lua scripts append the priority."""
    return f"{{{queue_key}}}:lane:"


def lanes(queue_key):
    """Sorted set of the non-zero priorities whose lanes may hold items (score = priority)."""
    return f"{{{queue_key}}}:lanes"


def stats(queue_key):
    """Hash of counters (outcomes, durations) summed over all workers, for /metrics."""
    return f"{{{queue_key}}}:stats"


def rates(queue_key, minute):
    """Hash of one minute's outcomes per second ("<unix second>:ok" -> count,
    "...:err"), for the index's charts; each expires after a few minutes (see
    reliable.RATES_TTL), so nothing ever trims them."""
    return f"{{{queue_key}}}:rates:{minute}"


def latencies(queue_key):
    """List of the latest enqueue-to-start latencies in milliseconds, newest
    first, capped (see reliable.LATENCIES_KEPT): the index's percentiles."""
    return f"{{{queue_key}}}:latencies"


def queue_workers(queue_key):
    """Set of worker ids that may hold a processing list for this queue."""
    return f"{{{queue_key}}}:workers"


def delayed(queue_key):
    """Sorted set of envelopes scored by the unix time they become due."""
    return f"{{{queue_key}}}:delayed"


def dead(queue_key):
    """List of items given up on, each wrapped with the reason."""
    return f"{{{queue_key}}}:dead"


def task_ids(queue_key):
    """Set of task ids somewhere in this queue's keys (the sweeper's index)."""
    return f"{{{queue_key}}}:ids"


def sweep_lock(queue_key):
    return f"{{{queue_key}}}:sweep-lock"


def sweep_suspects(queue_key):
    """Hash: task id -> unix time a sweep first found it missing from Redis.

    It lives in Redis on purpose: when Redis loses its data it loses this
    too, so every sweep after a data loss starts its wait afresh.
    """
    return f"{{{queue_key}}}:sweep-suspects"


def sweep_cursor(queue_key):
    """String: [enqueued_at, id] of the last open row a sweep went past; the
    next sweep goes on from there. Lost, the walk starts again from the oldest."""
    return f"{{{queue_key}}}:sweep-cursor"


def worker_info(worker_id):
    """Hash describing a running worker (queues, figures), with a TTL."""
    return f"mq:worker:{worker_id}"


def listener_info(listener_id):
    return f"mq:listener:{listener_id}"


# String, with a TTL: the worker holding it prunes history (tasks/worker/retention.py).
PRUNE_LOCK = "mq:prune-lock"
