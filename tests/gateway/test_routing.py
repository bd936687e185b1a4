"""Path normalisation and most-specific matching (pure, no server)."""

from __future__ import annotations

import textwrap

import pytest

from gateway.config import parse_config
from gateway.routing import BadPath, Router, normalise_path

TABLE = """
upstreams:
  u: {url: "http://127.0.0.1:1"}
routes:
  - {name: prefix-sessions, match: {prefix: /api/sessions}, legacy: u}
  - {name: session-item, match: {path: "/api/sessions/{id}"}, legacy: u}
  - {name: session-messages, match: {path: "/api/sessions/{id}/messages"}, legacy: u}
  - {name: literal-mine, match: {path: /api/sessions/mine}, legacy: u}
  - {name: param-first, match: {path: "/api/{kind}/x/y"}, legacy: u}
  - {name: literal-first, match: {path: "/api/things/{a}/y"}, legacy: u}
  - {name: admin, match: {prefix: /api/admin}, legacy: u}
  - {name: admin-users, match: {prefix: /api/admin/users}, legacy: u}
  - {name: get-only, match: {path: /api/only, methods: [GET]}, legacy: u}
  - {name: ws, match: {path: /ws, websocket: true}, legacy: u}
  - {name: root, match: {path: /}, legacy: u}
"""


@pytest.fixture(scope="module")
def router() -> Router:
    return Router(parse_config(textwrap.dedent(TABLE), env={}).routes)


def name(router: Router, path: str, method: str = "GET", ws: bool = False) -> str | None:
    found = router.match(normalise_path(path.encode()), method, websocket=ws)
    return found.route.name if found else None


def test_template_beats_prefix(router: Router) -> None:
    assert name(router, "/api/sessions/abc") == "session-item"
    assert name(router, "/api/sessions") == "prefix-sessions"
    assert name(router, "/api/sessions/a/b/c") == "prefix-sessions"


def test_longer_template_matches_its_own_length(router: Router) -> None:
    assert name(router, "/api/sessions/abc/messages") == "session-messages"


def test_literal_segment_beats_parameter(router: Router) -> None:
    assert name(router, "/api/sessions/mine") == "literal-mine"
    # /api/things/x/y: 'literal-first' has a literal at position 1 where 'param-first' has a param
    assert name(router, "/api/things/x/y") == "literal-first"
    assert name(router, "/api/other/x/y") == "param-first"


def test_longer_prefix_wins(router: Router) -> None:
    assert name(router, "/api/admin/users/3") == "admin-users"
    assert name(router, "/api/admin/teams") == "admin"


def test_prefix_matches_whole_segments_only(router: Router) -> None:
    assert name(router, "/api/administrator") is None


def test_params_are_extracted_decoded(router: Router) -> None:
    found = router.match(normalise_path(b"/api/sessions/a%20b"), "GET")
    assert found is not None and found.params == {"id": "a b"}


def test_one_trailing_slash_is_tolerated(router: Router) -> None:
    assert name(router, "/api/sessions/abc/") == "session-item"


def test_methods_filter_and_head_follows_get(router: Router) -> None:
    assert name(router, "/api/only") == "get-only"
    assert name(router, "/api/only", "HEAD") == "get-only"
    assert name(router, "/api/only", "POST") is None


def test_websocket_routes_only_match_upgrades(router: Router) -> None:
    assert name(router, "/ws", ws=True) == "ws"
    assert name(router, "/ws") is None
    assert name(router, "/api/sessions/x", ws=True) is None


def test_root_path(router: Router) -> None:
    assert name(router, "/") == "root"


@pytest.mark.parametrize(
    "raw",
    [
        b"/api/../admin", b"/api/./sessions", b"/api/%2e%2e/admin", b"/api/%2E%2E/admin",
        b"/api/sessions%2Fx", b"/api/sessions%2fx", b"/api\\admin", b"/api/%5cadmin",
        b"/api/x%00", b"/api/x\x00", b"/api//sessions", b"/api/sessions//", b"api/x",
        b"/api/%ff%fe", b"/api/.%2e/x",
    ],
)  # fmt: skip
def test_path_tricks_are_refused_before_matching(raw: bytes) -> None:
    with pytest.raises(BadPath):
        normalise_path(raw)


def test_unicode_path_is_decoded() -> None:
    assert normalise_path(b"/api/sessions/%C3%A9") == ("api", "sessions", "é")
