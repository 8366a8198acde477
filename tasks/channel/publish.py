"""Publishing to a channel: one PUBLISH, one PublishedMessage row.

The payload goes out exactly as given when it is a str (so mqsite and a
plain ``redis-cli PUBLISH`` speak the same language) and as JSON otherwise.
Nothing is added to it on the wire; tasks/receipts.py explains how receipts
are still tied to their publish.

Delivery is at-most-once: Redis hands the message to the subscriptions that
exist at that instant and keeps no copy. ``receivers`` says how many there
were; a listener that is down or reconnecting misses the message for good.
Use the work queue for anything that must not be lost.
"""

import json
import logging

from django.db import transaction
from django.utils import timezone
from redis.exceptions import RedisError

from tasks.channel import receipts
from tasks.channel.subscription import sharded
from tasks.conf import mq_settings
from tasks.exceptions import ChannelUnavailable, MessageTooLarge
from tasks.queue.connection import get_redis
from tasks.queue.envelope import oversized
from tasks.models import PublishedMessage
from tasks.storable import unstorable

logger = logging.getLogger(__name__)

# A CharField always has one; the stubs type it for every field (int | None).
CHANNEL_MAX_LENGTH: int = PublishedMessage._meta.get_field("channel").max_length  # type: ignore[assignment]


def encode(data):
    """The text sent for ``data``: a str as is, anything else as JSON."""
    if isinstance(data, str):
        return data
    try:
        return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except RecursionError:
        raise ValueError("data is nested too deeply to encode as JSON") from None


def check_channel(channel):
    """The channel name to use, or ValueError saying what is wrong with it."""
    channel = mq_settings.MQ_DEFAULT_CHANNEL if channel is None else channel
    if not isinstance(channel, str) or not channel.strip():
        raise ValueError("channel must be a non-empty string")
    if len(channel) > CHANNEL_MAX_LENGTH:
        raise ValueError(f"channel name is longer than {CHANNEL_MAX_LENGTH} characters")
    problem = unstorable(channel)
    if problem:
        raise ValueError(f"channel name cannot be stored: {problem}")
    return channel


def publish(data, channel=None, publisher=""):
    """Broadcast ``data`` on ``channel``; return how many subscriptions got it.

    Raises ValueError for a bad channel or text the database cannot store,
    TypeError or ValueError for data JSON cannot encode, MessageTooLarge over the size limit, and ChannelUnavailable when
    Redis does not take the message. In every one of these cases nothing is
    published and no row is written.
    """
    channel = check_channel(channel)
    payload = encode(data)
    # Text with NUL or a lone surrogate: PostgreSQL refused the row, and the
    # API took that for an outage.
    problem = unstorable(payload)
    if problem:
        raise ValueError(f"message cannot be stored: {problem}")
    size = len(payload.encode())
    problem = oversized(size, mq_settings.MQ_MAX_MESSAGE_BYTES)
    if problem:
        raise MessageTooLarge(f"the message is {problem}")
    # The row is written first and PUBLISH happens inside its transaction:
    # a database that is down stops the publish, and a Redis that refuses it
    # rolls the row back. Only a failed COMMIT after a good PUBLISH leaves a
    # broadcast unrecorded.
    with transaction.atomic():
        row = PublishedMessage.objects.create(
            channel=channel,
            payload=payload,
            digest=receipts.digest(payload),
            published_at=timezone.now(),
            publisher=(publisher or "")[:150],
        )
        try:
            # No retry: a PUBLISH whose reply was lost may have been
            # delivered, and sending it again would broadcast it twice.
            client = get_redis(retries=0)
            # On Redis Cluster a plain PUBLISH goes to every node; SPUBLISH
            # goes to the channel's slot only, where the listeners SSUBSCRIBE.
            send = client.spublish if sharded(client) else client.publish
            row.receivers = send(channel, payload)
        except RedisError as exc:
            raise ChannelUnavailable(f"Redis did not take the message for channel {channel!r}: {exc}") from exc
        row.save(update_fields=["receivers"])
        # robust: the broadcast happened; a failed link must not turn it into an error.
        transaction.on_commit(lambda: receipts.link_publish(row), robust=True)
    logger.info(
        "event=published channel=%s receivers=%d bytes=%d publisher=%s id=%d",
        channel,
        row.receivers,
        size,
        publisher or "-",
        row.pk,
    )
    return row.receivers
