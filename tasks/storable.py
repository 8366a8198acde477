"""What a database can store of a message, checked before anything tries.

Python's json module reads values that PostgreSQL or SQLite then refuse, and
nesting that json.loads accepts can still exhaust the recursion limit when
a row is saved or a retry re-encoded. Refusing such values up front turns a
crashed worker (and the next one, as the message comes back) into one
dead-lettered message.
"""

import json

# Deepest nesting of lists and objects accepted in a task's arguments.
MAX_ARGS_DEPTH = 100


def nested_deeper(raw: str | bytes, value: object, limit: int) -> bool:
    """Whether ``value`` (decoded from ``raw``) nests lists/dicts deeper than
    ``limit``, walked without recursion. Counting brackets in the raw text
    first keeps the common, shallow message at one C-level scan."""
    if isinstance(raw, bytes):
        brackets = raw.count(b"[") + raw.count(b"{")
    else:
        brackets = raw.count("[") + raw.count("{")
    if brackets <= limit:
        return False
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


def unstorable(value: object) -> str | None:
    """Why the databases cannot store ``value`` (decoded JSON) as it is, or None.

    Python's json reads and writes NaN and Infinity (also from 1e400), lone
    surrogates and NUL characters; PostgreSQL refuses all of them, and SQLite's
    JSON check refuses NaN. Messages and results carrying them are refused
    before they reach a database write.
    """
    if value is None or type(value) in (bool, int):
        return None  # what most tasks return, checked without encoding it
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")  # UnicodeEncodeError (a ValueError) on a lone surrogate
    except ValueError as exc:
        return f"not storable as JSON: {exc}"
    if "\\u0000" in text and contains_nul(value):
        return "contains NUL characters, which PostgreSQL cannot store"
    return None


def contains_nul(value):
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def printable(text):
    """``text`` without what a database text column refuses (NUL, lone surrogates)."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def as_text(value):
    """A value Redis returned, as text: bytes decoded as UTF-8 with invalid
    bytes backslash-escaped (what arrives is shown, never refused)."""
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)
