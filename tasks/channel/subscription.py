"""One pub/sub connection whose death is noticed for real.

redis-py's ``health_check_interval`` does not do this. On a subscribed
connection it only *sends* a PING before a read once the interval has
passed; the reply is swallowed whenever it comes, and nothing notices when
it never does. On a half-open socket (a peer that vanished, a frozen server)
the PING lands in the kernel's send buffer, every read times out quietly and
the subscriber hears nothing until TCP gives up, which takes about fifteen
minutes. (Checked with redis-py 8.1: interval 1 s, server stopped with
SIGSTOP, eight seconds of ``get_message`` raise nothing.)

So a Subscription keeps its own clock: once the connection has been silent
for ``bound`` seconds it sends a PING of its own, and if that reply, or the
confirmations of the SUBSCRIBE it started with, do not arrive within another
``bound`` seconds, ``read`` raises ConnectionDead. Only a read that came back
empty counts as silence, so a caller busy in a slow handler is never taken
for a dead connection. Reconnecting is the caller's business: a Subscription
is used once and thrown away.

On Redis Cluster the channels are sharded (SSUBSCRIBE, DESIGN section 10):
each lives on its slot's master, so a Subscription holds one connection per
master that owns one of its channels (a "leg"), each with its own clock. A
master that loses a channel's slot (failover, resharding) says so with a
SUNSUBSCRIBE, which reads as a dead connection: the caller subscribes again
and lands on the new owner.
"""

import time

from redis.exceptions import RedisError

from tasks.exceptions import ConnectionDead
from tasks.queue import topology

PING_TOKEN = b"mq-listener-ping"
MESSAGE_TYPES = ("message", "pmessage", "smessage")
CONFIRMATION_TYPES = ("subscribe", "psubscribe", "ssubscribe")
LOSS_TYPES = ("unsubscribe", "punsubscribe", "sunsubscribe")
PATTERNS_ON_CLUSTER = (
    "pattern subscriptions cannot be sharded on Redis Cluster (there is no SPSUBSCRIBE): subscribe to channels by name"
)


def sharded(client):
    """Whether channels on this client are sharded (SPUBLISH/SSUBSCRIBE): on Redis Cluster."""
    return topology.is_cluster(client)


class _Leg:
    """One pub/sub connection and its liveness clock."""

    def __init__(self, pubsub, expected, bound, sharded=False):
        self.pubsub = pubsub
        self.sharded = sharded
        self.bound = bound
        now = time.monotonic()
        self.unconfirmed = expected
        self.waiting_since = now
        self.last_heard = now
        self.ping_sent = None

    def read(self, timeout):
        message = self.pubsub.get_message(timeout=timeout)
        now = time.monotonic()
        if message is None:
            self.check_alive(now)
            return None
        self.last_heard = now
        kind = message["type"]
        if kind in MESSAGE_TYPES:
            return message
        if kind in CONFIRMATION_TYPES:
            self.unconfirmed -= 1
        elif kind in LOSS_TYPES:
            # Unasked for: the server dropped us (a cluster slot moved away).
            raise ConnectionDead(f"the server ended the subscription to {message['channel']!r}")
        elif kind == "pong":
            self.ping_sent = None
        return None

    def check_alive(self, now):
        if self.unconfirmed and now - self.waiting_since > self.bound:
            raise ConnectionDead(f"subscription not confirmed within {self.bound}s")
        if self.ping_sent is not None:
            if now - self.ping_sent > self.bound:
                raise ConnectionDead(f"no reply to PING within {self.bound}s")
        elif not self.unconfirmed and now - self.last_heard >= self.bound:
            self.pubsub.ping(PING_TOKEN)
            self.ping_sent = now

    def close(self, unsubscribe):
        try:
            if unsubscribe:
                if self.sharded:
                    self.pubsub.sunsubscribe()
                else:
                    self.pubsub.unsubscribe()
                    self.pubsub.punsubscribe()
        except RedisError:
            pass  # closing the connection unsubscribes just as well
        try:
            self.pubsub.reset()
        except (RedisError, OSError):
            pass  # the connection is being thrown away anyway


class Subscription:
    def __init__(self, client, channels, patterns, bound):
        self.bound = bound
        self.legs = []
        try:
            if sharded(client):
                if patterns:
                    raise ValueError(PATTERNS_ON_CLUSTER)
                self._subscribe_sharded(client, channels)
            else:
                leg = _Leg(client.pubsub(), len(channels) + len(patterns), bound)
                self.legs.append(leg)
                if channels:
                    leg.pubsub.subscribe(*channels)
                if patterns:
                    leg.pubsub.psubscribe(*patterns)
        except BaseException:
            self.close()
            raise
        self._next = 0

    def _subscribe_sharded(self, client, channels):
        # The slot map afresh: a (re)subscription follows a failover or a
        # resharding, and this client runs no other command that would
        # have told it (its connections only listen).
        client.nodes_manager.initialize()
        by_node: dict[str, list[str]] = {}
        for channel in channels:
            by_node.setdefault(client.get_node_from_key(channel).name, []).append(channel)
        for name, names in by_node.items():
            node = client.get_node(node_name=name)
            leg = _Leg(client.get_redis_connection(node).pubsub(), len(names), self.bound, sharded=True)
            self.legs.append(leg)
            # One SSUBSCRIBE per channel: a single one naming channels of
            # several slots is refused with CROSSSLOT.
            for channel in names:
                leg.pubsub.ssubscribe(channel)

    @property
    def confirmed(self):
        """Redis has acknowledged every channel and pattern."""
        return all(leg.unconfirmed == 0 for leg in self.legs)

    def read(self, timeout):
        """The next message, pmessage or smessage (a redis-py dict), or None after ``timeout``.

        Raises a RedisError (ConnectionDead included) when a connection is gone.
        """
        if not self.legs:
            time.sleep(timeout)
            return None
        # Round robin, the wait shared out, so that no leg starves the others.
        share = timeout / len(self.legs)
        for _ in range(len(self.legs)):
            leg = self.legs[self._next]
            self._next = (self._next + 1) % len(self.legs)
            message = leg.read(share)
            if message is not None:
                return message
        return None

    def close(self, unsubscribe=False):
        """Drop the connections; with ``unsubscribe``, say goodbye first."""
        for leg in self.legs:
            leg.close(unsubscribe)
