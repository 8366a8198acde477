"""The channel listener: a plain class that ``listen_channel`` runs.

It subscribes to channels and patterns, hands every message to the handler
configured for it, and records one ReceivedMessage per message. A handler
that raises is recorded as failed and the listener goes on.

A lost connection (closed, or silent past the deadline in
tasks/subscription.py) is dropped and subscribed again with capped
exponential backoff and jitter. Each outage is logged twice, when it starts
and when it ends; the attempts in between only at debug level. Messages
published meanwhile are lost: publish/subscribe is at-most-once.

Signal handlers only set ``stopping``; the loop reads with a timeout of
MQ_BLOCK_SECONDS, so it notices within that once the current handler returns.
"""

import logging
import os
import socket
import time
import traceback

from django.db import close_old_connections, connections, router
from django.utils import timezone
from redis.exceptions import RedisError

from tasks.backoff import backoff_delay
from tasks.queue import presence
from tasks.channel import receipts
from tasks.conf import mq_settings
from tasks.queue.connection import get_redis, subscriber_client
from tasks.dbretry import REFUSALS, retry_database
from tasks.exceptions import DatabaseGaveUp
from tasks.channel.handlers import ChannelMessage, decode, handler_path, load_handlers
from tasks.models import ReceivedMessage
from tasks.sdnotify import SystemdNotifier
from tasks.queue.envelope import oversized
from tasks.storable import as_text, printable, unstorable
from tasks.channel.subscription import PATTERNS_ON_CLUSTER, Subscription, sharded

logger = logging.getLogger(__name__)

BACKOFF_BASE = 0.1
BACKOFF_MAX = 5.0
# An oversized payload is not handled; the receipt keeps this much of it.
OVERSIZED_KEEP_BYTES = 1000
# A CharField always has one; the stubs type it for every field (int | None).
CHANNEL_MAX_LENGTH: int = ReceivedMessage._meta.get_field("channel").max_length  # type: ignore[assignment]


class Listener:
    def __init__(self, channels=None, patterns=None, listener_id=None, max_messages=None, notifier=None):
        self.patterns = list(dict.fromkeys(patterns or []))
        # The default channel only when nothing else was asked for.
        default = [] if self.patterns else [mq_settings.MQ_DEFAULT_CHANNEL]
        self.channels = list(dict.fromkeys(channels or default))
        self.listener_id = listener_id or f"{socket.gethostname()}-{os.getpid()}"
        self.max_messages = max_messages
        self.notifier = notifier or SystemdNotifier()
        self.handlers = load_handlers()
        self.client = get_redis(retries=0)  # presence only
        self.subscriber = subscriber_client()
        if self.patterns and sharded(self.subscriber):
            self.subscriber.close()
            raise ValueError(PATTERNS_ON_CLUSTER)
        self.using = router.db_for_write(ReceivedMessage)
        self.stopping = False
        self.received = 0
        self.failed = 0
        self.since = timezone.now()
        self.subscription = None
        self._announced = False  # the current subscription's confirmation was handled
        self._ready = False
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
                    if self.subscription is None:
                        self.subscription = Subscription(
                            self.subscriber, self.channels, self.patterns, mq_settings.MQ_SOCKET_TIMEOUT
                        )
                        self._announced = False
                    message = self.subscription.read(mq_settings.MQ_BLOCK_SECONDS)
                    if not self._announced and self.subscription.confirmed:
                        self._subscribed()
                    if message is not None:
                        self._handle(message)
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

    def _subscribed(self):
        self._announced = True
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
        channel = as_text(message["channel"])
        pattern = as_text(message["pattern"]) if message["pattern"] else None
        raw = message["data"]
        path = handler_path(channel, pattern)
        limit = mq_settings.MQ_MAX_MESSAGE_BYTES
        too_large = oversized(raw, limit)
        if too_large:
            text = as_text(raw[:OVERSIZED_KEEP_BYTES])
            is_json, data, error = False, None, f"{too_large}; not handled"
        else:
            text, is_json, data = decode(raw)
            error = self._call(
                path,
                ChannelMessage(
                    channel=channel,
                    pattern=pattern,
                    text=text,
                    data=data,
                    is_json=is_json,
                    listener=self.listener_id,
                    received_at=received_at,
                ),
            )
        if error:
            self.failed += 1
            logger.warning(
                "event=message_failed listener=%s channel=%s handler=%s error=%r",
                self.listener_id,
                channel,
                path,
                error.strip().splitlines()[-1],
            )
        # JSON may parse to what no database stores (infinity from 1e400,
        # NUL, lone surrogates): the handler had it, the receipt keeps the text.
        problem = unstorable(data) if is_json else None
        if problem:
            logger.warning(
                "event=receipt_without_data listener=%s channel=%s reason=%r", self.listener_id, channel, problem
            )
        receipt = ReceivedMessage(
            listener=self.listener_id,
            # NUL bytes are valid in a Redis message and a channel name, not in
            # a PostgreSQL text column.
            channel=printable(channel),
            pattern=pattern or "",
            payload=printable(text),
            is_json=is_json,
            data=data if is_json and not problem else None,
            received_at=received_at,
            handler=path,
            ok=not error,
            error=error,
        )
        try:
            self._db(receipts.record, receipt)
        except DatabaseGaveUp:
            logger.error("event=receipt_lost listener=%s channel=%s reason=stopping_while_db_down", self.listener_id, channel)
            raise
        except REFUSALS as exc:  # not an outage: _db waits those out
            self._record_refused(receipt, exc)

    def _record_refused(self, receipt, exc):
        """Record what can be kept of a receipt the database refused: the text
        escaped, no parsed value, marked failed with the reason."""
        reason = printable(f"the receipt could not be recorded as received: {type(exc).__name__}: {exc}".strip())
        channel = receipt.channel[:200]
        logger.error("event=receipt_refused listener=%s channel=%s error=%r", self.listener_id, channel, reason)
        fallback = ReceivedMessage(
            listener=receipt.listener,
            channel=printable(receipt.channel)[:CHANNEL_MAX_LENGTH],
            pattern=printable(receipt.pattern)[:CHANNEL_MAX_LENGTH],
            payload=printable(receipt.payload),
            is_json=receipt.is_json,
            received_at=receipt.received_at,
            handler=receipt.handler,
            ok=False,
            error=printable(f"{reason}\n{receipt.error}".strip()),
        )
        try:
            self._db(receipts.record, fallback)
        except REFUSALS as again:
            logger.error("event=receipt_lost listener=%s channel=%s error=%r", self.listener_id, channel, str(again))

    def _call(self, path, message):
        """Run the handler; the error with its traceback, or "" when it went well."""
        try:
            self.handlers[path](message)
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
        if self.subscription is not None:
            self.subscription.close()
            self.subscription = None
        self._attempts += 1
        if self._down_since is None:
            self._down_since = time.monotonic()
            logger.error("event=channel_down listener=%s error=%r", self.listener_id, str(exc))
            self.notifier.status(f"reconnecting to Redis; {self._status()}")
        else:
            logger.debug("event=resubscribe_failed listener=%s attempt=%d error=%r", self.listener_id, self._attempts, str(exc))
        # Jitter over the upper half, so listeners cut off together do not
        # all come back in the same instant.
        self._pause(backoff_delay(self._attempts - 1, BACKOFF_BASE, BACKOFF_MAX, jitter=True))

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
            "subscribed": self.subscription is not None and self.subscription.confirmed,
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
        if self.subscription is not None:
            self.subscription.close(unsubscribe=True)
            self.subscription = None
        self.subscriber.close()
        try:
            presence.withdraw(self.client, "listener", self.listener_id)
        except RedisError as exc:
            logger.warning("event=withdraw_failed listener=%s error=%r (the entry will expire)", self.listener_id, str(exc))
        close_old_connections()
        logger.info("event=listener_stop listener=%s received=%d failed=%d", self.listener_id, self.received, self.failed)
