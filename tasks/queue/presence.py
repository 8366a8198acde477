"""Who is running: workers and listeners announce themselves in Redis.

Each keeps a small hash (what it serves, since when, its figures) with a TTL
and a score in an index sorted by last heartbeat. A process that dies simply
stops refreshing and disappears; ``active`` also prunes the index.
"""

import json
import re
import time
from datetime import datetime, timezone

from tasks.queue import keys

# A worker's or listener's id goes into Redis keys, log lines and the
# processing list's name; chosen by an operator (--worker-id), so checked.
MEMBER_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MEMBER_ID_RULE = "letters, digits and _.:- (at most 64)"

KINDS = {
    "worker": (keys.WORKERS, keys.worker_info),
    "listener": (keys.LISTENERS, keys.listener_info),
}


def valid_id(member_id):
    """Whether ``member_id`` may name a worker or listener (see MEMBER_ID)."""
    return bool(MEMBER_ID.match(member_id))


def announce(client, kind, member_id, info, ttl_seconds):
    """Refresh one process's presence; ``info`` values are JSON-encoded."""
    index_key, info_key = KINDS[kind]
    now = time.time()
    with client.pipeline(transaction=False) as pipe:
        pipe.zadd(index_key, {member_id: now})
        pipe.hset(info_key(member_id), mapping={k: json.dumps(v) for k, v in {**info, "last_seen": now}.items()})
        pipe.expire(info_key(member_id), max(1, int(ttl_seconds)))
        pipe.execute()


def withdraw(client, kind, member_id):
    index_key, info_key = KINDS[kind]
    with client.pipeline(transaction=False) as pipe:
        pipe.zrem(index_key, member_id)
        pipe.delete(info_key(member_id))
        pipe.execute()


def active(client, kind):
    """Running processes of a kind, each a dict with ``id`` and ISO ``last_seen``."""
    index_key, info_key = KINDS[kind]
    members = [m.decode() for m in client.zrange(index_key, 0, -1)]
    with client.pipeline(transaction=False) as pipe:
        for member_id in members:
            pipe.hgetall(info_key(member_id))
        infos = pipe.execute()
    alive, gone = [], []
    for member_id, raw in zip(members, infos):
        if not raw:
            gone.append(member_id)
            continue
        info = {k.decode(): json.loads(v) for k, v in raw.items()}
        info["last_seen"] = datetime.fromtimestamp(info["last_seen"], timezone.utc).isoformat()
        alive.append({"id": member_id, **info})
    if gone:
        client.zrem(index_key, *gone)
    return alive
