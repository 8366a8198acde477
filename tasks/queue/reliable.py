"""The reliable queue protocol on one Redis list: push, take, acknowledge.

A producer LPUSHes envelopes; a worker moves items from the tail into its own
processing list (BLMOVE, or a Lua batch when the queue is deep), and removes
them only after their outcome is recorded. A worker that dies leaves its items
in its processing list, and its lease expires; any other worker then moves
them back. This module knows Redis and nothing of the ORM or HTTP.
"""

import json
import time
from datetime import datetime, timezone
from typing import NamedTuple

from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tasks.exceptions import DeliveryUncertain, QueueFull, QueueUnavailable
from tasks.queue import keys
from tasks.queue import scripts
from tasks.queue.envelope import DEAD_EXCERPT_BYTES, now_iso


# Left on the queue list when a priority item arrives there is empty, so that
# a worker blocked on that list wakes at once (scripts.LANES). Not JSON, so no
# release of mqsite takes it for a task; every take drops it.
WAKE_TOKEN = b"mq:wake"
# The index charts this many seconds of per-second outcomes; each minute's
# hash outlives them a little, then Redis drops it.
RATES_WINDOW = 300
RATES_TTL = RATES_WINDOW + 120
# Latest enqueue-to-start latencies kept per queue, for the percentiles.
LATENCIES_KEPT = 1000


def _refusal(queue_name, exc):
    if isinstance(exc, RedisTimeoutError):
        return DeliveryUncertain(f"Redis did not answer in time for queue {queue_name!r}: {exc}")
    return QueueUnavailable(f"Redis refused queue {queue_name!r}: {exc}")


class Taken(NamedTuple):
    """What a worker took from one queue at once."""

    queue: "ReliableQueue"
    items: list
    recovered: bool  # one item, from a dead worker: it may be what killed it


class ReliableQueue:
    def __init__(self, client, name, key):
        self.client = client
        self.name = name
        self.key = key
        self.ids_key = keys.task_ids(key)
        self.delayed_key = keys.delayed(key)
        self.dead_key = keys.dead(key)
        self.workers_key = keys.queue_workers(key)
        self.recovered_key = keys.recovered(key)
        self.stats_key = keys.stats(key)
        self.sweep_lock_key = keys.sweep_lock(key)
        self.sweep_cursor_key = keys.sweep_cursor(key)
        self.sweep_suspects_key = keys.sweep_suspects(key)
        self.lanes_key = keys.lanes(key)
        self.lane_prefix = keys.lane_prefix(key)
        self._enqueue = client.register_script(scripts.ENQUEUE)
        self._take = client.register_script(scripts.TAKE_BATCH)
        self._recover = client.register_script(scripts.RECOVER)
        self._promote = client.register_script(scripts.PROMOTE_DUE)
        self._ack = client.register_script(scripts.ACK)
        self._confirm = client.register_script(scripts.CONFIRM_HELD)
        self._release = client.register_script(scripts.RELEASE)

    # --- producers -------------------------------------------------------
    def push(self, envelopes, max_length=None, payloads=None):
        """Queue envelopes atomically; QueueFull or QueueUnavailable if not
        (DeliveryUncertain if Redis did not answer in time). ``payloads`` are
        their encodings, when the caller has them already."""
        payloads = payloads or [envelope.encode() for envelope in envelopes]
        argv = [max_length or 0, self.lane_prefix, WAKE_TOKEN]
        for envelope, payload in zip(envelopes, payloads):
            argv += [envelope.id, envelope.priority, payload]
        try:
            length = self._enqueue(keys=[self.key, self.ids_key, self.lanes_key], args=argv)
        except RedisError as exc:
            raise _refusal(self.name, exc) from exc
        if length == -1:
            raise QueueFull(f"queue {self.name!r} is full ({max_length} items)")
        return length

    def schedule(self, envelope, run_at):
        """Queue an envelope to become due at unix time ``run_at``."""
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.sadd(self.ids_key, envelope.id)
                pipe.zadd(self.delayed_key, {envelope.encode(): run_at})
                pipe.execute()
        except RedisError as exc:
            raise _refusal(self.name, exc) from exc

    # --- workers ---------------------------------------------------------
    def take(self, worker_id, max_items, max_bytes, acks=()):
        """Take up to max_items at once without blocking.

        Returns (items, oversized, recovered); oversized items are already
        dead-lettered and out of the sweeper's index, and come back as (size,
        task id or ""). ``recovered``: the one item came from a dead worker
        (it may be what killed it: see TAKE_BATCH).
        ``acks``: (queue, keyword arguments of its ack()) sent before the take
        in the same round trip, by a worker that frees slots and fills them
        again in one go (--concurrency).
        """
        call = {
            "keys": [self.key, keys.processing(self.key, worker_id), self.dead_key, self.recovered_key, self.ids_key, self.lanes_key],
            "args": [max_items, max_bytes, now_iso(), worker_id, DEAD_EXCERPT_BYTES, self.lane_prefix, WAKE_TOKEN],
        }
        if acks:
            with self.client.pipeline(transaction=False) as pipe:
                for queue, ack in acks:
                    queue.ack(worker_id, client=pipe, **ack)
                self._take(client=pipe, **call)
                items, oversized, recovered = pipe.execute()[-1]
        else:
            items, oversized, recovered = self._take(**call)
        return items, [(size, task_id.decode()) for size, task_id in oversized], bool(recovered)

    def take_blocking(self, worker_id, timeout):
        """Wait up to ``timeout`` seconds for one item; None if none came.

        Only the priority 0 lane can be waited on. None too when what came
        was a wake token: a higher lane got an item, which the caller's next
        batch take finds first.
        """
        processing = keys.processing(self.key, worker_id)
        item = self.client.blmove(self.key, processing, timeout, "RIGHT", "LEFT")
        if item == WAKE_TOKEN:
            self.client.lrem(processing, 1, WAKE_TOKEN)
            return None
        return item

    def replace_in_flight(self, worker_id, replacements):
        """Swap taken raw payloads for the envelopes that now carry them."""
        processing = keys.processing(self.key, worker_id)
        with self.client.pipeline(transaction=True) as pipe:
            for raw, envelope in replacements:
                pipe.sadd(self.ids_key, envelope.id)
                pipe.lpush(processing, envelope.encode())
                pipe.lrem(processing, 1, raw)
            pipe.execute()

    def ack(
        self, worker_id, done, finished_ids=(), retries=(), dead=(), dead_max=10000,
        stats=None, rates=None, latencies=(), client=None,
    ):
        """Acknowledge taken items in one round trip, once outcomes are recorded.

        done: raw items to drop from the processing list; finished_ids leave the
        sweeper's index; retries are (raw item, next envelope, due unix time)
        for the delayed set, scheduled only if the item is still this worker's;
        dead are envelope.DeadLetter entries; stats are counter increments for
        /metrics; rates count outcomes ("ok", "err") for this second, and
        latencies are enqueue-to-start milliseconds, for the index's charts.
        ``client``: a pipeline to add the call to.
        """
        # A batch's latencies beyond the kept number would be trimmed at once.
        stats, rates, latencies = stats or {}, rates or {}, list(latencies)[:LATENCIES_KEPT]
        now = int(time.time())
        counts = [len(done), len(finished_ids), len(retries), len(dead), len(stats), len(rates), len(latencies)]
        argv = [dead_max, *counts, LATENCIES_KEPT, RATES_TTL, *done, *finished_ids]
        for raw, envelope, due in retries:
            argv += [raw, due, envelope.encode()]
        if dead:
            at = now_iso()
            for letter in dead:
                argv += [letter.reason, letter.id, letter.task, worker_id, at, letter.item]
        for name, amount in stats.items():
            argv += [name, amount]
        for name, amount in rates.items():
            argv += [f"{now}:{name}", amount]
        argv += latencies
        self._ack(
            keys=[
                keys.processing(self.key, worker_id), self.ids_key, self.delayed_key, self.dead_key, self.stats_key,
                keys.rates(self.key, now - now % 60), keys.latencies(self.key),
            ],
            args=argv,
            client=client,
        )

    def promote_due(self, now=None, limit=1000):
        """Move due delayed items onto the queue; return the next due time or None."""
        next_due = self._promote(
            keys=[self.delayed_key, self.key, self.lanes_key], args=[now or time.time(), limit, self.lane_prefix, WAKE_TOKEN]
        )
        return float(next_due) if next_due is not None else None

    def register(self, worker_id, lease_seconds, renew_only=False):
        """Take or renew a worker's lease (and membership) on this queue.

        renew_only: only extend a lease that is still there; False if it had
        lapsed (other workers may have taken back the items it covered).
        """
        with self.client.pipeline(transaction=False) as pipe:
            pipe.sadd(self.workers_key, worker_id)
            pipe.set(keys.lease(self.key, worker_id), "1", px=int(lease_seconds * 1000), xx=renew_only)
            return bool(pipe.execute()[1])

    def confirm_held(self, worker_id, raw, lease_seconds):
        """Whether a taken item is still in this worker's processing list (no
        other worker took it back); if so, the lease is taken anew."""
        processing = keys.processing(self.key, worker_id)
        lease_key = keys.lease(self.key, worker_id)
        held = self._confirm(keys=[processing, lease_key, self.workers_key], args=[raw, int(lease_seconds * 1000), worker_id])
        return held == 1

    def release(self, worker_id):
        """Return a stopping worker's untouched items to their lanes, to be taken
        next; deregister it."""
        moved = self._release(
            keys=[self.key, keys.processing(self.key, worker_id), self.workers_key, self.lanes_key],
            args=[worker_id, self.lane_prefix, WAKE_TOKEN],
        )
        self.client.delete(keys.lease(self.key, worker_id))
        return moved

    def recover_own(self, worker_id):
        """At start-up, treat a previous life's leftovers like a dead worker's."""
        return self._recover_one(worker_id, self.recovered_key, force=True)

    def recover_expired(self, except_worker=None):
        """Return the in-flight items of every worker whose lease expired."""
        recovered = {}
        for raw_id in self.client.smembers(self.workers_key):
            worker_id = raw_id.decode()
            if worker_id == except_worker:
                continue
            moved = self._recover_one(worker_id, self.recovered_key, force=False)
            if moved > 0:
                recovered[worker_id] = moved
        return recovered

    def _recover_one(self, worker_id, destination, force):
        return self._recover(
            keys=[destination, keys.processing(self.key, worker_id), keys.lease(self.key, worker_id), self.workers_key],
            args=[worker_id, "1" if force else "0"],
        )

    # --- retention (tasks/worker/retention.py) ---------------------------------
    def try_prune_lock(self, seconds):
        """True if this caller may prune history for ``seconds``: one worker at
        a time fleet-wide (the key is global, not the queue's)."""
        return bool(self.client.set(keys.PRUNE_LOCK, "1", nx=True, px=int(seconds * 1000)))

    # --- the sweeper (tasks/worker/sweeper.py) -------------------------------
    def try_sweep_lock(self, seconds):
        """Whether this caller may sweep the queue for the next ``seconds``:
        one sweeper at a time, and the lock lapses by itself."""
        return bool(self.client.set(self.sweep_lock_key, "1", nx=True, px=int(seconds * 1000)))

    def sweep_cursor(self):
        """(enqueued_at, id) of the last open row a sweep went past, or None."""
        try:
            at, task_id = json.loads(self.client.get(self.sweep_cursor_key))
            return datetime.fromisoformat(at), task_id
        except (TypeError, ValueError):  # none yet (or lost with Redis's data): from the oldest
            return None

    def save_sweep_cursor(self, cursor, ttl_seconds):
        """Remember where the next sweep goes on; None starts it from the oldest."""
        if cursor is None:
            self.client.delete(self.sweep_cursor_key)
        else:
            # The expiry is only hygiene: a lost cursor only starts the walk again.
            self.client.set(self.sweep_cursor_key, json.dumps([cursor[0].isoformat(), cursor[1]]), px=int(ttl_seconds * 1000))

    def sweep_suspects(self):
        """{task id: unix time a sweep first found it missing from Redis}."""
        return {k.decode(): float(v) for k, v in self.client.hgetall(self.sweep_suspects_key).items()}

    def replace_sweep_suspects(self, suspects, ttl_seconds):
        """Remember exactly these suspects, forgetting the others, in one step."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self.sweep_suspects_key)
            if suspects:
                pipe.hset(self.sweep_suspects_key, mapping=suspects)
                # Only hygiene: every sweep rewrites the hash, and a lost hash only delays a resend.
                pipe.pexpire(self.sweep_suspects_key, int(ttl_seconds * 1000))
            pipe.execute()

    # --- the sweeper and status -------------------------------------------
    def known_ids(self, ids):
        """Which of these task ids Redis holds anywhere in this queue."""
        if not ids:
            return set()
        flags = self.client.smismember(self.ids_key, list(ids))
        return {task_id for task_id, flag in zip(ids, flags) if flag}

    def live_workers(self, worker_ids):
        """Which of these workers hold a live lease on this queue.

        The sweeper asks: a live worker is still running what it claimed,
        even when Redis lost its copy of the item (restarted empty).
        """
        worker_ids = [w for w in worker_ids if w]
        if not worker_ids:
            return set()
        with self.client.pipeline(transaction=False) as pipe:
            for worker_id in worker_ids:
                pipe.exists(keys.lease(self.key, worker_id))
            flags = pipe.execute()
        return {worker_id for worker_id, flag in zip(worker_ids, flags) if flag}

    def counts(self):
        worker_ids = [w.decode() for w in self.client.smembers(self.workers_key)]
        lanes = self.other_lanes()
        with self.client.pipeline(transaction=False) as pipe:
            for lane in lanes:
                pipe.llen(lane)
            pipe.llen(self.key)
            pipe.lindex(self.key, -1)
            pipe.llen(self.recovered_key)
            pipe.zcard(self.delayed_key)
            pipe.llen(self.dead_key)
            for worker_id in worker_ids:
                pipe.llen(keys.processing(self.key, worker_id))
            replies = pipe.execute()
        laned, (pending, tail, recovered, delayed, dead, *in_flight) = replies[: len(lanes)], replies[len(lanes) :]
        pending -= tail == WAKE_TOKEN  # not a task (see scripts.LANES)
        return {"key": self.key, "pending": sum(laned) + pending + recovered, "in_flight": sum(in_flight), "delayed": delayed, "dead": dead}

    def oldest_pending_age(self, now=None):
        """Seconds the oldest waiting task has waited since it was enqueued:
        0.0 when nothing waits, None when the oldest carries no time (a raw
        payload from a producer that knows nothing of mqsite).

        The oldest items sit at the tails (producers LPUSH, workers take from
        the right), of the queue and of the recovered list. A retried or
        run_after task counts from its first enqueue: its envelope keeps that time.
        """
        with self.client.pipeline(transaction=False) as pipe:
            for lane in [self.key, self.recovered_key, *self.other_lanes()]:
                pipe.lrange(lane, -2, -1)  # two: a wake token may sit at a tail
            tails = [next((i for i in reversed(last) if i != WAKE_TOKEN), None) for last in pipe.execute()]
            tails = [item for item in tails if item is not None]
        if not tails:
            return 0.0
        times = [_enqueued_at(item) for item in tails]
        if None in times:
            return None
        now = time.time() if now is None else now
        return max(0.0, now - min(times))

    def other_lanes(self):
        """Keys of the non-zero priority lanes that may hold items, highest first."""
        return [keys.lane(self.key, int(p)) for p in self.client.zrevrange(self.lanes_key, 0, -1)]

    def dead_letters(self, start=0, stop=99):
        return [json.loads(entry) for entry in self.client.lrange(self.dead_key, start, stop)]

    def purge_dead(self):
        return self.client.delete(self.dead_key)

    def stats(self):
        return {k.decode(): float(v) for k, v in self.client.hgetall(self.stats_key).items()}

    def rates(self, now=None, window=RATES_WINDOW):
        """{"ok": [...], "err": [...]}: outcomes acknowledged in each of the
        last ``window`` seconds, oldest first (the last entry is ``now``)."""
        end = int(time.time() if now is None else now)
        start = end - window + 1
        with self.client.pipeline(transaction=False) as pipe:
            for minute in range(start - start % 60, end + 1, 60):
                pipe.hgetall(keys.rates(self.key, minute))
            hashes = pipe.execute()
        series = {"ok": [0] * window, "err": [0] * window}
        for fields in hashes:
            for field, count in fields.items():
                second, _, name = field.decode().partition(":")
                if name in series and second.isdigit() and start <= int(second) <= end:
                    series[name][int(second) - start] += int(count)
        return series

    def latencies(self):
        """The latest enqueue-to-start latencies, in milliseconds, newest first
        (an entry no worker wrote, not a number, is left out)."""
        values = []
        for raw in self.client.lrange(keys.latencies(self.key), 0, LATENCIES_KEPT - 1):
            try:
                value = float(raw)
            except ValueError:
                continue
            if value == value and value not in (float("inf"), float("-inf")):  # NaN and infinities sort nowhere
                values.append(value)
        return values


def _enqueued_at(item):
    """The unix time an envelope was enqueued, or None for anything else."""
    try:
        data = json.loads(item)
        moment = datetime.fromisoformat(data["enqueued_at"])
    except (ValueError, TypeError, KeyError, RecursionError):
        return None
    if moment.tzinfo is None:  # written by a producer without a zone: mqsite writes UTC
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()
