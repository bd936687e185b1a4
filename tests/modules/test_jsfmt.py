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


def _stdlib_loads(text):
    """The exact path alone: what js_loads answered before orjson read first."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    try:
        return ("ok", json.loads(text, parse_constant=jsfmt._reject_constant))
    except (ValueError, RecursionError):
        return ("error", None)


def _js_loads_or_error(text):
    try:
        return ("ok", js_loads(text))
    except JSONError:
        return ("error", None)


def _same(a, b):
    """Equal values with equal key order, where floats and ints compare by JavaScript's
    reading where orjson reads an integer past 64 bits (i64 below zero, u64 above) as the
    double JavaScript reads."""
    if isinstance(a, dict):
        return (isinstance(b, dict) and list(a) == list(b)
                and all(_same(a[k], b[k]) for k in a))  # fmt: skip
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, int) and not isinstance(a, bool) and not -(2**63) <= a < 2**64:
        return isinstance(b, int | float) and float(a) == float(b)
    return type(a) is type(b) and (a == b or (a != a and b != b))


_TEXTS = [
    '{"a":1,"b":2,"a":3}', "[1e400]", "[-1e400]", "[123456789012345678901234567890]",
    "[18446744073709551616]", "[-9223372036854775809]", '"\\ud800"', '["\\udc00x"]',
    "\ufeff{}", " {\"a\" : [ ] } ", "[-0]", "[-0.0]", "[1E2]", '["\\u0000"]', "[0.1e-400]",
    "[" * 1500 + "]" * 1500, "[" * 5000 + "]" * 5000, "NaN", "[Infinity]", "{", "01", "",
    " ", "[1,]", '{"a":1,}', "/*x*/1", "'a'", "\t\n\r 1 \t\n\r", "\x0c1", "\xa01",
    '"\x01"', '"a\x7fb"', "true false", '{"__proto__":{"x":1}}',
]  # fmt: skip


@pytest.mark.parametrize(
    "text", _TEXTS + [t.encode() for t in _TEXTS] + [b'"\xff\xfe"', b"[1]\xff"]
)
def test_loads_answers_as_the_standard_parser_did_on_edge_cases(text):
    got, want = _js_loads_or_error(text), _stdlib_loads(text)
    assert got[0] == want[0]
    assert _same(want[1], got[1])


@settings(max_examples=400, deadline=None)
@given(_json_trees, st.booleans(), st.booleans())
def test_loads_answers_as_the_standard_parser_did(tree, ascii_only, as_bytes):
    try:
        text = json.dumps(tree, ensure_ascii=ascii_only)
    except ValueError:
        return
    data = text.encode("utf-8", errors="surrogatepass") if as_bytes else text
    got, want = _js_loads_or_error(data), _stdlib_loads(data)
    assert got[0] == want[0]
    assert _same(want[1], got[1])
    if got[0] == "ok":
        assert js_dumps(got[1]) == js_dumps(want[1])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40) | st.text(_ANY_CHAR, max_size=40))
def test_loads_of_arbitrary_input_answers_as_the_standard_parser_did(data):
    got, want = _js_loads_or_error(data), _stdlib_loads(data)
    assert got[0] == want[0]
    assert _same(want[1], got[1])
