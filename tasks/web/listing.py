"""GET /api/tasks: the query string read and checked, and the opaque cursor.

A cursor is the (enqueued_at, id) of the last row of a page, as URL-safe
base64 of JSON: the next page is the rows strictly older in that order,
read through the (enqueued_at, id) index, so pages stay fast and a row
enqueued meanwhile (newer than every cursor) never shifts them: no row is
seen twice or skipped.
"""

import base64
import binascii
import json
from datetime import datetime
from datetime import timezone as dt_timezone

from tasks.models import TaskRecord, TaskStatus
from tasks.storable import unstorable
from tasks.web.errors import ApiError

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
PARAMETERS = {"status", "task", "queue", "cursor", "limit"}
# Filter -> model field; its max_length bounds what may be asked.
FILTERS = {"status": "status", "task": "task_path", "queue": "queue"}


def page_request(query):
    """(filters, cursor, limit) from the query string; ApiError 400 if wrong."""
    unknown = sorted(set(query) - PARAMETERS)
    if unknown:
        raise ApiError(400, f"unknown parameter(s) {', '.join(map(repr, unknown))}; expected {', '.join(sorted(PARAMETERS))}")
    filters = {}
    for name, field_name in FILTERS.items():
        if name in query:
            filters[field_name] = _filter_value(name, field_name, query)
    cursor = decode_cursor(query["cursor"]) if "cursor" in query else None
    return filters, cursor, _limit(query.get("limit"))


def _filter_value(name, field_name, query):
    values = query.getlist(name)
    if len(values) != 1:
        raise ApiError(400, f"'{name}' may be given once")
    value = values[0]
    if name == "status" and value not in TaskStatus.values:
        raise ApiError(400, f"'status' must be one of {', '.join(TaskStatus.values)}")
    limit = getattr(TaskRecord._meta.get_field(field_name), "max_length", None) or 0
    if not value or len(value) > limit or unstorable(value):
        raise ApiError(400, f"'{name}' must be 1 to {limit} printable characters")
    return value


def _limit(text):
    if text is None:
        return DEFAULT_LIMIT
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(400, f"'limit' must be a whole number from 1 to {MAX_LIMIT}")
    return limit


def encode_cursor(record):
    text = json.dumps([record.enqueued_at.isoformat(), record.id])
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor):
    try:
        at, task_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        at = datetime.fromisoformat(at)
        if at.tzinfo is None or not isinstance(task_id, str) or unstorable(task_id):
            raise ValueError(cursor)
        # In UTC here, as the database compares it: a forged offset at the
        # ends of the calendar (0001-01-01T00:00+14:00) has no UTC time.
        at = at.astimezone(dt_timezone.utc)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError, OverflowError):
        raise ApiError(400, "'cursor' is not a cursor this API gave out") from None
    return at, task_id


def page(filters, cursor, limit):
    """(rows, whether more follow), newest first."""
    rows = list(TaskRecord.objects.filter(**filters).newest_first(before=cursor)[: limit + 1])
    return rows[:limit], len(rows) > limit
