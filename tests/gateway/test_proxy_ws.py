"""gateway.proxy_ws end to end: WebSocket relay to a Node `ws` upstream, and in process."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from gw_helpers import force_token, make_token
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect


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


def test_text_and_binary_frames_are_relayed_both_ways(gw):
    with _connect(gw, "/ws") as ws:
        ws.send("hello, 你好")
        assert ws.recv(timeout=5) == "hello, 你好"
        blob = bytes(range(256)) * 10
        ws.send(blob)
        got = ws.recv(timeout=5)
        assert isinstance(got, bytes) and got == blob
        ws.send("")
        assert ws.recv(timeout=5) == ""


def test_large_binary_frame_is_relayed_intact(gw):
    blob = bytes(i % 253 for i in range(3 * 1024 * 1024))
    with _connect(gw, "/ws", max_size=None) as ws:
        ws.send(blob)
        assert ws.recv(timeout=15) == blob


def test_client_close_code_and_reason_reach_the_upstream(gw, upstreams):
    tag = uuid.uuid4().hex
    with _connect(gw, f"/ws?tag={tag}") as ws:
        ws.send("ping")
        assert ws.recv(timeout=5) == "ping"
        ws.close(4000, "bye")
    assert _wait_closes(upstreams, tag) == [{"code": 4000, "reason": "bye"}]


def test_upstream_close_code_and_reason_reach_the_client(gw):
    with _connect(gw, "/ws") as ws:
        ws.send("close:4401:token expired")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 4401
    assert info.value.rcvd.reason == "token expired"


def test_subprotocol_is_the_one_the_upstream_chose(gw):
    with _connect(gw, "/ws", subprotocols=["chat.v1", "chat.v2"]) as ws:
        assert ws.subprotocol == "chat.v2"
        ws.send("headers")
        seen = json.loads(ws.recv(timeout=5))
    assert seen["protocol"] == "chat.v2"
    offered = [v for k, v in seen["headers"] if k == "sec-websocket-protocol"]
    assert offered == ["chat.v1, chat.v2"]


def test_no_subprotocol_when_the_upstream_chooses_none(gw):
    with _connect(gw, "/ws", subprotocols=["chat.v1"]) as ws:
        assert ws.subprotocol is None


def test_upgrade_headers_carry_forwarding_and_drop_force_header(gw):
    tok = make_token("ws-user")
    with _connect(
        gw,
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


def test_upstream_404_on_upgrade_comes_back_as_http_404(gw):
    with pytest.raises(InvalidStatus) as info:
        _connect(gw, "/ws/")
    resp = info.value.response
    assert resp.status_code == 404
    assert json.loads(resp.body)["error"]["code"] == "not_found"


def test_unrouted_upgrade_answers_404(gw):
    with pytest.raises(InvalidStatus) as info:
        _connect(gw, "/nowhere")
    assert info.value.response.status_code == 404
    assert json.loads(info.value.response.body)["error"]["code"] == "not_found"


def test_upstream_down_on_upgrade_answers_502(gw_down):
    with pytest.raises(InvalidStatus) as info:
        _connect(gw_down, "/ws")
    assert info.value.response.status_code == 502
    assert json.loads(info.value.response.body)["error"]["code"] == "bad_gateway"


def test_websocket_route_to_a_module_is_handled_in_process(gw, upstreams):
    before = upstreams.seen().count("/ws-new")
    with _connect(gw, "/ws-new") as ws:
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
