"""What a channel handler receives, and the default handler.

A handler is a plain function ``handler(message)`` named by dotted path in
MQ_CHANNEL_HANDLERS ({channel or pattern: path}) or MQ_DEFAULT_CHANNEL_HANDLER.
Its return value is ignored; an exception marks the receipt failed (with the
traceback) and the listener goes on with the next message. Redis will not
send the message again, so a handler that must not lose work should enqueue
a task rather than do the work itself.
"""

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

logger = logging.getLogger(__name__)

PREVIEW_CHARS = 200


@dataclass(frozen=True)
class ChannelMessage:
    channel: str
    # The pattern subscription that matched, or None for a channel subscription.
    pattern: str | None
    # The payload as text; bytes that are not UTF-8 are backslash-escaped.
    text: str
    # The parsed payload when it is JSON, else the text itself.
    data: Any
    is_json: bool
    listener: str
    received_at: datetime


def log_message(message):
    """Log the message, one line (the default handler)."""
    preview = message.text if len(message.text) <= PREVIEW_CHARS else message.text[:PREVIEW_CHARS] + "..."
    logger.info(
        "event=message channel=%s pattern=%s listener=%s json=%s text=%r",
        message.channel,
        message.pattern or "-",
        message.listener,
        "yes" if message.is_json else "no",
        preview,
    )
