"""Channel handlers: what they receive, how they are found, the default one.

A handler is a plain function ``handler(message)`` named by dotted path in
MQ_CHANNEL_HANDLERS ({channel or pattern: path}) or MQ_DEFAULT_CHANNEL_HANDLER.
Its return value is ignored; an exception marks the receipt failed (with the
traceback) and the listener goes on with the next message. Redis will not
send the message again, so a handler that must not lose work should enqueue
a task rather than do the work itself.
"""

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from tasks.conf import mq_settings
from tasks.storable import as_text

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


def load_handlers():
    """{dotted path: function} for every configured handler.

    Imported at start-up, so a typo stops the listener before it subscribes
    rather than failing every message.
    """
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


def handler_path(channel, pattern):
    """The handler for a message: its channel's, else its pattern's, else the default."""
    configured = mq_settings.MQ_CHANNEL_HANDLERS
    return configured.get(channel) or (pattern and configured.get(pattern)) or mq_settings.MQ_DEFAULT_CHANNEL_HANDLER


def decode(raw):
    """(text, is_json, data) for a payload; never raises."""
    text = as_text(raw)
    try:
        return text, True, json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return text, False, text


def _reject_constant(name):
    # NaN and Infinity are Python's extension, not JSON; PostgreSQL's jsonb refuses them.
    raise ValueError(f"{name} is not JSON")
