"""The channel listener: a plain class that ``listen_channel`` runs.

It subscribes to channels and patterns, hands every message to the handler
configured for it, and records one ReceivedMessage per message. A handler
that raises is recorded as failed and the listener goes on.

Dead connections are detected for real. redis-py's ``health_check_interval``
only *sends* a PING before a read once the interval has passed; the reply is
swallowed whenever it comes, and nothing notices when it never does. On a
half-open socket (a peer that vanished, a frozen server) the PING lands in
the kernel's send buffer, reads keep timing out quietly, and the subscriber
hears nothing for the ~15 minutes TCP takes to give up. So this listener
keeps its own clock: after MQ_SOCKET_TIMEOUT of silence it sends a PING of
its own, and if neither that reply nor the subscription confirmations arrive
within another MQ_SOCKET_TIMEOUT, it drops the connection and subscribes
again, with capped exponential backoff and jitter. Each outage is logged
twice (lost, back); the attempts in between only at debug level.

Messages published while the listener is disconnected are lost: publish/
subscribe is at-most-once. Signal handlers only set ``stopping``; the loop
reads with a timeout of MQ_BLOCK_SECONDS, so it notices within that.
"""

import json
import logging
import os
import random
import socket
import time
import traceback

import redis
from django.core.exceptions import ImproperlyConfigured
from django.db import close_old_connections, connections, router
from django.utils import timezone
from django.utils.module_loading import import_string
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from . import presence, receipts
from .conf import mq_settings
from .connection import get_redis
from .dbretry import DatabaseGaveUp, retry_database
from .handlers import ChannelMessage
from .models import ReceivedMessage
from .sdnotify import SystemdNotifier

logger = logging.getLogger(__name__)

PING_TOKEN = b"mq-listener-ping"
BACKOFF_BASE = 0.1
BACKOFF_MAX = 5.0
# An oversized payload is not handled; the receipt keeps this much of it.
OVERSIZED_KEEP_CHARS = 1000


class ConnectionDead(RedisError):
    """The subscription connection stopped answering within the bound."""


def subscriber_client(url=None):
    """A client whose only connection is the subscription.

    redis-py would otherwise reconnect a failed pub/sub connection behind our
    back (re-subscribing on its own) and send health-check PINGs whose replies
    it hides. Here every error reaches the listener, which owns reconnecting.
    """
    timeout = mq_settings.MQ_SOCKET_TIMEOUT
    return redis.Redis.from_url(
        url or mq_settings.MQ_REDIS_URL,
        socket_timeout=timeout,
        socket_connect_timeout=min(timeout, 2.0),
        health_check_interval=0,
        retry=Retry(NoBackoff(), 0, supported_errors=()),
    )


def load_handlers():
    """Import every configured handler now, so a typo stops the start, not a message."""
    paths = {mq_settings.MQ_DEFAULT_CHANNEL_HANDLER, *mq_settings.MQ_CHANNEL_HANDLERS.values()}
    handlers = {}
    for path in paths:
        try:
            handlers[path] = import_string(path)
        except ImportError as exc:
            raise ImproperlyConfigured(f"channel handler {path!r} cannot be imported: {exc}") from exc
        if not callable(handlers[path]):
            raise ImproperlyConfigured(f"channel handler {path!r} is not callable")
    return handlers


def decode(raw):
    """(text, is_json, data) for a payload; never raises."""
    text = raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else str(raw)
    try:
        return text, True, json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return text, False, text


def _reject_constant(name):
    # NaN and Infinity are Python's extension, not JSON; PostgreSQL's jsonb refuses them.
    raise ValueError(f"{name} is not JSON")


def _str(value):
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


class Listener:
    def __init__(self, channels=None, patterns=None, listener_id=None, max_messages=None, notifier=None):
        self.patterns = list(dict.fromkeys(patterns or []))
        default = [] if self.patterns else [mq_settings.MQ_DEFAULT_CHANNEL]
        self.channels = list(dict.fromkeys(channels or default))
        self.listener_id = listener_id or f"{socket.gethostname()}-{os.getpid()}"
        self.max_messages = max_messages
        self.notifier = notifier or SystemdNotifier()
        self.handlers = load_handlers()
        self.client = get_redis(retries=0)
        self.subscriber = subscriber_client()
        self.using = router.db_for_write(ReceivedMessage)
        self.stopping = False
        self.received = 0
        self.failed = 0
        self.since = timezone.now()
        self.pubsub = None
        self._ready = False
        self._unconfirmed = 0  # subscribe confirmations still due
        self._waiting_since = 0.0
        self._ping_sent = None
        self._last_heard = 0.0
        self._down_since = None
        self._attempts = 0
        self._next_beat = 0.0

    def request_stop(self):
        """Safe to call from a signal handler: finish the current message, then stop."""
        self.stopping = True

    # --- the loop --------------------------------------------------------
    def run(self):
        """Listen until stopped or max_messages; return the messages received."""
        try:
            self._db(lambda: connections[self.using].ensure_connection())
            while not self.stopping and not self._reached_max():
                self.notifier.watchdog()
                try:
                    if self.pubsub is None:
                        self._subscribe()
                    self._receive()
                except RedisError as exc:
                    self._lost(exc)
                self._heartbeat_if_due()
        except DatabaseGaveUp:
            pass  # asked to stop while the database was down; already logged
        finally:
            self._shutdown()
        return self.received

    def _reached_max(self):
        return self.max_messages is not None and self.received >= self.max_messages

    def _subscribe(self):
        pubsub = self.subscriber.pubsub()
        self.pubsub = pubsub
        if self.channels:
            pubsub.subscribe(*self.channels)
        if self.patterns:
            pubsub.psubscribe(*self.patterns)
        now = time.monotonic()
        self._unconfirmed = len(self.channels) + len(self.patterns)
        self._waiting_since = now
        self._ping_sent = None
        self._last_heard = now

    def _receive(self):
        message = self.pubsub.get_message(timeout=mq_settings.MQ_BLOCK_SECONDS)
        now = time.monotonic()
        if message is None:
            self._check_alive(now)
            return
        self._last_heard = now
        kind = message["type"]
        if kind in ("message", "pmessage"):
            self._handle(message)
        elif kind in ("subscribe", "psubscribe"):
            self._unconfirmed -= 1
            if self._unconfirmed == 0:
                self._subscribed()
        elif kind == "pong":
            self._ping_sent = None

    def _check_alive(self, now):
        """After a read that brought nothing: is the connection still there?

        Only an empty read counts, so time spent in handlers or waiting for the
        database never passes for silence.
        """
        bound = mq_settings.MQ_SOCKET_TIMEOUT
        if self._unconfirmed and now - self._waiting_since > bound:
            raise ConnectionDead(f"subscription not confirmed within {bound}s")
        if self._ping_sent is not None:
            if now - self._ping_sent > bound:
                raise ConnectionDead(f"no reply to PING within {bound}s")
        elif not self._unconfirmed and now - self._last_heard >= bound:
            self.pubsub.ping(PING_TOKEN)
            self._ping_sent = now

    def _subscribed(self):
        if self._down_since is not None:
            logger.warning(
                "event=resubscribed listener=%s down_seconds=%.1f attempts=%d",
                self.listener_id,
                time.monotonic() - self._down_since,
                self._attempts,
            )
            self._down_since = None
            self._attempts = 0
        if not self._ready:
            self._ready = True
            logger.info(
                "event=listener_start listener=%s channels=%s patterns=%s pid=%d",
                self.listener_id,
                ",".join(self.channels) or "-",
                ",".join(self.patterns) or "-",
                os.getpid(),
            )
            self.notifier.ready(self._status())
        self._next_beat = 0.0  # announce the subscription right away

    # --- one message -------------------------------------------------------
    def _handle(self, message):
        received_at = timezone.now()
        self.received += 1
        channel = _str(message["channel"])
        pattern = _str(message["pattern"]) if message["pattern"] else None
        raw = message["data"]
        handler_path = mq_settings.MQ_CHANNEL_HANDLERS.get(channel) or mq_settings.MQ_CHANNEL_HANDLERS.get(pattern)
        handler_path = handler_path or mq_settings.MQ_DEFAULT_CHANNEL_HANDLER
        limit = mq_settings.MQ_MAX_MESSAGE_BYTES
        if len(raw) > limit:
            text = _str(raw[:OVERSIZED_KEEP_CHARS])
            is_json, data, error = False, None, f"oversized: {len(raw)} bytes > limit {limit}; not handled"
        else:
            text, is_json, data = decode(raw)
            message = ChannelMessage(
                channel=channel,
                pattern=pattern,
                text=text,
                data=data,
                is_json=is_json,
                listener=self.listener_id,
                received_at=received_at,
            )
            error = self._call(handler_path, message)
        if error:
            self.failed += 1
            logger.warning(
                "event=message_failed listener=%s channel=%s handler=%s error=%r",
                self.listener_id,
                channel,
                handler_path,
                error.strip().splitlines()[-1],
            )
        receipt = ReceivedMessage(
            listener=self.listener_id,
            channel=channel,
            pattern=pattern or "",
            payload=text,
            is_json=is_json,
            data=data if is_json else None,
            received_at=received_at,
            handler=handler_path,
            ok=not error,
            error=error,
        )
        try:
            self._db(receipts.record, receipt)
        except DatabaseGaveUp:
            logger.error("event=receipt_lost listener=%s channel=%s (stopping while the database is down)", self.listener_id, channel)
            raise

    def _call(self, handler_path, message):
        """Run the handler; the error text, or "" when it went well."""
        try:
            self.handlers[handler_path](message)
        except Exception as exc:
            return "".join(traceback.format_exception(exc))
        return ""

    def _db(self, fn, *args):
        return retry_database(
            fn, *args, owner=f"listener={self.listener_id}", notifier=self.notifier, give_up=lambda: self.stopping
        )

    # --- outages -----------------------------------------------------------
    def _lost(self, exc):
        """Drop the connection, log the outage once, wait before trying again."""
        self._drop_subscription()
        self._attempts += 1
        if self._down_since is None:
            self._down_since = time.monotonic()
            logger.error("event=channel_down listener=%s error=%r", self.listener_id, str(exc))
            self.notifier.status(f"reconnecting to Redis; {self._status()}")
        else:
            logger.debug("event=resubscribe_failed listener=%s attempt=%d error=%r", self.listener_id, self._attempts, str(exc))
        # Full jitter on the upper half, so listeners cut off together do not
        # come back in lockstep.
        delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** min(self._attempts - 1, 16))
        self._pause(random.uniform(delay / 2, delay))

    def _drop_subscription(self):
        if self.pubsub is not None:
            try:
                self.pubsub.reset()
            except (RedisError, OSError):
                pass  # the connection is being thrown away anyway
            self.pubsub = None

    def _pause(self, seconds):
        deadline = time.monotonic() + seconds
        while not self.stopping:
            self.notifier.watchdog()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(0.25, remaining))

    # --- liveness ----------------------------------------------------------
    def _heartbeat_if_due(self):
        now = time.monotonic()
        if now < self._next_beat:
            return
        self._next_beat = now + mq_settings.MQ_LEASE_SECONDS / 3
        info = {
            "channels": self.channels,
            "patterns": self.patterns,
            "since": self.since.isoformat(),
            "received": self.received,
            "failed": self.failed,
            "subscribed": self.pubsub is not None and self._unconfirmed == 0,
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        try:
            presence.announce(self.client, "listener", self.listener_id, info, mq_settings.MQ_LEASE_SECONDS * 3)
        except RedisError:
            pass  # the subscription reports Redis outages
        self.notifier.status(self._status())

    def _status(self):
        return f"received={self.received} failed={self.failed} channels={','.join(self.channels + self.patterns)}"

    def _shutdown(self):
        self.notifier.stopping()
        if self.pubsub is not None:
            try:
                self.pubsub.unsubscribe()
                self.pubsub.punsubscribe()
            except RedisError:
                pass  # closing the connection below unsubscribes just as well
        self._drop_subscription()
        self.subscriber.close()
        try:
            presence.withdraw(self.client, "listener", self.listener_id)
        except RedisError as exc:
            logger.warning("event=withdraw_failed listener=%s error=%r (the entry will expire)", self.listener_id, str(exc))
        close_old_connections()
        logger.info("event=listener_stop listener=%s received=%d failed=%d", self.listener_id, self.received, self.failed)
