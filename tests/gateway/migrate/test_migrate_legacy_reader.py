"""The legacy Node chat-session service reads migrated records: same wire bytes.

Sessions are created through the legacy service (genuine legacy records in its Redis db),
copied to db 14, migrated from there *into the legacy db* (``--target-url``: only these
keys are rewritten, other tests' keys are not touched), and read back through the legacy
service: the answer bytes do not change, in either direction.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import httpx
import pytest
import redis
from migrate_helpers import root

from gateway.cli import main


def _copy(keys: list[str], frm: redis.Redis, to: redis.Redis) -> None:
    to.flushdb()
    for k in keys:
        to.set(k, frm.get(k), px=frm.pttl(k))  # type: ignore[arg-type]
        uid = json.loads(frm.get(k))  # type: ignore[arg-type]
        uid = uid.get("userId", uid.get("user_id"))
        idx = f"user_sessions:{uid}"
        to.zadd(idx, dict(frm.zrange(idx, 0, -1, withscores=True)))


def test_legacy_chat_session_answers_identically_after_migration_both_ways(
    legacy_stack: Any, src: redis.Redis, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    user = "u-mig-" + secrets.token_hex(3)
    token = root.make_token(user, "customer", secret=legacy_stack.jwt_secret)
    auth = {"Authorization": f"Bearer {token}"}
    legacy_db = legacy_stack.redis()
    with httpx.Client(base_url=legacy_stack.session, headers=auth, timeout=10) as http:
        ids = []
        for i in range(3):
            body = {"metadata": {"n": i, "2": "é", "note": "x" * 300}}
            r = http.post("/api/sessions", json=body)
            assert r.status_code == 201, r.text
            ids.append(r.json()["sessionId"])
        http.patch(f"/api/sessions/{ids[0]}", json={"agent": "human", "context": {"k": 1}})

        def answers() -> list[bytes]:
            got = [http.get(f"/api/sessions/{i}") for i in ids]
            got.append(http.get("/api/sessions", params={"userId": user}))
            assert all(r.status_code == 200 for r in got)
            return [r.content for r in got]

        keys = [f"session:{i}" for i in ids]
        before = answers()
        originals = {k: legacy_db.get(k) for k in keys}
        src_url = f"redis://{root.REDIS_HOST}:{root.REDIS_PORT}/14"
        for to in ("python", "legacy"):
            _copy(keys, legacy_db, src)
            rc = main(
                ["migrate", "sessions", "--redis-url", src_url, "--to", to,
                 "--target-url", legacy_stack.redis_url, "--state", str(tmp_path / to)]
            )  # fmt: skip
            assert rc == 0, capsys.readouterr()
            shapes = {("user_id" in json.loads(legacy_db.get(k))) for k in keys}  # type: ignore[arg-type]
            assert shapes == {to == "python"}
            assert answers() == before
        assert {k: legacy_db.get(k) for k in keys} == originals
        for i in ids:
            http.delete(f"/api/sessions/{i}")
