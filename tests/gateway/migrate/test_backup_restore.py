"""``deploy/scripts/backup`` and ``deploy/scripts/restore``: a mutation is undone."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymysql
import redis
from migrate_helpers import ROOT, root

SCRIPTS = ROOT / "deploy" / "scripts"


def script(name: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "CHATGW": f"{sys.executable} -m gateway.cli",
        "PYTHONPATH": str(ROOT),
        "MYSQL_HOST": root.MYSQL_HOST,
        "MYSQL_PORT": str(root.MYSQL_PORT),
        "MYSQL_USER": root.MYSQL_USER,
        "MYSQL_PWD": root.MYSQL_PASSWORD,
    }
    return subprocess.run(
        [str(SCRIPTS / name), *argv], env=env, capture_output=True, text=True, timeout=120
    )


def mysql(db: str) -> Any:
    return pymysql.connect(
        host=root.MYSQL_HOST, port=root.MYSQL_PORT, user=root.MYSQL_USER,
        password=root.MYSQL_PASSWORD, database=db, autocommit=True, charset="utf8mb4",
    )  # fmt: skip


def tables(db: str) -> dict[str, list[tuple[Any, ...]]]:
    conn = mysql(db)
    with conn.cursor() as cur:
        cur.execute("SHOW TABLES")
        names = sorted(r[0] for r in cur.fetchall())
        out = {}
        for t in names:
            cur.execute(f"SELECT * FROM `{t}` ORDER BY 1")  # noqa: S608 - names from SHOW TABLES
            out[t] = list(cur.fetchall())
    conn.close()
    return out


def redis_state(r: redis.Redis) -> dict[bytes, tuple[bytes, int]]:
    return {k: (r.dump(k), r.pexpiretime(k)) for k in r.scan_iter()}  # type: ignore[misc]


def test_backup_mutate_restore_returns_mysql_and_redis_to_the_backed_up_state(
    mysql_database: Callable[[], str], src: redis.Redis, src_url: str, tmp_path: Path
) -> None:
    db = mysql_database()
    conn = mysql(db)
    with conn.cursor() as cur:
        for stmt in (ROOT / "deploy" / "legacy" / "schema.sql").read_text().split(";"):
            if any(ln.strip() and not ln.strip().startswith("--") for ln in stmt.splitlines()):
                cur.execute(stmt)
        cur.execute(
            "INSERT INTO teams (name, description, created_at, updated_at) VALUES "
            "('alpha', 'ünï \\'q\\'', NOW(3), NOW(3)), ('beta', NULL, NOW(3), NOW(3))"
        )
    conn.close()
    src.set("session:a", b'{"userId":"u","createdAt":"2024-01-01T00:00:00.000Z"}', px=3_600_000)
    src.set("session:b", b'{"userId":"u","createdAt":"2024-01-01T00:00:00.000Z"}')
    src.zadd("user_sessions:u", {"a": 1704067200000, "b": 1704067200000})
    src.pexpire("user_sessions:u", 7_200_000)
    src.rpush("history:a", b'{"role":"user","content":"hi"}', b"\xff\x00binary")
    src.set("other:key", "not backed up")
    mysql_before, redis_before = tables(db), redis_state(src)

    proc = script("backup", "--out", str(tmp_path), "--mysql-db", db, "--redis-url", src_url)
    assert proc.returncode == 0, proc.stderr
    backup_dir = Path(proc.stdout.strip().splitlines()[-1])
    assert {p.name for p in backup_dir.iterdir()} == {
        f"mysql-{db}.sql.gz",
        "redis.jsonl.gz",
        "MANIFEST",
        "SHA256SUMS",
    }
    manifest = (backup_dir / "MANIFEST").read_text()
    assert f"mysql_db={db}" in manifest and "redis_url=redis://" in manifest

    conn = mysql(db)
    with conn.cursor() as cur:
        cur.execute("UPDATE teams SET name = 'changed' WHERE name = 'alpha'")
        cur.execute("DELETE FROM teams WHERE name = 'beta'")
        cur.execute(
            "INSERT INTO teams (name, created_at, updated_at) VALUES ('new', NOW(3), NOW(3))"
        )
    conn.close()
    src.set("session:a", b"{}", px=5)
    src.delete("session:b", "history:a")
    src.persist("user_sessions:u")
    src.set("session:new", b'{"userId":"n","createdAt":"2024-01-01T00:00:00.000Z"}')
    time.sleep(0.01)
    assert tables(db) != mysql_before

    proc = script("restore", "--from", str(backup_dir), "--redis-url", src_url, "--yes",
                  "--replace", "--prune")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "restored 4" in proc.stdout and "pruned 1" in proc.stdout
    assert tables(db) == mysql_before
    assert redis_state(src) == redis_before  # values and absolute expiries


def test_restore_refuses_a_damaged_backup_and_touches_nothing(
    src: redis.Redis, src_url: str, tmp_path: Path
) -> None:
    src.set("session:a", b"x", px=600_000)
    proc = script("backup", "--out", str(tmp_path), "--redis-url", src_url)
    assert proc.returncode == 0, proc.stderr
    backup_dir = Path(proc.stdout.strip().splitlines()[-1])
    data = gzip.decompress((backup_dir / "redis.jsonl.gz").read_bytes())
    (backup_dir / "redis.jsonl.gz").write_bytes(gzip.compress(data.replace(b'"k"', b'"K"', 1)))
    src.set("session:a", b"changed")
    proc = script(
        "restore", "--from", str(backup_dir), "--redis-url", src_url, "--yes", "--replace"
    )
    assert proc.returncode == 1
    assert "fails its checksums" in proc.stderr
    assert src.get("session:a") == b"changed"


def test_restore_keeps_existing_keys_without_replace_and_skips_expired_ones(
    src: redis.Redis, src_url: str, tmp_path: Path
) -> None:
    from gateway.migrate.redis_backup import backup, restore

    src.set("session:keep", b"old", px=600_000)
    src.set("session:gone", b"soon", px=300)
    out = str(tmp_path / "r.jsonl.gz")
    assert backup(src_url, out) == 2
    src.set("session:keep", b"live")
    time.sleep(0.35)
    counts = restore(src_url, out)
    assert (counts.restored, counts.kept_existing, counts.expired) == (0, 1, 1)
    assert src.get("session:keep") == b"live" and not src.exists("session:gone")
