"""What the databases can store of a message, decided before any write."""

import json

import pytest

from tasks.storable import MAX_ARGS_DEPTH, contains_nul, nested_deeper, printable, unstorable

pytestmark = pytest.mark.no_redis


def nest(levels, innermost=None):
    value = [] if innermost is None else [innermost]
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value",
    [None, 0, 1.5, "text", "é ✓ 𝄞", [1, [2, {"a": None}]], {"k": ["v"]}, "\\u0000 as six characters", ""],
)
def test_ordinary_values_are_storable(value):
    assert unstorable(value) is None


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), float("-inf"), json.loads("1e400"), [1, {"x": float("nan")}]],
    ids=["nan", "inf", "-inf", "1e400", "nested-nan"],
)
def test_nan_and_infinity_are_refused(value):
    assert unstorable(value).startswith("not storable as JSON:")


@pytest.mark.parametrize("value", ["\ud800", ["ok", "\udfff"], {"\ud83d": 1}], ids=["str", "in-list", "dict-key"])
def test_lone_surrogates_are_refused(value):
    assert unstorable(value).startswith("not storable as JSON:")


@pytest.mark.parametrize("value", ["a\x00b", ["ok", {"k": "\x00"}], {"key\x00": 1}], ids=["str", "nested", "dict-key"])
def test_nul_characters_are_refused(value):
    assert unstorable(value) == "contains NUL characters, which PostgreSQL cannot store"


def test_contains_nul_walks_keys_values_and_lists():
    assert contains_nul({"a": [1, {"b": "x\x00"}]})
    assert contains_nul({"\x00": 1})
    assert not contains_nul({"a": [1, {"b": "\\u0000"}], "c": 2.0})


@pytest.mark.parametrize(
    "text, expected",
    [
        ("plain ✓", "plain ✓"),
        ("a\x00b", "a\\x00b"),
        ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
        ("", ""),
    ],
)
def test_printable_keeps_text_and_escapes_what_a_column_refuses(text, expected):
    assert printable(text) == expected
    assert unstorable(printable(text)) is None


def test_depth_up_to_the_limit_passes_and_one_more_is_refused():
    """Counted as decode() asks: the args list itself is the first level."""
    at_limit, over = nest(MAX_ARGS_DEPTH), nest(MAX_ARGS_DEPTH + 1)
    assert not nested_deeper(json.dumps([at_limit, {}]), [at_limit, {}], MAX_ARGS_DEPTH)
    assert nested_deeper(json.dumps([over, {}]), [over, {}], MAX_ARGS_DEPTH)


def test_a_scalar_is_no_level_of_its_own():
    value = nest(5, innermost=1)
    assert not nested_deeper(json.dumps(value), value, 5)
    assert nested_deeper(json.dumps(value), value, 4)


def test_dicts_count_like_lists_and_bytes_are_read_like_text():
    value = {"a": {"b": {"c": {}}}}
    assert nested_deeper(json.dumps(value).encode(), value, 2)
    assert not nested_deeper(json.dumps(value).encode(), value, 3)


def test_brackets_inside_strings_do_not_make_a_value_deep():
    """Many brackets in the text send the check to the walk, which measures
    the value itself: a flat list of bracket-laden strings is shallow."""
    value = ["[[[[{{{{"] * 50
    assert not nested_deeper(json.dumps(value), value, 5)
