"""``chatgw migrate sessions``: session records between the legacy and the Python shape.

The records are ``session:{id}`` JSON strings (legacy-api.md §2, §6 "chat-session"). The
conversion reuses :mod:`modules.common.sessions`: a record is read into the 7-field wire
session with :func:`~modules.common.sessions.from_stored` and written back with
:func:`~modules.common.sessions.to_stored`, so the migrated record is, by construction,
the same session for both readers (checked again for every record before it is written).

Rules (the migration guide's bugs, not repeated):

- the keyspace is walked with ``SCAN`` in batches (``--batch``), never ``KEYS``; reads are
  pipelined ``GET`` + ``PTTL``;
- in place, each record is replaced by a small Lua script that writes only if the value is
  still the one read (compare-and-set) and keeps the key's remaining TTL to the millisecond
  (read inside the script); a key without TTL stays without one; a key that expired (or
  was rewritten by a live service) between read and write is left alone and counted
  (``SET … KEEPTTL``: Redis >= 6.0);
- into another Redis/db (``--target-url``), the record is written with the remaining TTL
  (``PTTL`` minus the time since the read, so the copy expires when the source does; a key
  that has expired meanwhile is not written), and the ``user_sessions:{userId}`` indexes
  are copied with their scores and TTLs;
- ``createdAt``/``created_at`` and ``updatedAt``/``updated_at`` keep their instant to the
  millisecond (the resolution every reader uses); the Python shape is written with the
  JavaScript ISO form (``2024-01-01T10:00:00.123Z``), so Python -> legacy -> Python is
  byte-identical; top-level fields neither shape knows are carried over;
- idempotent: a record already in the target shape is not touched (a second run reports
  ``0 converted``); malformed records (not JSON, not an object, unreadable user id or
  times, ``context``/``metadata``/``agent`` of the wrong type) are reported with their key
  and left untouched;
- progress: SCAN cursor and counters go to a state file after every batch; ``--resume``
  continues from it (SCAN may return a key twice: harmless, the conversion is idempotent).

Example::

    chatgw migrate sessions --redis-url redis://:pw@10.0.0.5:6379/0 --to python --dry-run
    chatgw migrate sessions --redis-url redis://:pw@10.0.0.5:6379/0 --to python
    chatgw migrate sessions --redis-url redis://:pw@10.0.0.5:6379/0 --to python --verify
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TextIO, cast

import redis

from modules.common.jsfmt import JSONError, js_dumps, js_loads, parse_time
from modules.common.sessions import WireSession, from_stored, to_stored

from . import redact_url

Shape = Literal["legacy", "python"]
SESSION_PREFIX = b"session:"
INDEX_PREFIX = b"user_sessions:"
LEGACY_FIELDS = ("sessionId", "userId", "agent", "context", "metadata", "createdAt", "updatedAt")
PYTHON_FIELDS = (
    "session_id",
    "user_id",
    "agent_type",
    "context",
    "metadata",
    "created_at",
    "updated_at",
)
KNOWN_FIELDS = frozenset(LEGACY_FIELDS) | frozenset(PYTHON_FIELDS)
SAMPLE_VALUE_LIMIT = 200
REPORT_LIMIT = 100

# In place: write ARGV[2] only if the key still holds ARGV[1]; keep its expiry exactly
# (KEEPTTL, Redis >= 6.0; no TTL stays no TTL).
# -> 1 written, 0 changed meanwhile, -1 gone (expired or deleted) meanwhile.
_CAS_INPLACE = """
local cur = redis.call('GET', KEYS[1])
if not cur then return -1 end
if cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
"""

# Expiry arguments of the target scripts: ARGV "exp" is either a remaining TTL in ms
# (relative mode) or an absolute expiry in epoch ms read with PEXPIRETIME (absolute mode,
# Redis >= 7 on both sides: exact to the ms); -1 = no expiry. A key whose absolute expiry
# has passed is not written (-1 returned).
_EXPIRY_LUA = """
local exp = tonumber(ARGV[2])
local absolute = ARGV[4] == '1'
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function expired()
  return absolute and exp > 0 and exp <= now_ms()
end
local function align(key)
  if exp < 0 then
    if redis.call('PTTL', key) >= 0 then redis.call('PERSIST', key) end
    return
  end
  local have = absolute and redis.call('PEXPIRETIME', key) or redis.call('PTTL', key)
  if have < 0 or math.abs(have - exp) > tonumber(ARGV[3]) then
    if absolute then redis.call('PEXPIREAT', key, exp) else redis.call('PEXPIRE', key, exp) end
  end
end
"""

# Into another db: ARGV[1] value, ARGV[2] exp, ARGV[3] tolerance ms, ARGV[4] absolute.
# -> 1 written, 0 already identical (expiry aligned if it drifted), -1 expired meanwhile.
_PUT_TARGET = (
    _EXPIRY_LUA
    + """
if expired() then return -1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  align(KEYS[1])
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
align(KEYS[1])
return 1
"""
)

# Index copy: ARGV[1] unused, ARGV[2..4] as above, then score/member pairs from ARGV[5].
# -> number of members added or re-scored, -1 expired meanwhile.
_PUT_INDEX = (
    _EXPIRY_LUA
    + """
if expired() then return -1 end
local changed = 0
for i = 5, #ARGV, 2 do
  changed = changed + redis.call('ZADD', KEYS[1], 'CH', ARGV[i], ARGV[i + 1])
end
align(KEYS[1])
return changed
"""
)


class MigrateError(RuntimeError):
    """The run cannot start or continue (bad state file, unreachable Redis, …)."""


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Malformed:
    reason: str


@dataclass(frozen=True)
class Already:
    session: WireSession


@dataclass(frozen=True)
class Converted:
    session: WireSession
    data: bytes


Outcome = Malformed | Already | Converted


def shape_of(obj: dict[str, Any]) -> Shape:
    """Which shape the readers take ``obj`` for (the rule of ``from_stored``)."""
    legacy = "userId" in obj or "createdAt" in obj or "user_id" not in obj
    return "legacy" if legacy else "python"


def _type_problem(obj: dict[str, Any], shape: Shape) -> str | None:
    agent_name = "agent" if shape == "legacy" else "agent_type"
    for name in ("context", "metadata"):
        v = obj.get(name)
        if v is not None and not isinstance(v, dict):
            return f"{name} is a {type(v).__name__}, not an object"
    agent = obj.get(agent_name)
    if agent is not None and not isinstance(agent, str):
        return f"{agent_name} is a {type(agent).__name__}, not a string"
    return None


def _unreadable_reason(obj: dict[str, Any], shape: Shape) -> str:
    uid, created, updated = (
        ("userId", "createdAt", "updatedAt")
        if shape == "legacy"
        else ("user_id", "created_at", "updated_at")
    )
    v = obj.get(uid)
    usable = (isinstance(v, str) and v) or (
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    )
    if not usable:
        return f"{uid}={_short(v)} is not a usable user id"
    if parse_time(obj.get(created)) is None:
        return f"{created}={_short(obj.get(created))} is not a readable time"
    return f"{updated}={_short(obj.get(updated))} is not a readable time"


def _short(v: object) -> str:
    text = js_dumps(v).decode() if v is not None else "missing"
    return text if len(text) <= 60 else text[:60] + "…"


@dataclass(frozen=True)
class Readable:
    shape: Shape
    session: WireSession
    obj: dict[str, Any]


def inspect_record(key_id: str, raw: bytes) -> Malformed | Readable:
    """One stored record -> its shape and wire session, or why it is malformed."""
    try:
        obj = js_loads(raw)
    except JSONError:
        return Malformed("not JSON")
    if not isinstance(obj, dict):
        return Malformed(f"not a JSON object ({type(obj).__name__})")
    shape = shape_of(obj)
    session = from_stored(obj, key_id)
    if session is None:
        return Malformed(_unreadable_reason(obj, shape))
    problem = _type_problem(obj, shape)
    if problem:
        return Malformed(problem)
    return Readable(shape, session, obj)


def convert_record(key_id: str, raw: bytes, to: Shape) -> Outcome:
    """One stored record -> what to do with it when migrating to shape ``to``.

    The new record is ``to_stored`` of the wire session (plus unknown top-level fields),
    so both readers see the same session; ``--verify`` re-reads every written record.
    """
    found = inspect_record(key_id, raw)
    if isinstance(found, Malformed):
        return found
    if found.shape == to:
        return Already(found.session)
    session = found.session
    new = to_stored(session, to)
    if to == "python":  # ms + Z, as the legacy side writes: a lossless round trip
        new["created_at"] = session.created_at
        new["updated_at"] = session.updated_at
    for name, value in found.obj.items():
        if name not in KNOWN_FIELDS:
            new[name] = value
    return Converted(session, js_dumps(new))


def elide(raw: bytes | str) -> str:
    """A record for printing: values whose JSON is over 200 characters are elided."""
    try:
        obj = js_loads(raw)
    except JSONError:
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        return text[:SAMPLE_VALUE_LIMIT] + ("…" if len(text) > SAMPLE_VALUE_LIMIT else "")
    if not isinstance(obj, dict):
        return js_dumps(obj).decode()[:SAMPLE_VALUE_LIMIT]
    out = {}
    for k, v in obj.items():
        text = js_dumps(v).decode()
        out[k] = v if len(text) <= SAMPLE_VALUE_LIMIT else f"<{len(text)} chars elided>"
    return js_dumps(out).decode()


# --------------------------------------------------------------------------- progress


class Progress:
    """``\\r``-rendered bar on stderr with rate and ETA; silent unless enabled."""

    def __init__(self, total: int, enabled: bool, stream: TextIO | None = None) -> None:
        self.total = max(total, 1)
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self.last = 0.0
        self.base = 0
        self.shown = -1

    def update(self, done: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < 0.2:
            return
        self.last = now
        self.shown = done
        elapsed = max(now - self.start, 1e-6)
        rate = (done - self.base) / elapsed
        frac = min(done / self.total, 1.0)
        eta = (self.total - done) / rate if rate > 0 and done < self.total else 0.0
        bar = "#" * int(frac * 30)
        self.stream.write(
            f"\r[{bar:<30}] {frac * 100:5.1f}% {done}/~{self.total} keys "
            f"{rate:,.0f}/s ETA {_hms(eta)} "
        )
        self.stream.flush()

    def close(self, done: int) -> None:
        if self.enabled:
            if done != self.shown:
                self.update(done, force=True)
            self.stream.write("\n")
            self.stream.flush()


def _hms(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


# --------------------------------------------------------------------------- state


@dataclass
class Counters:
    scanned: int = 0  # keys returned by SCAN (all names)
    sessions: int = 0  # session:* keys read
    converted: int = 0  # rewritten (or, dry run: would be)
    already: int = 0  # already in the target shape
    copied: int = 0  # target differs: records written unchanged (already in shape)
    unchanged: int = 0  # target differs: target already held the same bytes
    malformed: int = 0
    expired: int = 0  # gone between read and write
    changed: int = 0  # rewritten by someone else between read and write: left alone
    errors: int = 0
    index_keys: int = 0  # user_sessions:* copied (target differs)
    index_changed: int = 0  # members added or re-scored in the target
    batches: int = 0


@dataclass
class RunState:
    source: str
    target: str
    to: str
    cursor: int = 0
    done: bool = False
    elapsed: float = 0.0
    counters: Counters = field(default_factory=Counters)

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunState:
        counters = Counters(**data.get("counters", {}))
        return cls(
            source=data["source"],
            target=data["target"],
            to=data["to"],
            cursor=int(data["cursor"]),
            done=bool(data["done"]),
            elapsed=float(data.get("elapsed", 0.0)),
            counters=counters,
        )


def default_state_path(source_url: str, target_url: str | None, to: str) -> str:
    ident = f"{redact_url(source_url)}|{redact_url(target_url or source_url)}|{to}"
    digest = hashlib.sha256(ident.encode()).hexdigest()[:12]
    return os.path.join(".run", f"migrate-sessions.{digest}.json")


def save_state(path: str, state: RunState) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state.to_json(), f, indent=1)
    os.replace(tmp, path)


def load_state(path: str) -> RunState | None:
    try:
        with open(path, encoding="utf-8") as f:
            return RunState.from_json(json.load(f))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise MigrateError(
            f"state file {path} is unreadable ({exc}); delete it to start over"
        ) from exc


# --------------------------------------------------------------------------- run


@dataclass
class Options:
    to: Shape
    batch: int = 1000
    dry_run: bool = False
    samples: int = 3
    max_batches: int | None = None
    ttl_tolerance_ms: int = 1000
    progress: bool = False


@dataclass
class Result:
    state: RunState
    stopped: bool  # --max-batches reached before the end
    problems: list[str]  # malformed / verify mismatch lines (first REPORT_LIMIT)


def _connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=60, socket_connect_timeout=10)


def _key_id(key: bytes) -> str | None:
    try:
        return key[len(SESSION_PREFIX) :].decode("utf-8")
    except UnicodeDecodeError:
        return None


def scan_page(client: redis.Redis, cursor: int, count: int) -> tuple[int, list[bytes]]:
    """One ``SCAN`` call (keys as bytes: the clients here never decode responses)."""
    nxt, keys = client.scan(cursor, count=count)
    return int(nxt), cast(list[bytes], keys)


def server_version(client: redis.Redis) -> tuple[int, ...]:
    raw = str(client.info("server").get("redis_version", "0"))
    return tuple(int(p) for p in raw.split(".")[:2] if p.isdigit())


def _fmt_score(score: float) -> str:
    return repr(float(score))


class SessionMigrator:
    """One migration run over a source Redis (and optionally a different target)."""

    def __init__(
        self,
        source_url: str,
        target_url: str | None,
        opts: Options,
        out: TextIO | None = None,
        err: TextIO | None = None,
    ) -> None:
        self.source_url = source_url
        self.target_url = target_url if target_url and target_url != source_url else None
        self.opts = opts
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.src = _connect(source_url)
        self.dst = _connect(self.target_url) if self.target_url else None
        self.cas = self.src.register_script(_CAS_INPLACE)
        self.put = self.dst.register_script(_PUT_TARGET) if self.dst else None
        self.put_index = self.dst.register_script(_PUT_INDEX) if self.dst else None
        self.problems: list[str] = []
        self.samples_shown = 0
        self.absolute = (
            self.dst is not None
            and server_version(self.src) >= (7, 0)
            and server_version(self.dst) >= (7, 0)
        )

    def close(self) -> None:
        self.src.close()
        if self.dst is not None:
            self.dst.close()

    def new_state(self) -> RunState:
        return RunState(
            source=redact_url(self.source_url),
            target=redact_url(self.target_url or self.source_url),
            to=self.opts.to,
        )

    # ------------------------------------------------------------------ reporting

    def _problem(self, line: str) -> None:
        if len(self.problems) < REPORT_LIMIT:
            self.problems.append(line)
            self.err.write(line + "\n")

    def _sample(self, key: bytes, before: bytes, after: bytes) -> None:
        if not self.opts.dry_run or self.samples_shown >= self.opts.samples:
            return
        self.samples_shown += 1
        name = key.decode(errors="replace")
        self.out.write(f"sample {name}\n  before: {elide(before)}\n  after:  {elide(after)}\n")

    # ------------------------------------------------------------------ migrate

    def run(
        self,
        state: RunState,
        save: Callable[[RunState], None],
        stop_after: Callable[[], bool] | None = None,
    ) -> Result:
        c = state.counters
        started = time.monotonic()
        elapsed0 = state.elapsed
        progress = Progress(int(self.src.dbsize()), self.opts.progress, self.err)
        progress.base = c.scanned
        cursor = state.cursor
        batches_now = 0
        while True:
            cursor, keys = scan_page(self.src, cursor, self.opts.batch)
            self._batch(keys, c)
            c.batches += 1
            batches_now += 1
            state.cursor = int(cursor)
            state.done = state.cursor == 0
            state.elapsed = elapsed0 + time.monotonic() - started
            if not self.opts.dry_run:
                save(state)
            progress.update(c.scanned)
            if state.done:
                break
            if (self.opts.max_batches is not None and batches_now >= self.opts.max_batches) or (
                stop_after is not None and stop_after()
            ):
                progress.close(c.scanned)
                return Result(state, True, self.problems)
        progress.close(c.scanned)
        return Result(state, False, self.problems)

    def _batch(self, keys: list[bytes], c: Counters) -> None:
        c.scanned += len(keys)
        sessions = [k for k in keys if k.startswith(SESSION_PREFIX)]
        indexes = [k for k in keys if k.startswith(INDEX_PREFIX)] if self.dst is not None else []
        if not sessions and not indexes:
            return
        pipe = self.src.pipeline(transaction=False)
        for k in sessions:
            pipe.get(k)
            self._expiry(pipe, k)
        for k in indexes:
            pipe.zrange(k, 0, -1, withscores=True)
            self._expiry(pipe, k)
        read_at = time.monotonic()
        res = pipe.execute(raise_on_error=False)
        if sessions:
            self._sessions(sessions, res[: 2 * len(sessions)], read_at, c)
        if indexes:
            self._indexes(indexes, res[2 * len(sessions) :], read_at, c)

    def _sessions(self, keys: list[bytes], res: list[Any], read_at: float, c: Counters) -> None:
        writes: list[tuple[bytes, bytes, bytes, int]] = []  # key, old, new, ttl
        for i, key in enumerate(keys):
            raw, ttl = res[2 * i], res[2 * i + 1]
            if isinstance(raw, Exception) or isinstance(ttl, Exception):
                c.errors += 1
                self._problem(
                    f"error {key.decode(errors='replace')}: {raw if isinstance(raw, Exception) else ttl}"
                )
                continue
            if raw is None:
                c.expired += 1
                continue
            c.sessions += 1
            key_id = _key_id(key)
            outcome = (
                Malformed("key name is not UTF-8")
                if key_id is None
                else convert_record(key_id, raw, self.opts.to)
            )
            if isinstance(outcome, Malformed):
                c.malformed += 1
                self._problem(f"malformed {key.decode(errors='replace')}: {outcome.reason}")
                continue
            if isinstance(outcome, Already):
                c.already += 1
                if self.dst is not None:
                    writes.append((key, raw, raw, int(ttl)))
                continue
            c.converted += 1
            self._sample(key, raw, outcome.data)
            writes.append((key, raw, outcome.data, int(ttl)))
        if self.opts.dry_run or not writes:
            return
        if self.dst is None:
            self._write_inplace(writes, c)
        else:
            self._write_target(writes, read_at, c)

    def _write_inplace(self, writes: list[tuple[bytes, bytes, bytes, int]], c: Counters) -> None:
        pipe = self.src.pipeline(transaction=False)
        for key, old, new, _ttl in writes:
            self.cas(keys=[key], args=[old, new], client=pipe)
        for (key, _old, _new, _ttl), r in zip(
            writes, pipe.execute(raise_on_error=False), strict=True
        ):
            if isinstance(r, Exception):
                c.errors += 1
                c.converted -= 1
                self._problem(f"error {key.decode(errors='replace')}: {r}")
            elif r == -1:
                c.converted -= 1
                c.expired += 1
            elif r == 0:
                c.converted -= 1
                c.changed += 1
                self._problem(
                    f"changed meanwhile {key.decode(errors='replace')}: left as written by "
                    "its last writer (run again to convert it)"
                )

    def _expiry(self, pipe: Any, key: bytes) -> None:
        """Queue the read of ``key``'s expiry: absolute (PEXPIRETIME) or PTTL."""
        if self.absolute:
            pipe.pexpiretime(key)
        else:
            pipe.pttl(key)

    def _exp_arg(self, ttl: int, read_at: float) -> int | None:
        """The expiry to write for a value read at ``read_at`` (None: gone already)."""
        if ttl == -2:
            return None
        if ttl < 0 or self.absolute:
            return ttl
        left = ttl - int((time.monotonic() - read_at) * 1000)
        return left if left > 0 else None

    def _write_target(
        self, writes: list[tuple[bytes, bytes, bytes, int]], read_at: float, c: Counters
    ) -> None:
        assert self.dst is not None and self.put is not None
        pipe = self.dst.pipeline(transaction=False)
        sent: list[tuple[bytes, bool]] = []  # key, was converted
        absolute = "1" if self.absolute else "0"
        for key, old, new, ttl in writes:
            converted = old is not new
            exp = self._exp_arg(ttl, read_at)
            if exp is None:  # expired since the read: do not resurrect it
                c.expired += 1
                c.converted -= converted
                c.already -= not converted
                continue
            self.put(keys=[key], args=[new, exp, self.opts.ttl_tolerance_ms, absolute], client=pipe)
            sent.append((key, converted))
        for (key, converted), r in zip(sent, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(r, Exception):
                c.errors += 1
                c.converted -= converted
                c.already -= not converted
                self._problem(f"error {key.decode(errors='replace')}: {r}")
            elif r == -1:
                c.expired += 1
                c.converted -= converted
                c.already -= not converted
            elif r == 0:
                c.unchanged += 1
                c.converted -= converted
            elif not converted:
                c.copied += 1

    def _indexes(self, keys: list[bytes], res: list[Any], read_at: float, c: Counters) -> None:
        assert self.dst is not None and self.put_index is not None
        if self.opts.dry_run:
            c.index_keys += sum(1 for i in range(len(keys)) if res[2 * i])
            return
        pipe = self.dst.pipeline(transaction=False)
        sent: list[bytes] = []
        absolute = "1" if self.absolute else "0"
        for i, key in enumerate(keys):
            members, ttl = res[2 * i], res[2 * i + 1]
            if isinstance(members, Exception) or isinstance(ttl, Exception):
                c.errors += 1
                self._problem(f"error {key.decode(errors='replace')}: {members}")
                continue
            exp = self._exp_arg(int(ttl), read_at)
            if not members or exp is None:
                continue
            args: list[Any] = ["", exp, self.opts.ttl_tolerance_ms, absolute]
            for member, score in members:
                args += [_fmt_score(score), member]
            self.put_index(keys=[key], args=args, client=pipe)
            sent.append(key)
        for key, r in zip(sent, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(r, Exception):
                c.errors += 1
                self._problem(f"error {key.decode(errors='replace')}: {r}")
            elif r >= 0:
                c.index_keys += 1
                c.index_changed += int(r)

    # ------------------------------------------------------------------ verify

    def verify(self) -> tuple[Counters, int]:
        """Every source record vs its target: same wire session, target shape, TTL.

        In place the record is its own source: it must be readable and in the target
        shape. Returns the counters (``sessions``, ``malformed``, ``expired``) and the
        number of mismatches (each reported).
        """
        c = Counters()
        mismatches = 0
        tol = self.opts.ttl_tolerance_ms
        progress = Progress(int(self.src.dbsize()), self.opts.progress, self.err)
        cursor = 0
        while True:
            cursor, keys = scan_page(self.src, cursor, self.opts.batch)
            c.scanned += len(keys)
            c.batches += 1
            sessions = [k for k in keys if k.startswith(SESSION_PREFIX)]
            indexes = (
                [k for k in keys if k.startswith(INDEX_PREFIX)] if self.dst is not None else []
            )
            mismatches += self._verify_sessions(sessions, c, tol)
            mismatches += self._verify_indexes(indexes, c, tol)
            progress.update(c.scanned)
            if cursor == 0:
                break
        progress.close(c.scanned)
        return c, mismatches

    def _read(self, client: redis.Redis, keys: list[bytes], zset: bool = False) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for k in keys:
            if zset:
                pipe.zrange(k, 0, -1, withscores=True)
            else:
                pipe.get(k)
            pipe.pttl(k)
        return list(pipe.execute(raise_on_error=False))

    def _verify_sessions(self, keys: list[bytes], c: Counters, tol: int) -> int:
        if not keys:
            return 0
        src = self._read(self.src, keys)
        dst = self._read(self.dst, keys) if self.dst is not None else src
        bad = 0
        for i, key in enumerate(keys):
            name = key.decode(errors="replace")
            raw, ttl, traw, tttl = src[2 * i], src[2 * i + 1], dst[2 * i], dst[2 * i + 1]
            if raw is None:
                c.expired += 1
                continue
            c.sessions += 1
            key_id = _key_id(key)
            found = (
                Malformed("key name is not UTF-8")
                if key_id is None
                else inspect_record(key_id, raw)
            )
            if isinstance(found, Malformed):
                c.malformed += 1
                self._problem(f"malformed {name}: {found.reason} (left untouched)")
                continue
            assert key_id is not None
            why = None
            target: Malformed | Readable | None = found if self.dst is None else None
            if self.dst is not None and traw is not None:
                target = inspect_record(key_id, traw)
            if traw is None:
                why = "missing in the target"
            elif not isinstance(target, Readable) or target.shape != self.opts.to:
                why = f"not in the {self.opts.to} shape"
            elif target.session != found.session:
                why = "differs from its source (wire session)"
            elif (ttl < 0) != (tttl < 0) or (ttl >= 0 and abs(ttl - tttl) > tol):
                why = f"TTL {tttl} ms in the target, {ttl} ms in the source"
            if why:
                bad += 1
                self._problem(f"mismatch {name}: {why}")
        return bad

    def _verify_indexes(self, keys: list[bytes], c: Counters, tol: int) -> int:
        if not keys or self.dst is None:
            return 0
        src = self._read(self.src, keys, zset=True)
        dst = self._read(self.dst, keys, zset=True)
        bad = 0
        for i, key in enumerate(keys):
            members, ttl, tmembers, tttl = src[2 * i], src[2 * i + 1], dst[2 * i], dst[2 * i + 1]
            if not members or isinstance(members, Exception):
                continue
            c.index_keys += 1
            have = dict(tmembers) if isinstance(tmembers, list) else {}
            missing = [m for m, s in members if have.get(m) != s]
            why = None
            if missing:
                why = f"{len(missing)} of {len(members)} entries missing or re-scored"
            elif (ttl < 0) != (tttl < 0) or (ttl >= 0 and abs(ttl - tttl) > tol):
                why = f"TTL {tttl} ms in the target, {ttl} ms in the source"
            if why:
                bad += 1
                self._problem(f"mismatch {key.decode(errors='replace')}: {why}")
        return bad


# --------------------------------------------------------------------------- summary


def summary(state: RunState, opts: Options, target_differs: bool) -> str:
    c = state.counters
    rate = c.scanned / state.elapsed if state.elapsed > 0 else 0.0
    verb = "would convert" if opts.dry_run else "converted"
    lines = [
        f"scanned {c.scanned} keys in {c.batches} batches: {c.sessions} session records",
        f"  {verb} to {opts.to}: {c.converted}",
        f"  already in the {opts.to} shape: {c.already}",
    ]
    if target_differs:
        lines.append(
            f"  into the target: copied as is {c.copied}, target already identical "
            f"{c.unchanged}; user_sessions indexes {c.index_keys} "
            f"({c.index_changed} entries added or re-scored)"
        )
    lines += [
        f"  skipped malformed: {c.malformed}",
        f"  expired meanwhile: {c.expired}",
        f"  changed meanwhile (left alone): {c.changed}",
        f"  errors: {c.errors}",
        f"elapsed {state.elapsed:.1f} s, {rate:,.0f} keys/s",
    ]
    if not opts.dry_run and c.converted == 0 and c.copied == 0 and c.errors == 0:
        lines.append(f"nothing to change: every readable record is already in the {opts.to} shape")
    return "\n".join(lines)
