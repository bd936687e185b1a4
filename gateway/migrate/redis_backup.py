"""Logical Redis backup of the chat keys: ``chatgw backup redis`` / ``chatgw restore redis``.

A live Redis cannot afford ``BGSAVE``-and-copy (fork, a full RDB of unrelated data, one
file for every db). This walks the keyspace with ``SCAN`` (batches, never ``KEYS``) and
saves ``session:*``, ``user_sessions:*`` and ``history:*`` with ``DUMP`` and their expiry,
as an absolute time (``PEXPIRETIME``), so that a restore an hour later gives the keys
the hour less they would have had. File: gzip'd JSON lines — a header, one line per key
(``{"k": b64 key, "x": expiry epoch ms | null, "d": b64 DUMP}``), and an end line with the
count (a truncated file is refused)::

    chatgw backup redis --redis-url redis://:pw@host:6379/0 --out redis-sessions.jsonl.gz
    chatgw restore redis --in redis-sessions.jsonl.gz --redis-url redis://… [--replace] [--prune]

Restore uses ``RESTORE … ABSTTL``; a key whose expiry has passed is not restored; an
existing key is kept (and counted) unless ``--replace``; ``--prune`` also deletes keys of
these prefixes that are not in the backup (a full return to the backed-up state — it drops
sessions created since, so it is for a rollback, not a routine restore).
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import IO, Any

import redis

from . import redact_url
from .sessions import scan_page, server_version

PREFIXES = (b"session:", b"user_sessions:", b"history:")
FORMAT = "chatgw-redis-backup"


class BackupError(RuntimeError):
    """The backup file is unreadable, truncated or of another format."""


@dataclass
class RestoreCounts:
    restored: int = 0
    kept_existing: int = 0
    expired: int = 0
    pruned: int = 0
    errors: int = 0


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=60, socket_connect_timeout=10)


def _server_ms(r: redis.Redis) -> int:
    sec, usec = r.time()
    return int(sec) * 1000 + int(usec) // 1000


def backup(url: str, out_path: str, batch: int = 1000) -> int:
    """Write the chat keys of ``url`` to ``out_path``; returns the number of keys."""
    r = _client(url)
    tmp = f"{out_path}.partial"
    count = 0
    # PEXPIRETIME (Redis >= 7): the exact expiry; older servers: TIME + PTTL (±1 ms).
    absolute = server_version(r) >= (7, 0)
    try:
        with gzip.open(tmp, "wt", encoding="utf-8") as f:
            header = {
                "format": FORMAT,
                "version": 1,
                "created_ms": _server_ms(r),
                "source": redact_url(url),
                "prefixes": [p.decode() for p in PREFIXES],
            }
            f.write(json.dumps(header) + "\n")
            cursor = 0
            while True:
                cursor, keys = scan_page(r, cursor, batch)
                keys = [k for k in keys if k.startswith(PREFIXES)]
                if keys:
                    pipe = r.pipeline(transaction=False)
                    pipe.time()
                    for k in keys:
                        pipe.dump(k)
                        if absolute:
                            pipe.execute_command("PEXPIRETIME", k)
                        else:
                            pipe.pttl(k)
                    res = pipe.execute()
                    now = 0 if absolute else int(res[0][0]) * 1000 + int(res[0][1]) // 1000
                    for i, k in enumerate(keys):
                        payload, ttl = res[1 + 2 * i], res[2 + 2 * i]
                        if payload is None or ttl == -2:
                            continue  # expired between SCAN and DUMP
                        line = {
                            "k": base64.b64encode(k).decode(),
                            "x": now + int(ttl) if ttl >= 0 else None,
                            "d": base64.b64encode(payload).decode(),
                        }
                        f.write(json.dumps(line) + "\n")
                        count += 1
                if cursor == 0:
                    break
            f.write(json.dumps({"end": True, "count": count}) + "\n")
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        r.close()
    return count


def _records(f: IO[str]) -> Any:
    first = f.readline()
    try:
        header = json.loads(first)
    except ValueError as exc:
        raise BackupError("not a chatgw Redis backup (no header)") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise BackupError("not a chatgw Redis backup (wrong header)")
    seen = 0
    for raw in f:
        line = json.loads(raw)
        if line.get("end"):
            if line.get("count") != seen:
                raise BackupError(f"backup says {line.get('count')} keys, file has {seen}")
            return
        seen += 1
        yield base64.b64decode(line["k"]), line["x"], base64.b64decode(line["d"])
    raise BackupError(f"backup is truncated after {seen} keys (no end line)")


def restore(
    url: str, in_path: str, replace: bool = False, prune: bool = False, batch: int = 1000
) -> RestoreCounts:
    """Load a backup into ``url`` (see the module docstring for the rules)."""
    r = _client(url)
    counts = RestoreCounts()
    present: set[bytes] = set()
    try:
        with gzip.open(in_path, "rt", encoding="utf-8") as f:
            chunk: list[tuple[bytes, int | None, bytes]] = []
            for rec in _records(f):
                if prune:
                    present.add(rec[0])
                chunk.append(rec)
                if len(chunk) >= batch:
                    _restore_chunk(r, chunk, replace, counts)
                    chunk = []
            if chunk:
                _restore_chunk(r, chunk, replace, counts)
        if prune:
            cursor = 0
            while True:
                cursor, keys = scan_page(r, cursor, batch)
                extra = [k for k in keys if k.startswith(PREFIXES) and k not in present]
                if extra:
                    counts.pruned += int(r.delete(*extra))
                if cursor == 0:
                    break
    finally:
        r.close()
    return counts


def _restore_chunk(
    r: redis.Redis,
    chunk: list[tuple[bytes, int | None, bytes]],
    replace: bool,
    counts: RestoreCounts,
) -> None:
    now = _server_ms(r)
    pipe = r.pipeline(transaction=False)
    sent: list[bytes] = []
    for key, expiry, payload in chunk:
        if expiry is not None and expiry <= now:
            counts.expired += 1
            continue
        pipe.restore(key, expiry or 0, payload, replace=replace, absttl=expiry is not None)
        sent.append(key)
    for key, res in zip(sent, pipe.execute(raise_on_error=False), strict=True):
        if isinstance(res, redis.ResponseError) and "BUSYKEY" in str(res):
            counts.kept_existing += 1
        elif isinstance(res, Exception):
            counts.errors += 1
            print(f"restore {key.decode(errors='replace')}: {res}", file=sys.stderr)
        else:
            counts.restored += 1


def elapsed_since(start: float) -> str:
    return f"{time.monotonic() - start:.1f} s"
