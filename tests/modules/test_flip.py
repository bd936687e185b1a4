"""Flipping the session and ai routes between sides loses nothing (GATEWAY.md invariant 3).

A real gateway process fronts the real legacy stack with the modules on the same Redis:
at 50 % new every user stays on one side for all its calls, both sides get users, and when
the routes go back to 0 % every session, patch and line of history written by either side
is still there, served by legacy — and an AI conversation continues with its history.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest
from gateway_process import GatewayProcess, gateway_env, routes_at
from tests_support import make_token_for


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=20) as c:
        yield c


def test_at_50_percent_users_keep_their_side_and_nothing_is_lost_at_0(
    legacy_stack, tmp_path, client
):
    env = gateway_env(legacy_stack)
    run = uuid.uuid4().hex[:8]
    users = [f"flip-{run}-{i}" for i in range(40)]
    written: dict[str, tuple[str, str]] = {}  # user -> (session id, side)

    half = GatewayProcess(routes_at(50), env, str(tmp_path))
    try:
        for user in users:
            h = {"authorization": "Bearer " + make_token_for(legacy_stack, user)}
            r = client.post(f"{half.url}/api/sessions", headers=h, json={"metadata": {"run": run}})
            assert r.status_code == 201, r.text
            side = r.headers["x-gateway-backend"]
            sid = r.json()["sessionId"]
            calls = [
                client.post(
                    f"{half.url}/api/ai/chat",
                    headers=h,
                    json={"sessionId": sid, "message": f"hello {user}"},
                ),
                client.patch(
                    f"{half.url}/api/sessions/{sid}", headers=h, json={"metadata": {"owner": user}}
                ),
                client.get(f"{half.url}/api/sessions", headers=h, params={"userId": user}),
                client.get(f"{half.url}/api/sessions/{sid}", headers=h),
            ]
            for c in calls:
                assert c.status_code == 200, c.text
                assert c.headers["x-gateway-backend"] == side, (
                    "a user changed sides at a fixed percentage"
                )
            written[user] = (sid, side)
    finally:
        half.stop()
    sides = {side for _, side in written.values()}
    assert sides == {"legacy", "new"}, f"at 50 % both sides must get users, got {sides}"

    zero = GatewayProcess(routes_at(0), env, str(tmp_path))
    try:
        redis = legacy_stack.redis()
        for user, (sid, _side) in written.items():
            h = {"authorization": "Bearer " + make_token_for(legacy_stack, user)}
            r = client.get(f"{zero.url}/api/sessions/{sid}", headers=h)
            assert r.status_code == 200 and r.headers["x-gateway-backend"] == "legacy"
            assert r.json()["metadata"] == {"run": run, "owner": user}
            listed = client.get(
                f"{zero.url}/api/sessions", headers=h, params={"userId": user}
            ).json()["data"]
            assert [s["sessionId"] for s in listed] == [sid]
            history = [json.loads(x) for x in redis.lrange(f"history:{sid}", 0, -1)]
            assert history == [
                {"role": "user", "content": f"hello {user}"},
                {"role": "assistant", "content": f"You said: hello {user}"},
            ]
            # the conversation goes on, on legacy, with what the other side wrote
            marker = f"again-{uuid.uuid4().hex}"
            r = client.post(
                f"{zero.url}/api/ai/chat", headers=h, json={"sessionId": sid, "message": marker}
            )
            assert r.status_code == 200 and r.json()["reply"] == f"You said: {marker}"
            sent = [
                rec for rec in client.get(f"{legacy_stack.provider}/_fake/requests").json()["data"]
                if (rec.get("body") or {}).get("input", {}).get("messages", [{}])[-1].get("content") == marker
            ]  # fmt: skip
            assert [m["content"] for m in sent[-1]["body"]["input"]["messages"][1:3]] == [
                f"hello {user}",
                f"You said: hello {user}",
            ]
        redis.close()
    finally:
        zero.stop()
