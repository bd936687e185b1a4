"""Mirrored writes in dry-run mode change no production key (session module, real Redis)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import redis
from conftest_paths import mysql_url_for
from shadow_helpers import ShadowGateway

SECRET = "shadow-dry-run-secret-0123456789-0123456789"


def _snapshot(r: redis.Redis, user: str) -> dict[bytes, Any]:
    """Every key that belongs to ``user``: its sessions, its index, their histories.

    Scoped to the test's own user: the Redis db is shared with other tests, whose
    short-lived keys may expire between two snapshots.
    """
    out: dict[bytes, Any] = {}
    for key in r.scan_iter(match="session:*", count=1000):
        value = r.get(key)
        try:
            owner = json.loads(value)["userId"] if value is not None else None
        except (ValueError, KeyError, TypeError):
            continue
        if owner == user:
            out[key] = value
            history = b"history:" + key.split(b":", 1)[1]
            out[history] = r.lrange(history, 0, -1)
    index = f"user_sessions:{user}".encode()
    out[index] = r.zrange(index, 0, -1, withscores=True)
    return out


def _dry_run_routes(upstream: str, name: str, match: str, module: str, methods: str) -> str:
    """A routes.yaml with one route mirroring every request as a dry run to ``module``."""
    return f"""
settings: {{access_log: false}}
upstreams:
  legacy: {{url: "{upstream}"}}
routes:
  - name: {name}
    match: {{{match}}}
    legacy: legacy
    module: {module}
    shadow: {{percent: 100, methods: [{methods}], dry_run: true}}
"""


def _auth(sub: str, role: str) -> dict[str, str]:
    token = jwt.encode({"sub": sub, "role": role, "exp": int(time.time()) + 600}, SECRET)
    return {"Authorization": f"Bearer {token}"}


def _database_with_schema(mysql_database: Any) -> tuple[str, Any]:
    """A fresh MariaDB database holding the production schema, and a connection to it."""
    import os

    import pymysql
    from conftest_paths import schema_sql

    db = mysql_database()
    conn = pymysql.connect(
        host=os.environ.get("TEST_MYSQL_HOST", "127.0.0.1"), user="root", password="",
        database=db, autocommit=True,
    )  # fmt: skip
    with conn.cursor() as cur:
        for stmt in schema_sql():
            cur.execute(stmt)
    return db, conn


def _rows(conn: Any, tables: tuple[str, ...]) -> dict[str, list[Any]]:
    """Every row of ``tables``, for before/after comparisons."""
    out = {}
    with conn.cursor() as cur:
        for table in tables:
            cur.execute(f"SELECT * FROM {table} ORDER BY id")  # noqa: S608 - fixed names
            out[table] = list(cur.fetchall())
    return out


def test_dry_run_writes_change_no_production_key(
    shadow_gateway: Callable[..., ShadowGateway], test_upstream: str, redis_url: str, redis_db: int
) -> None:
    text = _dry_run_routes(
        test_upstream, "sessions", "prefix: /api/sessions", "session", "GET, POST, PATCH, DELETE"
    )
    r = redis.Redis.from_url(redis_url)
    sid = "0b6f1e6c-4a7e-4c1a-9d1f-2f3e4a5b6c7d"
    record = {"sessionId": sid, "userId": "u-dry", "agent": "ai", "context": {}, "metadata": {},
              "createdAt": "2024-01-01T10:00:00.000Z", "updatedAt": "2024-01-01T10:00:00.000Z"}  # fmt: skip
    r.set(f"session:{sid}", json.dumps(record), ex=86400)
    r.zadd("user_sessions:u-dry", {sid: 1704103200000})
    before = _snapshot(r, "u-dry")
    gw = shadow_gateway(text, REDIS_URL=redis_url, JWT_SECRET_KEY=SECRET)
    auth = _auth("u-dry", "customer")
    with gw.client() as c:
        c.post("/api/sessions", json={"metadata": {"a": 1}}, headers=auth)
        c.patch(f"/api/sessions/{sid}", json={"agent": "human"}, headers=auth)
        c.delete(f"/api/sessions/{sid}", headers=auth)
        c.get(f"/api/sessions/{sid}", headers=auth)
    counts = gw.wait_counts(4, route="sessions")
    assert sum(counts.values()) == 4 and counts["error"] == 0, counts
    samples = gw.api("/api/shadow/samples?route=sessions")["data"]
    shadow_status = {s["method"]: s["shadow"]["status"] for s in samples}
    # the module really ran the writes (in its throw-away namespace)...
    assert shadow_status == {"POST": 201, "PATCH": 200, "DELETE": 204, "GET": 200}
    # ...and not one production key changed
    assert _snapshot(r, "u-dry") == before
    assert r.ttl(f"session:{sid}") > 86000


def test_dry_run_admin_writes_change_no_production_row(
    shadow_gateway: Callable[..., ShadowGateway], test_upstream: str, mysql_database: Any
) -> None:
    db, conn = _database_with_schema(mysql_database)
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO teams (name, created_at, updated_at) VALUES ('Sales', NOW(3), NOW(3))"
        )

    def rows() -> dict[str, list[Any]]:
        return _rows(conn, ("teams", "users", "labels", "customer_contacts", "conversations"))

    before = rows()
    text = _dry_run_routes(
        test_upstream, "admin", "prefix: /api/admin", "admin", "GET, POST, PATCH, DELETE"
    )
    gw = shadow_gateway(text, DATABASE_URL=mysql_url_for(db), JWT_SECRET_KEY=SECRET)
    auth = _auth("admin-1", "admin")
    with gw.client() as c:
        c.post("/api/admin/teams", json={"name": "Support"}, headers=auth)
        c.post("/api/admin/labels", json={"title": "vip"}, headers=auth)
        c.patch("/api/admin/teams/1", json={"description": "changed"}, headers=auth)
        c.delete("/api/admin/teams/1", headers=auth)
    counts = gw.wait_counts(4, route="admin")
    assert sum(counts.values()) == 4 and counts["error"] == 0, counts
    samples = gw.api("/api/shadow/samples?route=admin")["data"]
    shadow_status = {s["method"] + " " + s["target"]: s["shadow"]["status"] for s in samples}
    # the module really ran each write (its answers are the real ones)...
    assert shadow_status["POST /api/admin/teams"] == 201
    assert shadow_status["PATCH /api/admin/teams/1"] == 200
    assert shadow_status["DELETE /api/admin/teams/1"] == 204
    # ...in transactions that were rolled back: not one row changed
    assert rows() == before
    conn.close()


def test_dry_run_message_is_neither_stored_nor_delivered(
    shadow_gateway: Callable[..., ShadowGateway],
    test_upstream: str,
    mysql_database: Any,
    redis_url: str,
) -> None:
    db, conn = _database_with_schema(mysql_database)

    def rows() -> dict[str, list[Any]]:
        return _rows(conn, ("customer_contacts", "conversations", "messages"))

    r = redis.Redis.from_url(redis_url)
    sid = "5d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    record = {"sessionId": sid, "userId": "u-dry-msg", "agent": "human", "context": {},
              "metadata": {}, "createdAt": "2024-01-01T10:00:00.000Z",
              "updatedAt": "2024-01-01T10:00:00.000Z"}  # fmt: skip
    r.set(f"session:{sid}", json.dumps(record), ex=86400)
    pubsub = r.pubsub()
    pubsub.subscribe(f"chat:session:{sid}")
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    before = rows()
    text = _dry_run_routes(test_upstream, "messages", "path: /api/messages", "websocket", "POST")
    gw = shadow_gateway(
        text, DATABASE_URL=mysql_url_for(db), REDIS_URL=redis_url, JWT_SECRET_KEY=SECRET
    )
    auth = _auth("u-dry-msg", "customer")
    with gw.client() as c:
        c.post(
            "/api/messages",
            json={"sessionId": sid, "text": "hello"},
            headers=auth,
        )
    counts = gw.wait_counts(1, route="messages")
    assert counts["error"] == 0, counts
    samples = gw.api("/api/shadow/samples?route=messages")["data"]
    assert [s["shadow"]["status"] for s in samples] == [201]  # the module really handled it
    assert rows() == before  # nothing stored
    assert pubsub.get_message(timeout=1) is None  # nothing delivered
    pubsub.close()
    conn.close()
