"""Benchmark of ``chatgw migrate sessions`` on 1 000 000 legacy records (not in CI).

Fills Redis db 12 (``--db``) with legacy-shape ``session:*`` records (TTLs 1-24 h, a few
without TTL) and their ``user_sessions:*`` indexes, then runs, each as its own ``chatgw``
process: migrate to python (in place), verify, migrate back to legacy, verify. Prints time,
rate and peak RSS of every step (``wait4`` rusage of the child) and Redis ``used_memory``
(after the fill, and the peak seen while each step ran), then checks a sample of records
is byte-identical to what was written, and empties the db.

Safety: the db is FLUSHDB'd only if it is empty or carries this bench's marker key;
anything else is refused loudly. Never FLUSHALL.

    .venv/bin/python bench/migrate_sessions.py [--records 1000000] [--db 12]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import threading
import time

import redis

MARKER = "chatgw:bench:migrate_sessions"
HOST, PORT = "127.0.0.1", 6379
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def iso(ms: int) -> str:
    t = time.gmtime(ms // 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{ms % 1000:03d}Z"


def record(i: int, created: int) -> str:
    sid = f"{i:08x}-5e55-4a1b-9c3d-{i * 7919 % 16**12:012x}"
    uid = f"u-{i % 200_000}"
    return (
        f'{{"sessionId":"{sid}","userId":"{uid}","agent":"{"ai" if i % 3 else "human"}",'
        f'"context":{{"lang":"zh-CN","turns":{i % 17},"topic":"order #{i}"}},'
        f'"metadata":{{"channel":"web","tags":["vip"]}},'
        f'"createdAt":"{iso(created)}","updatedAt":"{iso(created + i % 3_600_000)}"}}'
    )


def sid_of(i: int) -> str:
    return f"{i:08x}-5e55-4a1b-9c3d-{i * 7919 % 16**12:012x}"


def guard(r: redis.Redis, db: int) -> None:
    size = r.dbsize()
    if size and not r.exists(MARKER):
        sys.exit(
            f"REFUSING: Redis db {db} holds {size} keys and no {MARKER} marker: it is not this "
            "bench's db. Pick an empty db with --db."
        )


def fill(r: redis.Redis, n: int, rng: random.Random) -> None:
    now = int(time.time() * 1000)
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        created = now - rng.randrange(86_400_000)
        key = f"session:{sid_of(i)}"
        ttl = None if i % 1000 == 0 else rng.randrange(3_600_000, 86_400_000)
        pipe.set(key, record(i, created), px=ttl)
        idx = f"user_sessions:u-{i % 200_000}"
        pipe.zadd(idx, {sid_of(i): created})
        pipe.pexpire(idx, 86_400_000)
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()


class MemWatch:
    """Polls ``INFO memory`` while a step runs; keeps the highest ``used_memory``."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, int(self.r.info("memory")["used_memory"]))
            self.stop.wait(0.2)

    def __enter__(self) -> MemWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def step(name: str, argv: list[str], r: redis.Redis, n: int) -> tuple[float, int, int]:
    mem = MemWatch(redis.Redis(host=HOST, port=PORT))
    with mem:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.monotonic() - t0
    rss_mb = usage.ru_maxrss // 1024
    print(f"--- {name}: exit {proc.returncode}\n{out.rstrip()}")
    if proc.returncode != 0:
        sys.exit(f"{name} failed")
    print(
        f"=== {name}: {elapsed:.1f} s, {n / elapsed:,.0f} records/s, peak RSS {rss_mb} MB, "
        f"redis used_memory peak {mem.peak / 2**20:.0f} MB"
    )
    return elapsed, rss_mb, mem.peak


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--db", type=int, default=12)
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args()
    r = redis.Redis(host=HOST, port=PORT, db=args.db)
    guard(r, args.db)
    r.flushdb()  # this db only, and only after the guard
    r.set(MARKER, "1")
    url = f"redis://{HOST}:{PORT}/{args.db}"
    chatgw = [sys.executable, "-m", "gateway.cli", "migrate", "sessions", "--redis-url", url]
    state = os.path.join(ROOT, ".run", "bench-migrate-sessions.json")
    base_mem = int(r.info("memory")["used_memory"])
    rng = random.Random(42)
    t0 = time.monotonic()
    fill(r, args.records, rng)
    print(
        f"filled {args.records} legacy records + indexes in {time.monotonic() - t0:.1f} s; "
        f"db {args.db} has {r.dbsize()} keys, used_memory +"
        f"{(int(r.info('memory')['used_memory']) - base_mem) / 2**20:.0f} MB"
    )
    probe = rng.sample(range(args.records), 1000)
    before = r.mget([f"session:{sid_of(i)}" for i in probe])
    exp_before = [r.pexpiretime(f"session:{sid_of(i)}") for i in probe]
    results = {}
    for name, extra in [
        ("to python", ["--to", "python"]),
        ("verify python", ["--to", "python", "--verify"]),
        ("to legacy", ["--to", "legacy"]),
        ("verify legacy", ["--to", "legacy", "--verify"]),
    ]:
        results[name] = step(
            name, [*chatgw, *extra, "--batch", str(args.batch), "--state", state], r, args.records
        )
        if name == "to python":
            mem_py = int(r.info("memory")["used_memory"]) - base_mem
            print(f"    python-shape data: used_memory +{mem_py / 2**20:.0f} MB")
    after = r.mget([f"session:{sid_of(i)}" for i in probe])
    exp_after = [r.pexpiretime(f"session:{sid_of(i)}") for i in probe]
    identical = sum(a == b for a, b in zip(before, after, strict=True))
    drift = max(abs(a - b) for a, b in zip(exp_before, exp_after, strict=True))
    print(f"round trip: {identical}/{len(probe)} sampled records byte-identical")
    print(f"expiry (PEXPIRETIME) of sampled keys moved by at most {drift} ms")
    print(f"bench process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB")
    r.flushdb()
    if os.path.exists(state):
        os.unlink(state)
    return 0 if identical == len(probe) and drift == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
