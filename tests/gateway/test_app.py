"""gateway.app end to end: its own answers, path checks, matching, the split, force
tokens and in-process modules, through a gateway subprocess."""

from __future__ import annotations

import http.client
import time
import uuid

import httpx
import pytest
from gw_helpers import OPS_SECRET, force_token, make_token, metric, raw_http

from gateway.split import mint_force_token


def _contract_error(r: httpx.Response, code: str) -> None:
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


# --------------------------------------------------------------------------- own answers


def test_health_on_running_gateway_answers_ok(gw):
    r = gw.client().get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "service": "chat-gateway"}
    assert r.headers["x-request-id"]


def test_health_with_every_upstream_down_is_answered_by_the_gateway(gw_down):
    with gw_down.client() as c:
        assert c.get("/anything").status_code == 502  # the catch-all route is really down
        r = c.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "service": "chat-gateway"}


def test_unknown_path_answers_404_in_the_contract_shape(gw):
    with gw.client() as c:
        r = c.get("/nowhere/at/all")
    assert r.status_code == 404
    _contract_error(r, "not_found")
    assert r.headers["x-request-id"]
    assert "x-gateway-backend" not in r.headers


BAD_PATHS = [
    "/api/../admin/{m}",
    "/echo/../{m}",
    "/echo/./{m}",
    "/echo/%2e%2e/{m}",
    "/echo/%2E%2E/{m}",
    "/echo%2F{m}",
    "/echo/{m}%2fx",
    "/echo/%5C{m}",
    "/echo/{m}%5c",
    "/echo\\{m}",
    "/echo/{m}%00",
    "//echo/{m}",
    "/echo//{m}",
]


@pytest.mark.parametrize("template", BAD_PATHS)
def test_path_trick_answers_400_and_never_reaches_upstream(gw, upstreams, template):
    marker = uuid.uuid4().hex
    path = template.format(m=marker)
    req = f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
    status, headers, body = raw_http(gw.port, req)
    assert status == 400, (path, status, body)
    r = httpx.Response(status, headers=headers, content=body)
    _contract_error(r, "bad_request")
    assert not any(marker in u for u in upstreams.seen())


@pytest.mark.parametrize(
    ("path", "upstream"),
    [
        ("/api/items/42", "b"),  # template beats prefix
        ("/api/items/special", "c"),  # literal beats param
        ("/api/items/special/", "c"),  # one trailing slash tolerated
        ("/api/items/42/history", "a"),  # only the prefix matches
        ("/api/items", "a"),
    ],
)
def test_most_specific_route_answers(gw, path, upstream):
    with gw.client() as c:
        r = c.get(path)
    assert r.status_code == 200
    assert r.json()["upstream"] == upstream
    assert r.json()["url"] == path  # the path reaches the upstream as the client sent it
    assert r.headers["x-gateway-backend"] == "legacy"


# --------------------------------------------------------------------------- split


def _side(c: httpx.Client, path: str, sub: str) -> str:
    r = c.get(path, headers={"Authorization": f"Bearer {make_token(sub)}"})
    assert r.status_code == 200
    side = r.headers["x-gateway-backend"]
    assert (r.json().get("side") == "new") == (side == "new")  # the header tells the truth
    return side


def test_same_sub_at_50_percent_gets_the_same_backend_1000_times(gw):
    auth = {"Authorization": f"Bearer {make_token('sticky-user-1')}"}
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=15)  # cheaper than httpx
    sides = set()
    try:
        for _ in range(1000):
            conn.request("GET", "/split/x", headers=auth)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
            sides.add(resp.getheader("x-gateway-backend"))
    finally:
        conn.close()
    assert len(sides) == 1 and sides <= {"new", "legacy"}


def test_same_sub_gets_the_same_backend_on_two_gateway_processes(gw, gw_quiet):
    # gw_quiet sends no X-Gateway-Backend: its side is read from who answered.
    subs = [f"user-{i}" for i in range(200)]
    with gw.client() as c1, gw_quiet.client() as c2:
        first = [_side(c1, "/split/x", s) for s in subs]
        second = []
        for s in subs:
            r = c2.get("/split/x", headers={"Authorization": f"Bearer {make_token(s)}"})
            second.append("new" if r.json().get("side") == "new" else "legacy")
    assert first == second
    assert 60 <= first.count("new") <= 140  # ~50 %: the split really splits


def test_route_without_module_always_goes_legacy_even_when_forced(gw):
    token = force_token("new")
    with gw.client() as c:
        for sub in ("a", "b", "c", "d"):
            r = c.get("/legacy-only/x", headers={
                "Authorization": f"Bearer {make_token(sub)}", "X-Gateway-Force": token,
            })  # fmt: skip
            assert r.headers["x-gateway-backend"] == "legacy"
            assert r.json()["upstream"] == "a"


def test_backend_header_turned_off_is_not_sent(gw_quiet):
    with gw_quiet.client() as c:
        legacy = c.get("/echo/x")
        new = c.get("/probe/x")
    assert legacy.status_code == new.status_code == 200
    assert legacy.json()["upstream"] == "a"
    assert new.json()["side"] == "new"
    assert "x-gateway-backend" not in legacy.headers
    assert "x-gateway-backend" not in new.headers


# --------------------------------------------------------------------------- force token


def test_signed_force_token_forces_new_at_0_percent_and_is_not_forwarded(gw):
    token = force_token("new", "1h")
    with gw.client() as c:
        plain = c.get("/forced/x")
        forced = c.get("/forced/x", headers={"X-Gateway-Force": token})
    assert plain.headers["x-gateway-backend"] == "legacy"
    assert forced.headers["x-gateway-backend"] == "new"
    assert forced.json()["side"] == "new"
    assert "x-gateway-force" not in {k for k, _ in forced.json()["headers"]}


def _tampered() -> str:
    token = mint_force_token(OPS_SECRET, "new", 3600)
    return token[:-2] + ("AA" if not token.endswith("AA") else "BB")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_tampered, "bad_signature"),
        (lambda: mint_force_token("some-other-secret", "new", 3600), "bad_signature"),
        (lambda: f"v1.new.{int(time.time()) + 3600}", "malformed"),  # unsigned
        (lambda: mint_force_token(OPS_SECRET, "new", 60, now=time.time() - 3600), "expired"),
    ],
    ids=["tampered", "other-secret", "unsigned", "expired"],
)
def test_invalid_force_token_is_ignored_counted_and_not_forwarded(gw, make, reason):
    name = "gateway_force_token_rejected_total"
    before = metric(gw.metrics(), name, reason=reason)
    with gw.client() as c:
        r = c.get("/forced/x", headers={"X-Gateway-Force": make()})
    assert r.status_code == 200
    assert r.headers["x-gateway-backend"] == "legacy"
    assert "x-gateway-force" not in {k for k, _ in r.json()["headers"]}
    assert metric(gw.metrics(), name, reason=reason) == before + 1


# --------------------------------------------------------------------------- modules


def test_module_gets_the_scope_the_proxy_would_send(gw):
    headers = {
        "Authorization": "Bearer abc.def.ghi",
        "X-Forwarded-For": "203.0.113.9",
        "X-Request-Id": "same-request-id-1",
        "Host": "chat.example.test",
        "Cookie": "a=1",
    }
    with gw.client() as c:
        legacy = c.get("/forced/p?x=1&y=%20z&x=2", headers=headers).json()
        new = c.get("/probe/p?x=1&y=%20z&x=2", headers=headers)
    assert new.headers["x-gateway-backend"] == "new"
    scope = new.json()
    assert scope["path"] == "/probe/p"
    assert scope["raw_path"] == "/probe/p"
    assert scope["query_string"] == "x=1&y=%20z&x=2"
    assert legacy["url"] == "/forced/p?x=1&y=%20z&x=2"
    assert sorted(map(tuple, scope["headers"])) == sorted(map(tuple, legacy["headers"]))
    got = dict(map(tuple, scope["headers"]))
    assert got["x-request-id"] == "same-request-id-1" == new.headers["x-request-id"]
    assert got["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert got["x-forwarded-proto"] == "http"
    assert got["x-forwarded-host"] == "chat.example.test"
    assert got["authorization"] == "Bearer abc.def.ghi"


def test_module_request_id_generated_is_the_one_the_client_gets(gw):
    with gw.client() as c:
        r = c.get("/probe/rid")
    got = dict(map(tuple, r.json()["headers"]))
    assert got["x-request-id"] == r.headers["x-request-id"]


def test_module_lifespan_ran_before_ready_and_its_state_reaches_requests(gw):
    assert (gw.dir / "probe.log").read_text().splitlines()[0] == "startup"
    with gw.client() as c:
        assert c.get("/probe/state").json()["state"] == {"started_by_lifespan": True}


def test_module_body_over_limit_answers_413(gw):
    def body():
        for _ in range(4):
            yield b"q" * 512

    with gw.client() as c:
        by_length = c.post("/probe/x", content=b"q" * 2000)
        by_chunks = c.post("/probe/x", content=body())
        ok = c.post("/probe/x", content=b"q" * 1000)
    assert by_length.status_code == 413
    _contract_error(by_length, "payload_too_large")
    assert by_chunks.status_code == 413
    _contract_error(by_chunks, "payload_too_large")
    assert ok.status_code == 200 and ok.json()["body_len"] == 1000
