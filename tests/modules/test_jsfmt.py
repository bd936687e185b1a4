import json
import math
import shutil
import subprocess

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests_support import need

from modules.common import jsfmt
from modules.common.jsfmt import (
    JSONError,
    js_dumps,
    js_iso,
    js_len,
    js_loads,
    js_number,
    js_trim,
    parse_time,
)


def test_emoji_outside_bmp_counts_two_code_units():
    assert js_len("😀" * 2000) == 4000
    assert js_len("a\u00e9") == 2


def test_trim_strips_feff_and_js_whitespace_only():
    assert js_trim("\ufeff\u00a0 hi \u3000\u2028") == "hi"
    # Python's str.strip also removes the C0 separators and NEL; JavaScript does not.
    assert js_trim("\x1chi\x85") == "\x1chi\x85"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (1704103200123, "2024-01-01T10:00:00.123Z"),
        (1704103200123.9, "2024-01-01T10:00:00.123Z"),
    ],
)
def test_iso_of_epoch_ms_prints_like_to_iso_string(value, expected):
    assert js_iso(value) == expected


def test_iso_of_datetime_truncates_to_milliseconds():
    from datetime import UTC, datetime

    assert js_iso(datetime(2024, 1, 1, 10, 0, 0, 123999, tzinfo=UTC)) == "2024-01-01T10:00:00.123Z"


@pytest.mark.parametrize(
    ("stored", "iso"),
    [
        ("2024-01-01T10:00:00.000Z", "2024-01-01T10:00:00.000Z"),
        ("2024-01-01T10:00:00.123456+00:00", "2024-01-01T10:00:00.123Z"),
        ("2024-01-01T12:00:00.5+02:00", "2024-01-01T10:00:00.500Z"),
        ("2024-01-01T10:00:00", "2024-01-01T10:00:00.000Z"),
        ("2024-01-01 10:00", "2024-01-01T10:00:00.000Z"),
        (1704103200, "2024-01-01T10:00:00.000Z"),
        (1704103200.123, "2024-01-01T10:00:00.123Z"),
        (1704103200123, "2024-01-01T10:00:00.123Z"),
        ("2024-02-31T00:00:00Z", "2024-03-02T00:00:00.000Z"),
    ],
)
def test_stored_times_of_both_shapes_parse_to_js_iso(stored, iso):
    ms = parse_time(stored)
    assert ms is not None
    assert js_iso(ms) == iso


@pytest.mark.parametrize("bad", ["yesterday", "", None, True, -5, "2024-13-01T00:00:00Z", [1]])
def test_unreadable_stored_time_is_none(bad):
    assert parse_time(bad) is None


@pytest.mark.parametrize(
    ("f", "text"),
    [
        (1.0, "1"),
        (-0.0, "0"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1.5e-7, "1.5e-7"),
        (0.000001, "0.000001"),
        (123.456, "123.456"),
        (2.0**60, "1152921504606847000"),
        (math.inf, "null"),
        (0.1 + 0.2, "0.30000000000000004"),
    ],
)
def test_number_prints_like_javascript(f, text):
    assert js_number(f) == text


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_number_text_round_trips_to_the_same_double(f):
    assert float(js_number(f)) == f or f == 0


def test_dumps_is_compact_raw_utf8_with_index_keys_first():
    out = js_dumps({"b": 1, "10": "é", "2": [1.0, None, True], "a\u2028": "\x1f"})
    assert out == '{"2":[1,null,true],"10":"é","b":1,"a\u2028":"\\u001f"}'.encode()


def test_dumps_escapes_lone_surrogates():
    assert js_dumps({"t": "a\ud800"}) == b'{"t":"a\\ud800"}'


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", "{'a':1}", "\ufeff{}", "{", "01"])
def test_loads_rejects_what_json_parse_rejects(text):
    with pytest.raises(JSONError):
        js_loads(text)


def test_loads_big_numbers_then_dumps_them_like_node():
    assert js_dumps(js_loads("[12345678901234567890, 1e400, 5e-324]")) == (
        b"[12345678901234567000,null,5e-324]"
    )


def test_dumps_matches_node_json_stringify_for_tricky_values():
    need(shutil.which("node") is not None, "node is not installed")
    samples = [
        '{"b":1,"a":2,"1":3,"0":4,"4294967295":5,"-1":6,"01":7}',
        "[1.0, 1e21, 1e-7, 0.1, -0, 123456789012345678901234567890, 5e-324, 1.7976931348623157e308]",
        '{"s":"\\u0000\\u001f\\u007f\\u2028\\ud83d\\ude00\\udc00\\"\\\\/"}',
        '{"nested":{"9":1,"x":[{"2":0,"1":0}]}}',
    ]
    script = (
        "const xs = JSON.parse(process.argv[1]);"
        "process.stdout.write(JSON.stringify(xs.map((x) => JSON.stringify(JSON.parse(x)))));"
    )
    node = subprocess.run(
        ["node", "-e", script, json.dumps(samples)], capture_output=True, text=True, check=True
    )
    expected = json.loads(node.stdout)
    assert [js_dumps(js_loads(s)).decode() for s in samples] == expected


_ANY_CHAR = st.characters(exclude_categories=())  # lone surrogates (Cs) too
_json_trees = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(_ANY_CHAR, max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(_ANY_CHAR, max_size=4) | st.from_regex(r"\A(0|[1-9][0-9]{0,3})\Z"),
                      children, max_size=4),
    max_leaves=20,
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(_json_trees)
def test_the_fast_path_writes_exactly_what_the_exact_path_writes(tree):
    # text() includes lone surrogates, floats and big ints; keys include array indexes
    assert js_dumps(tree) == orjson.dumps(jsfmt._js_value(tree))
