"""The JSON envelope that carries one task through Redis.

JSON only, never pickle: a message is data, and decoding one can never run
code. ``decode`` sorts whatever a worker finds on a queue into an envelope,
a raw payload from a producer that knows nothing of mqsite, or a bad message
with the reason it is bad.
"""

import json
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from tasks.storable import MAX_ARGS_DEPTH, as_text, nested_deeper, printable, unstorable

# Ids travel into Redis keys, logs and URLs: keep them boring.
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
# An envelope starts with its id: '{"id":"...' as encode() writes it, or with
# the spaces other JSON encoders add. An oversized message is never parsed
# whole, yet is recorded under its own id (scripts.TAKE_BATCH reads it so too).
HEAD_ID = re.compile(rb'\A\s*\{\s*"id"\s*:\s*"([A-Za-z0-9_.:-]{1,64})"')

# The Tasks API's priority range; a higher one is taken first (keys.lane).
MIN_PRIORITY, MAX_PRIORITY = -100, 100


@dataclass(frozen=True)
class Envelope:
    id: str
    task: str
    queue: str
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)
    enqueued_at: str = ""
    attempt: int = 1
    priority: int = 0

    def encode(self):
        data = {
            "id": self.id,
            "task": self.task,
            "queue": self.queue,
            "args": self.args,
            "kwargs": self.kwargs,
            "enqueued_at": self.enqueued_at,
            "attempt": self.attempt,
        }
        if self.priority:
            # Only when not 0: the common message, and the seed's, stay as they were.
            data["priority"] = self.priority
        return json.dumps(data, separators=(",", ":"))

    def next_attempt(self):
        return replace(self, attempt=self.attempt + 1)


@dataclass(frozen=True)
class RawPayload:
    text: str


@dataclass(frozen=True)
class BadMessage:
    reason: str
    id: str = ""
    task: str = ""


# How much of an oversized item its dead-letter entry keeps.
DEAD_EXCERPT_BYTES = 1024


@dataclass(frozen=True)
class DeadLetter:
    """What a dead-letter entry says of an item; scripts.DEAD_ENTRY writes it,
    adding the worker and the time."""

    reason: str
    id: str
    task: str
    item: str

    @classmethod
    def of(cls, raw, reason, task_id, task_path, max_bytes):
        # An oversized item keeps an excerpt, as TAKE_BATCH keeps of what it
        # dead-letters unread: one that came through the blocking take was
        # kept whole, MQ_DEAD_LETTER_MAX of them filling Redis's memory.
        if oversized(raw, max_bytes):
            raw = raw[:DEAD_EXCERPT_BYTES]
        return cls(reason, task_id, task_path, as_text(raw))


def now_iso():
    return datetime.now(timezone.utc).isoformat()


def oversized(payload, limit):
    """Why a message is too large to carry, or "" when it fits ``limit`` bytes.

    The one size check of every path: producers refuse such a message
    before writing anything, workers dead-letter it. ``payload`` is the
    message (text or bytes), or its size when Redis measured it.
    """
    if isinstance(payload, int):
        size = payload
    else:
        size = len(payload.encode() if isinstance(payload, str) else payload)
    return f"oversized: {size} bytes, over the limit of {limit}" if size > limit else ""


def head_id(raw):
    """The id a message starts with, or "" (see HEAD_ID)."""
    head = raw[:100]
    match = HEAD_ID.match(head.encode() if isinstance(head, str) else head)
    return match.group(1).decode() if match else ""


def decode(raw, queue_name, max_bytes):
    """Classify one item taken from a queue; never raises."""
    problem = oversized(raw, max_bytes)
    if problem:
        return BadMessage(problem, id=head_id(raw))
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        return BadMessage("not UTF-8 text")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict) or "task" not in data:
        problem = unstorable(text)
        return BadMessage(problem) if problem else RawPayload(text)
    envelope = _envelope_from(data, queue_name)
    if isinstance(envelope, Envelope):
        # Checked before anything stores or re-encodes the message: a value the
        # database refuses, or nesting that recurses too deep, would end the
        # worker, and the message would come back to end the next one.
        if nested_deeper(text, [envelope.args, envelope.kwargs], MAX_ARGS_DEPTH):
            return BadMessage(f"args nested deeper than {MAX_ARGS_DEPTH} levels", id=envelope.id, task=printable(envelope.task))
        problem = unstorable([envelope.task, envelope.args, envelope.kwargs])
        if problem:
            return BadMessage(problem, id=envelope.id, task=printable(envelope.task))
    elif envelope.task:
        envelope = replace(envelope, task=printable(envelope.task))  # stored in history as it came
    return envelope


def _envelope_from(data, queue_name):
    task_id, task = data.get("id"), data.get("task")
    task_id = task_id if isinstance(task_id, str) and ID_PATTERN.match(task_id) else ""
    if not isinstance(task, str) or not task:
        return BadMessage("envelope has no task path", id=task_id)
    task = task[:255]
    if not task_id:
        return BadMessage("envelope has no valid id", task=task)
    args, kwargs = data.get("args", []), data.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        return BadMessage("args must be a list and kwargs an object", id=task_id, task=task)
    attempt = data.get("attempt", 1)
    priority = data.get("priority", 0)
    if not valid_priority(priority):
        return BadMessage(f"priority must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}", id=task_id, task=task)
    return Envelope(
        id=task_id,
        task=task,
        queue=queue_name,
        args=args,
        kwargs=kwargs,
        enqueued_at=str(data.get("enqueued_at", "")),
        attempt=attempt if isinstance(attempt, int) and attempt > 0 else 1,
        priority=priority,
    )


def valid_priority(value):
    return type(value) is int and MIN_PRIORITY <= value <= MAX_PRIORITY
