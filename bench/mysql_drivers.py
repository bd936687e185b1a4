"""asyncmy vs aiomysql under SQLAlchemy, on chat-admin's own queries.

Creates a throw-away database (``cgw_t_bench_*``) with schema.sql, seeds 500 users, then
for each driver times through :class:`modules.admin.store.Store`:

- ``get``: 2 000 primary-key reads (``GET /api/admin/users/{id}``), one after another;
- ``get x20``: the same 2 000 reads from 20 concurrent tasks;
- ``list``: 200 list pages (``GET /api/admin/users?page=n&perPage=100``: COUNT + 100 rows);
- ``list x20``: the same 200 pages from 20 concurrent tasks.

Run: ``.venv/bin/python bench/mysql_drivers.py [--rounds 5]`` (MariaDB from TEST_MYSQL_*,
default root@127.0.0.1:3306). Prints per driver and case the best wall time of the rounds
and the median client CPU per query (this process only: the driver's own cost, steadier
than wall time on a shared machine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import pymysql

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modules.admin.db import create_engine
from modules.admin.store import Store

HOST = os.environ.get("TEST_MYSQL_HOST", "127.0.0.1")
PORT = int(os.environ.get("TEST_MYSQL_PORT", "3306"))
USER = os.environ.get("TEST_MYSQL_USER", "root")
PASSWORD = os.environ.get("TEST_MYSQL_PASSWORD", "")
SCHEMA = os.path.join(os.path.dirname(__file__), "..", "deploy", "legacy", "schema.sql")
USERS = 500
GETS = 2000
PAGES = 200
CONCURRENCY = 20


def _connect(database: str | None = None) -> pymysql.Connection:  # type: ignore[type-arg]
    return pymysql.connect(
        host=HOST, port=PORT, user=USER, password=PASSWORD, database=database, autocommit=True
    )


def setup() -> str:
    name = "cgw_t_bench_" + secrets.token_hex(4)
    with _connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    path = SCHEMA if os.path.exists(SCHEMA) else "/work/shared/contract/schema.sql"
    with open(path, encoding="utf-8") as f:
        text = "\n".join(ln for ln in f.read().splitlines() if not ln.strip().startswith("--"))
    with _connect(name) as conn, conn.cursor() as cur:
        for stmt in filter(None, (s.strip() for s in text.split(";"))):
            cur.execute(stmt)
        cur.executemany(
            "INSERT INTO users (email, name, role, created_at, updated_at) "
            "VALUES (%s, %s, 'agent', NOW(3), NOW(3))",
            [(f"user{i}@example.com", f"User {i}") for i in range(USERS)],
        )
    return name


def teardown(name: str) -> None:
    with _connect() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


async def timed(
    n: int, concurrency: int, one: Callable[[int], Awaitable[object]]
) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) for ``n`` calls of ``one``."""
    wall, cpu = time.perf_counter(), time.process_time()
    if concurrency == 1:
        for i in range(n):
            await one(i)
    else:

        async def worker(w: int) -> None:
            for i in range(w, n, concurrency):
                await one(i)

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return time.perf_counter() - wall, time.process_time() - cpu


def cases(store: Store) -> list[tuple[str, int, int, Callable[[int], Awaitable[object]]]]:
    async def get(i: int) -> object:
        return await store.get_row("users", i % USERS + 1)

    async def page(i: int) -> object:
        return await store.list_rows("users", page=i % 5 + 1, per_page=100)

    return [
        ("get", GETS, 1, get),
        (f"get x{CONCURRENCY}", GETS, CONCURRENCY, get),
        ("list", PAGES, 1, page),
        (f"list x{CONCURRENCY}", PAGES, CONCURRENCY, page),
    ]


async def bench(drivers: list[str], database: str, rounds: int) -> dict[str, dict[str, Any]]:
    """Rounds interleave the drivers case by case, so that a noisy neighbour on a shared
    machine hits both alike; the best wall time and the median CPU time are kept."""
    auth = quote(USER, safe="") + (":" + quote(PASSWORD, safe="") if PASSWORD else "")
    engines = {
        d: create_engine(f"mysql+{d}://{auth}@{HOST}:{PORT}/{database}", pool_size=CONCURRENCY)
        for d in drivers
    }
    stores = {d: Store(e) for d, e in engines.items()}
    out: dict[str, dict[str, Any]] = {d: {} for d in drivers}
    try:
        for store in stores.values():  # warm the pools and the server's caches
            await timed(200, CONCURRENCY, cases(store)[1][3])
        for _ in range(rounds):
            for index in range(4):
                for d in drivers:
                    label, n, conc, fn = cases(stores[d])[index]
                    wall, cpu = await timed(n, conc, fn)
                    best = out[d].setdefault(label, {"n": n, "wall": wall, "cpu": []})
                    best["wall"] = min(best["wall"], wall)
                    best["cpu"].append(cpu)
    finally:
        for e in engines.values():
            await e.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--drivers", default="asyncmy,aiomysql")
    args = parser.parse_args()
    database = setup()
    try:
        results = asyncio.run(bench(args.drivers.split(","), database, args.rounds))
    finally:
        teardown(database)
    print(f"{'driver':10} {'case':10} {'best wall s':>11} {'q/s':>7} {'client CPU µs/q':>16}")
    for driver, by_case in results.items():
        for label, r in by_case.items():
            cpu = statistics.median(r["cpu"]) / r["n"] * 1e6
            print(f"{driver:10} {label:10} {r['wall']:11.3f} {r['n'] / r['wall']:7.0f} {cpu:16.0f}")


if __name__ == "__main__":
    main()
