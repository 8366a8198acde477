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
"""

import time

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from tasks.conf import mq_settings
from tasks.exceptions import ConnectionDead
from tasks.queue.connection import redis_url

PING_TOKEN = b"mq-listener-ping"


def subscriber_client(url=None):
    """A client whose only connection is the subscription.

    redis-py would otherwise reconnect a failed pub/sub connection behind our
    back (re-subscribing on its own) and send health-check PINGs whose replies
    it hides. Here every error reaches the caller, which owns reconnecting.
    """
    timeout = mq_settings.MQ_SOCKET_TIMEOUT
    return redis.Redis.from_url(
        redis_url(url),
        socket_timeout=timeout,
        socket_connect_timeout=min(timeout, 2.0),
        health_check_interval=0,
        retry=Retry(NoBackoff(), 0, supported_errors=()),
    )


class Subscription:
    def __init__(self, client, channels, patterns, bound):
        self.bound = bound
        self.pubsub = client.pubsub()
        try:
            if channels:
                self.pubsub.subscribe(*channels)
            if patterns:
                self.pubsub.psubscribe(*patterns)
        except BaseException:
            self.close()
            raise
        now = time.monotonic()
        self._unconfirmed = len(channels) + len(patterns)
        self._waiting_since = now
        self._last_heard = now
        self._ping_sent = None

    @property
    def confirmed(self):
        """Redis has acknowledged every channel and pattern."""
        return self._unconfirmed == 0

    def read(self, timeout):
        """The next message or pmessage (a redis-py dict), or None after ``timeout``.

        Raises a RedisError (ConnectionDead included) when the connection is gone.
        """
        message = self.pubsub.get_message(timeout=timeout)
        now = time.monotonic()
        if message is None:
            self._check_alive(now)
            return None
        self._last_heard = now
        kind = message["type"]
        if kind in ("message", "pmessage"):
            return message
        if kind in ("subscribe", "psubscribe"):
            self._unconfirmed -= 1
        elif kind == "pong":
            self._ping_sent = None
        return None

    def _check_alive(self, now):
        if self._unconfirmed and now - self._waiting_since > self.bound:
            raise ConnectionDead(f"subscription not confirmed within {self.bound}s")
        if self._ping_sent is not None:
            if now - self._ping_sent > self.bound:
                raise ConnectionDead(f"no reply to PING within {self.bound}s")
        elif not self._unconfirmed and now - self._last_heard >= self.bound:
            self.pubsub.ping(PING_TOKEN)
            self._ping_sent = now

    def close(self, unsubscribe=False):
        """Drop the connection; with ``unsubscribe``, say goodbye first."""
        try:
            if unsubscribe:
                self.pubsub.unsubscribe()
                self.pubsub.punsubscribe()
        except RedisError:
            pass  # closing the connection unsubscribes just as well
        try:
            self.pubsub.reset()
        except (RedisError, OSError):
            pass  # the connection is being thrown away anyway
