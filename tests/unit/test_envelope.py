"""The JSON envelope: what a worker makes of whatever it finds on a queue."""

import json

import pytest

from tasks.queue.envelope import ID_PATTERN, BadMessage, Envelope, RawPayload, decode, head_id, oversized
from tasks.storable import MAX_ARGS_DEPTH

pytestmark = pytest.mark.no_redis

LIMIT = 10_000


def envelope(**changes):
    fields = {
        "id": "t-1",
        "task": "tests.fixture_tasks.add",
        "queue": "default",
        "args": [1, [2, 3]],
        "kwargs": {"text": "é ✓"},
        "enqueued_at": "2025-01-02T03:04:05+00:00",
        "attempt": 2,
    }
    return Envelope(**{**fields, **changes})


def message(**fields):
    return json.dumps({"id": "t-1", "task": "tests.fixture_tasks.add", **fields})


@pytest.mark.parametrize("as_bytes", [True, False], ids=["bytes", "str"])
def test_encode_then_decode_gives_the_envelope_back(as_bytes):
    original = envelope()
    raw = original.encode()
    assert decode(raw.encode() if as_bytes else raw, "default", LIMIT) == original


def test_encode_is_compact_and_starts_with_the_id():
    raw = envelope().encode()
    assert raw.startswith('{"id":"t-1",')
    assert ", " not in raw and '": ' not in raw
    assert head_id(raw) == "t-1"


def test_the_queue_is_where_the_message_was_found():
    assert decode(envelope(queue="elsewhere").encode(), "emails", LIMIT).queue == "emails"


def test_defaults_for_what_a_foreign_producer_leaves_out():
    decoded = decode('{"id": "x1", "task": "a.b"}', "default", LIMIT)
    assert decoded == Envelope(id="x1", task="a.b", queue="default", args=[], kwargs={}, enqueued_at="", attempt=1)


@pytest.mark.parametrize("attempt", [0, -3, "2", 1.5, None])
def test_an_unusable_attempt_counts_as_the_first(attempt):
    assert decode(message(attempt=attempt), "default", LIMIT).attempt == 1


def test_next_attempt_counts_up_and_leaves_the_original_alone():
    first = envelope(attempt=1)
    second = first.next_attempt()
    assert (first.attempt, second.attempt) == (1, 2)
    assert second == envelope(attempt=2)


@pytest.mark.parametrize("raw", ["not json at all", "{broken", "[1, 2]", '"a string"', "42", '{"no": "task"}'])
def test_what_is_not_an_envelope_is_a_raw_payload(raw):
    assert decode(raw, "default", LIMIT) == RawPayload(raw)


def test_a_raw_payload_the_database_cannot_store_is_bad():
    assert decode("a\x00b", "default", LIMIT) == BadMessage("contains NUL characters, which PostgreSQL cannot store")


def test_invalid_utf8_is_bad():
    assert decode(b'{"id": "x", "task": "\xff"}', "default", LIMIT) == BadMessage("not UTF-8 text")


def test_oversized_is_bad_and_keeps_the_id_it_starts_with():
    raw = message(args=["x" * LIMIT]).encode()
    assert decode(raw, "default", LIMIT) == BadMessage(f"oversized: {len(raw)} bytes, over the limit of {LIMIT}", id="t-1")


def test_oversized_without_an_id_in_front_has_none():
    raw = json.dumps({"task": "a.b", "id": "t-1", "args": ["x" * LIMIT]})
    assert decode(raw, "default", LIMIT).id == ""


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"task": ""}, "envelope has no task path"),
        ({"task": 7}, "envelope has no task path"),
        ({"args": {"a": 1}}, "args must be a list and kwargs an object"),
        ({"kwargs": [1]}, "args must be a list and kwargs an object"),
    ],
)
def test_malformed_envelopes_are_bad_with_a_reason(fields, reason):
    assert decode(message(**fields), "default", LIMIT).reason == reason


@pytest.mark.parametrize("task_id", ["", "has space", "x" * 65, "semi;colon", "naïve", 12, None])
def test_an_id_outside_the_pattern_is_bad(task_id):
    decoded = decode(json.dumps({"id": task_id, "task": "a.b"}), "default", LIMIT)
    assert decoded == BadMessage("envelope has no valid id", task="a.b")


@pytest.mark.parametrize("task_id", ["a", "x" * 64, "A-z_0.9:x"])
def test_ids_inside_the_pattern_pass(task_id):
    assert ID_PATTERN.match(task_id)
    assert decode(json.dumps({"id": task_id, "task": "a.b"}), "default", LIMIT).id == task_id


def test_nesting_past_the_limit_is_bad_with_id_and_task():
    args = []
    for _ in range(MAX_ARGS_DEPTH):
        args = [args]
    decoded = decode(message(args=args), "default", 10**6)
    assert decoded == BadMessage(f"args nested deeper than {MAX_ARGS_DEPTH} levels", id="t-1", task="tests.fixture_tasks.add")
    assert isinstance(decode(message(args=args[0]), "default", 10**6), Envelope)


def test_arguments_the_database_cannot_store_are_bad():
    decoded = decode(message(kwargs={"n": float("nan")}), "default", LIMIT)
    assert decoded.id == "t-1" and decoded.reason.startswith("not storable as JSON")
    decoded = decode(message(args=["\ud800"]), "default", LIMIT)
    assert decoded.id == "t-1" and decoded.reason.startswith("not storable as JSON")


def test_a_bad_task_path_is_made_printable_for_the_history():
    decoded = decode(json.dumps({"id": "t-1", "task": "a\x00b", "args": "not a list"}), "default", LIMIT)
    assert decoded.task == "a\\x00b"
    decoded = decode(json.dumps({"id": "t-1", "task": "a\x00b", "args": [float("inf")]}), "default", LIMIT)
    assert decoded.task == "a\\x00b"


def test_a_long_task_path_is_cut_to_its_column():
    assert len(decode(message(task="a." + "b" * 300), "default", LIMIT).task) == 255


@pytest.mark.parametrize(
    "payload, limit, expected",
    [
        ("abc", 3, ""),
        ("abcd", 3, "oversized: 4 bytes, over the limit of 3"),
        ("éé", 3, "oversized: 4 bytes, over the limit of 3"),  # bytes, not characters
        (b"abcd", 4, ""),
        (5, 4, "oversized: 5 bytes, over the limit of 4"),  # a size Redis measured
    ],
)
def test_oversized_measures_bytes(payload, limit, expected):
    assert oversized(payload, limit) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        (b'{"id":"abc","task":"x"}', "abc"),
        ('  {  "id" :  "a:b.c-d_e" }', "a:b.c-d_e"),
        (b'{"task":"x","id":"abc"}', ""),
        (b'{"id":"' + b"x" * 65 + b'"}', ""),
        (b"garbage", ""),
    ],
)
def test_head_id_reads_only_a_leading_id(raw, expected):
    assert head_id(raw) == expected
