"""Relayed WebSockets end to end against a Node `ws` upstream, both ways the gateway relays
them, and WebSockets handled in process.

Every test runs twice (``ws_gw``): on the gateway as served (``chatgw serve``: its own
HTTP protocol splices a relayed WebSocket's sockets together, gateway.ws_tunnel), and on
the same gateway under uvicorn's own protocol (``relay_gateway``: uvicorn terminates the
WebSocket and gateway.proxy_ws relays it frame for frame, as under any other server, and
as for ``https://`` upstreams).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
from gw_helpers import GatewayProc, Upstreams, force_token, main_config, make_token, spawn_gateway
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect


@pytest.fixture(scope="module")
def gw_relay(
    upstreams: Upstreams, dead_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProc]:
    """The shared gateway's config under uvicorn's protocol: the frame relay."""
    d = tmp_path_factory.mktemp("gateway-relay")
    proc = spawn_gateway(main_config(upstreams, dead_port), d, launcher="relay_gateway")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def gw_down_relay(
    dead_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProc]:
    cfg = {
        "upstreams": {"down": {"url": f"http://127.0.0.1:{dead_port}"}},
        "routes": [{"name": "ws", "match": {"path": "/ws", "websocket": True}, "legacy": "down"}],
    }
    proc = spawn_gateway(
        cfg, tmp_path_factory.mktemp("gateway-down-relay"), launcher="relay_gateway"
    )
    yield proc
    proc.stop()


@pytest.fixture(params=["tunnel", "relay"])
def ws_gw(request: pytest.FixtureRequest) -> GatewayProc:
    return request.getfixturevalue("gw" if request.param == "tunnel" else "gw_relay")


@pytest.fixture(params=["tunnel", "relay"])
def ws_gw_down(request: pytest.FixtureRequest) -> GatewayProc:
    return request.getfixturevalue("gw_down" if request.param == "tunnel" else "gw_down_relay")


def _connect(gw, path: str, **kw):
    kw.setdefault("open_timeout", 10)
    return connect(gw.ws_url + path, proxy=None, compression=None, **kw)


def _wait_closes(upstreams, tag: str) -> list[dict]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        closes = upstreams.side(f"/__wscloses?tag={tag}")["closes"]
        if closes:
            return closes
        time.sleep(0.05)
    return []


def test_text_and_binary_frames_are_relayed_both_ways(ws_gw):
    with _connect(ws_gw, "/ws") as ws:
        ws.send("hello, 你好")
        assert ws.recv(timeout=5) == "hello, 你好"
        blob = bytes(range(256)) * 10
        ws.send(blob)
        got = ws.recv(timeout=5)
        assert isinstance(got, bytes) and got == blob
        ws.send("")
        assert ws.recv(timeout=5) == ""


def test_large_binary_frame_is_relayed_intact(ws_gw):
    blob = bytes(i % 253 for i in range(3 * 1024 * 1024))
    with _connect(ws_gw, "/ws", max_size=None) as ws:
        ws.send(blob)
        assert ws.recv(timeout=15) == blob


def test_client_close_code_and_reason_reach_the_upstream(ws_gw, upstreams):
    tag = uuid.uuid4().hex
    with _connect(ws_gw, f"/ws?tag={tag}") as ws:
        ws.send("ping")
        assert ws.recv(timeout=5) == "ping"
        ws.close(4000, "bye")
    assert _wait_closes(upstreams, tag) == [{"code": 4000, "reason": "bye"}]


def test_upstream_close_code_and_reason_reach_the_client(ws_gw):
    with _connect(ws_gw, "/ws") as ws:
        ws.send("close:4401:token expired")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 4401
    assert info.value.rcvd.reason == "token expired"


def test_subprotocol_is_the_one_the_upstream_chose(ws_gw):
    with _connect(ws_gw, "/ws", subprotocols=["chat.v1", "chat.v2"]) as ws:
        assert ws.subprotocol == "chat.v2"
        ws.send("headers")
        seen = json.loads(ws.recv(timeout=5))
    assert seen["protocol"] == "chat.v2"
    offered = [v for k, v in seen["headers"] if k == "sec-websocket-protocol"]
    assert offered == ["chat.v1, chat.v2"]


def test_no_subprotocol_when_the_upstream_chooses_none(ws_gw):
    with _connect(ws_gw, "/ws", subprotocols=["chat.v1"]) as ws:
        assert ws.subprotocol is None


def test_upgrade_headers_carry_forwarding_and_drop_force_header(ws_gw):
    tok = make_token("ws-user")
    with _connect(
        ws_gw,
        f"/ws?token={tok}",
        additional_headers={"X-Gateway-Force": force_token("new"), "X-Request-Id": "ws-rid-1"},
    ) as ws:
        ws.send("headers")
        seen = json.loads(ws.recv(timeout=5))
    names = {k for k, _ in seen["headers"]}
    got = dict(seen["headers"])
    assert seen["url"] == f"/ws?token={tok}"
    assert "x-gateway-force" not in names
    assert got["x-request-id"] == "ws-rid-1"
    assert got["x-forwarded-for"] == "127.0.0.1"
    assert got["x-forwarded-proto"] == "http"


def test_upstream_404_on_upgrade_comes_back_as_http_404(ws_gw):
    with pytest.raises(InvalidStatus) as info:
        _connect(ws_gw, "/ws/")
    resp = info.value.response
    assert resp.status_code == 404
    assert json.loads(resp.body)["error"]["code"] == "not_found"


def test_unrouted_upgrade_answers_404(ws_gw):
    with pytest.raises(InvalidStatus) as info:
        _connect(ws_gw, "/nowhere")
    assert info.value.response.status_code == 404
    assert json.loads(info.value.response.body)["error"]["code"] == "not_found"


def test_upstream_down_on_upgrade_answers_502(ws_gw_down):
    with pytest.raises(InvalidStatus) as info:
        _connect(ws_gw_down, "/ws")
    assert info.value.response.status_code == 502
    assert json.loads(info.value.response.body)["error"]["code"] == "bad_gateway"


def test_websocket_route_to_a_module_is_handled_in_process(ws_gw, upstreams):
    before = upstreams.seen().count("/ws-new")
    with _connect(ws_gw, "/ws-new") as ws:
        ws.send("hi")
        assert ws.recv(timeout=5) == "new:hi"
        ws.send(b"\x00\xff")
        assert ws.recv(timeout=5) == b"\x00\xff"
        ws.send("close:4003:module says bye")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 4003
    assert info.value.rcvd.reason == "module says bye"
    assert upstreams.seen().count("/ws-new") == before


def test_the_101_is_the_upstreams_through_the_tunnel_and_uvicorns_in_the_relay(ws_gw, request):
    with _connect(ws_gw, "/ws") as ws:
        ws.send("x")
        assert ws.recv(timeout=5) == "x"
        header = ws.response.headers.get("X-Upstream-Ws")
    tunnelled = request.node.callspec.params["ws_gw"] == "tunnel"
    assert header == ("a" if tunnelled else None)
