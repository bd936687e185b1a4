"""gateway.shadow.compare: pure comparisons, no servers."""

from __future__ import annotations

import pytest

from gateway.config import CompareRules
from gateway.shadow.compare import (
    BadPath,
    Exchange,
    compare,
    parse_json_path,
    parse_sse,
    path_matches,
    render_path,
)

JSON = [("content-type", "application/json; charset=utf-8")]
SSE = [("content-type", "text/event-stream")]


def j(body: bytes, status: int = 200, headers: list[tuple[str, str]] = JSON) -> Exchange:
    return Exchange(status, headers, body)


def paths(result: object) -> list[str]:
    return [d.path for d in result.differences]  # type: ignore[attr-defined]


def test_json_key_order_ignored_matches() -> None:
    assert compare(j(b'{"a":1,"b":[1,2]}'), j(b'{"b":[1,2],"a":1}'), CompareRules()).match


def test_json_whitespace_ignored_matches() -> None:
    assert compare(j(b'{"a": 1}'), j(b'{\n "a":1\n}'), CompareRules()).match


def test_nested_value_differs_reported_by_path() -> None:
    r = compare(
        j(b'{"data":[{"id":1,"x":"a"}]}'), j(b'{"data":[{"id":1,"x":"b"}]}'), CompareRules()
    )
    assert paths(r) == ["$.data[0].x"]
    assert (r.differences[0].primary, r.differences[0].shadow) == ("a", "b")


def test_missing_key_reported() -> None:
    r = compare(j(b'{"a":1,"b":2}'), j(b'{"a":1}'), CompareRules())
    assert paths(r) == ["$.b"]
    assert r.differences[0].shadow == "<missing>"


def test_list_length_differs_reports_extra_items() -> None:
    r = compare(j(b"[1,2,3]"), j(b"[1,2]"), CompareRules())
    assert paths(r) == ["$[2]"]


def test_int_and_bool_differ() -> None:
    assert paths(compare(j(b'{"a":1}'), j(b'{"a":true}'), CompareRules())) == ["$.a"]


def test_int_and_float_differ_but_equal_numbers_match() -> None:
    assert compare(j(b'{"a":1.0}'), j(b'{"a":1.0}'), CompareRules()).match
    assert paths(compare(j(b'{"a":1}'), j(b'{"a":1.0}'), CompareRules())) == ["$.a"]


def test_status_differs_reported() -> None:
    r = compare(j(b"{}", 200), j(b"{}", 404), CompareRules())
    assert paths(r) == ["status"]


def test_configured_header_differs_reported() -> None:
    a = j(b"{}")
    b = Exchange(200, [("content-type", "application/json")], b"{}")
    assert paths(compare(a, b, CompareRules())) == ["headers.content-type"]


def test_unconfigured_header_ignored() -> None:
    a = Exchange(200, [*JSON, ("x-thing", "1")], b"{}")
    b = Exchange(200, [*JSON, ("x-thing", "2")], b"{}")
    assert compare(a, b, CompareRules()).match


def test_ignore_rule_by_exact_path() -> None:
    r = compare(j(b'{"a":1,"t":1}'), j(b'{"a":1,"t":2}'), CompareRules(ignore=("$.t",)))
    assert r.match


def test_ignore_rule_with_index_wildcard() -> None:
    a = j(b'{"data":[{"u":1,"k":1},{"u":2,"k":1}]}')
    b = j(b'{"data":[{"u":9,"k":1},{"u":8,"k":2}]}')
    r = compare(a, b, CompareRules(ignore=("$.data[*].u",)))
    assert paths(r) == ["$.data[1].k"]


def test_ignore_rule_recursive_descent() -> None:
    a = j(b'{"x":{"updatedAt":1,"y":[{"updatedAt":2}]}}')
    b = j(b'{"x":{"updatedAt":3,"y":[{"updatedAt":4}]}}')
    assert compare(a, b, CompareRules(ignore=("$..updatedAt",))).match


def test_ignore_rule_covers_subtree() -> None:
    assert compare(
        j(b'{"m":{"a":1}}'), j(b'{"m":{"a":2,"b":3}}'), CompareRules(ignore=("$.m",))
    ).match


def test_uuid_normaliser_matches_different_ids() -> None:
    a = j(b'{"sessionId":"0b6f1e6c-4a7e-4c1a-9d1f-2f3e4a5b6c7d"}')
    b = j(b'{"sessionId":"9a8b7c6d-1111-4222-8333-444455556666"}')
    assert not compare(a, b, CompareRules()).match
    assert compare(a, b, CompareRules(normalise=("uuid",))).match


def test_timestamp_normaliser_inside_text() -> None:
    a = j(b'{"m":"at 2024-01-01T10:00:00.000Z ok"}')
    b = j(b'{"m":"at 2025-02-03T11:12:13.456Z ok"}')
    assert compare(a, b, CompareRules(normalise=("timestamp",))).match


def test_timestamp_normaliser_python_isoformat() -> None:
    a = j(b'{"t":"2024-01-01T10:00:00.123456+00:00"}')
    b = j(b'{"t":"2024-01-01T10:00:01Z"}')
    assert compare(a, b, CompareRules(normalise=("timestamp",))).match


def test_id_normaliser_only_for_id_keys() -> None:
    a = j(b'{"id":1,"teamId":2,"count":3}')
    b = j(b'{"id":7,"teamId":8,"count":4}')
    assert paths(compare(a, b, CompareRules(normalise=("id",)))) == ["$.count"]


def test_id_normaliser_keeps_null_distinct() -> None:
    assert not compare(
        j(b'{"teamId":1}'), j(b'{"teamId":null}'), CompareRules(normalise=("id",))
    ).match


def test_noise_cancels_fields_that_differ_between_primaries() -> None:
    primary = j(b'{"a":1,"nonce":"x"}')
    noise = j(b'{"a":1,"nonce":"y"}')
    shadow = j(b'{"a":2,"nonce":"z"}')
    r = compare(primary, shadow, CompareRules(noise=True), noise)
    assert paths(r) == ["$.a"]
    assert r.noisy == ["$.nonce"]


def test_noise_without_second_answer_reports_everything() -> None:
    r = compare(j(b'{"nonce":"x"}'), j(b'{"nonce":"z"}'), CompareRules(noise=True))
    assert paths(r) == ["$.nonce"]


def test_noise_all_differences_noisy_matches() -> None:
    r = compare(j(b'{"n":1}'), j(b'{"n":3}'), CompareRules(), j(b'{"n":2}'))
    assert r.match and r.noisy == ["$.n"]


def test_text_bodies_compared_as_bytes() -> None:
    t = [("content-type", "text/plain")]
    assert compare(j(b"a b", headers=t), j(b"a b", headers=t), CompareRules()).match
    assert paths(compare(j(b"a b", headers=t), j(b"a  b", headers=t), CompareRules())) == ["$"]


def test_binary_bodies_compared_as_bytes() -> None:
    t = [("content-type", "application/octet-stream")]
    r = compare(j(b"\x00\x01", headers=t), j(b"\x00\x02", headers=t), CompareRules())
    assert paths(r) == ["$"]
    assert r.differences[0].primary == "<2 bytes>"


def test_invalid_json_falls_back_to_text() -> None:
    assert paths(compare(j(b"{bad"), j(b"{bad2"), CompareRules())) == ["$"]


def test_sse_differently_chunked_same_text_matches() -> None:
    a = Exchange(
        200, SSE, b'data: {"delta": "Hel"}\n\ndata: {"delta": "lo"}\n\ndata: {"done": true}\n\n'
    )
    b = Exchange(
        200, SSE, b'data: {"delta": "H"}\n\ndata: {"delta": "ello"}\n\ndata: {"done":true}\n\n'
    )
    assert compare(a, b, CompareRules()).match


def test_sse_text_differs_reported() -> None:
    a = Exchange(200, SSE, b'data: {"delta": "Hi"}\n\ndata: {"done": true}\n\n')
    b = Exchange(200, SSE, b'data: {"delta": "Ho"}\n\ndata: {"done": true}\n\n')
    assert paths(compare(a, b, CompareRules())) == ["sse.text"]


def test_sse_final_event_compared_as_json() -> None:
    a = Exchange(
        200, SSE, b'data: {"delta": "x"}\n\ndata: {"done": true, "usage": {"inputTokens": 1}}\n\n'
    )
    b = Exchange(
        200, SSE, b'data: {"delta": "x"}\n\ndata: {"usage": {"inputTokens": 2}, "done": true}\n\n'
    )
    assert paths(compare(a, b, CompareRules())) == ["sse.final$.usage.inputTokens"]


def test_parse_sse_crlf_and_multiline_data() -> None:
    text, final = parse_sse(b'data: {"delta": "a"}\r\n\r\ndata: line1\r\ndata: line2\r\n\r\n')
    assert text == "a"
    assert final == "line1\nline2"


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("$", ()),
        ("$.a", ("a",)),
        ("$.data[*].updatedAt", ("data", -1, "updatedAt")),
        ("$.a[3]", ("a", 3)),
        ("$['x y'].b", ("x y", "b")),
        ("$..id", ("..", "id")),
        ("$.*.id", ("*", "id")),
    ],
)
def test_parse_json_path_valid(text: str, parsed: tuple[object, ...]) -> None:
    assert parse_json_path(text) == parsed


@pytest.mark.parametrize("text", ["a.b", "$.", "$[x]", "$.a[", "$ a"])
def test_parse_json_path_invalid_raises(text: str) -> None:
    with pytest.raises(BadPath):
        parse_json_path(text)


def test_path_matches_and_render() -> None:
    assert path_matches(parse_json_path("$.data[*].x"), ["data", 3, "x"])
    assert not path_matches(parse_json_path("$.data[*].x"), ["data", "k", "x"])
    assert path_matches(parse_json_path("$..x"), ["a", 1, "x"])
    assert render_path(["data", 0, "x y"]) == "$.data[0]['x y']"
