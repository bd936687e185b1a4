"""Where live weights, ramps and the audit trail are kept: Redis for a fleet, a file alone.

routes.yaml holds each route's default share; a *live override* (basis points, 0..10 000)
replaces it until it is reset. Every write is one :class:`Change` committed atomically
with an integer ``version`` bumped by one, so a replica that holds version *n* holds
exactly the state of version *n*. Replicas learn of a new version from the ``control``
channel and, for messages they missed, from a periodic reconcile (:mod:`.controller`).

Redis layout (prefix ``CHATGW_CONTROL_PREFIX``, default ``chatgw:``)::

    chatgw:version   INCR'd by every change                          (string, integer)
    chatgw:weights   route -> basis points                            (hash)
    chatgw:ramps     route -> ramp as JSON                            (hash)
    chatgw:audit     append-only trail, XADD MAXLEN ~ 10000           (stream)
    chatgw:control   channel; the message is the new version          (pub/sub)

Without Redis, :class:`LocalWeightStore` keeps ``control.json`` (written to a temporary
file and renamed, under an ``flock``) and ``audit.jsonl`` in ``CHATGW_STATE_DIR``
(default ``.run/``); replicas on one host sharing that directory reconcile from it.

Every store failure is raised as :class:`~gateway.errors.StoreUnavailable` with a message
an operator can act on; nothing is half-written.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from ..errors import StoreUnavailable

Source = Literal["api", "cli", "dashboard", "guard", "ramp", "reload"]
SOURCES: tuple[str, ...] = ("api", "cli", "dashboard", "guard", "ramp", "reload")
AUDIT_MAXLEN = 10_000


@dataclass(frozen=True)
class Ramp:
    """A staged ramp of one route, owned (run) by the replica named ``owner``."""

    route: str
    steps: tuple[int, ...]  # basis points, applied in order
    every: float  # seconds between two steps
    owner: str
    who: str
    reason: str
    started_at: float
    index: int = -1  # the step last applied (-1: none yet)
    state: Literal["running", "halted"] = "running"
    note: str = ""  # why it halted

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "steps": list(self.steps)})

    @classmethod
    def from_json(cls, text: str | bytes) -> Ramp:
        raw = json.loads(text)
        return cls(**{**raw, "steps": tuple(raw["steps"])})

    def view(self) -> dict[str, Any]:
        return {
            "steps": [b / 100 for b in self.steps],
            "every_seconds": self.every,
            "step": self.index,
            "state": self.state,
            "owner": self.owner,
            "who": self.who,
            "reason": self.reason,
            "started_at": self.started_at,
            "note": self.note,
        }


@dataclass(frozen=True)
class Snapshot:
    """The whole live state at one version."""

    version: int = 0
    weights: Mapping[str, int] = field(default_factory=dict)
    ramps: Mapping[str, Ramp] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditEntry:
    """One change: who did what to which route, from and to which percentage, and why.

    ``action``: set, rollback, reset, ramp-start, ramp-step, ramp-stop, ramp-halt,
    ramp-done, reload, reload-refused. ``route`` is ``*`` for config reloads.
    """

    who: str
    source: str
    action: str
    route: str
    from_percent: float | None
    to_percent: float | None
    reason: str
    ts: float = field(default_factory=time.time)
    detail: str = ""
    id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Change:
    """One atomic write: overrides to set (None deletes), ramps to set (None deletes),
    and the audit entries describing it.

    ``if_ramp`` is a precondition ``(route, started_at)``: the change is stored only if that
    ramp is still recorded, else :class:`RampGone` — a ramp step never resurrects a ramp
    that another replica stopped meanwhile.
    """

    weights: Mapping[str, int | None] = field(default_factory=dict)
    ramps: Mapping[str, Ramp | None] = field(default_factory=dict)
    audit: Sequence[AuditEntry] = ()
    if_ramp: tuple[str, float] | None = None


class RampGone(Exception):
    """The ramp a change was conditional on is no longer recorded (stopped, replaced)."""


class WeightStore(Protocol):
    kind: str
    where: str

    async def version(self) -> int: ...

    async def snapshot(self) -> Snapshot: ...

    async def commit(self, change: Change) -> int:
        """Apply ``change`` atomically, bump and announce the version; return it."""
        ...

    async def record(self, entry: AuditEntry) -> None:
        """Append an audit entry that changes no weight (config reloads)."""
        ...

    async def audit(self, limit: int = 100, route: str | None = None) -> list[AuditEntry]:
        """The latest entries, newest first."""
        ...

    def watch(self) -> AsyncIterator[int]:
        """Versions announced by any replica; raises StoreUnavailable when cut off."""
        ...

    async def close(self) -> None: ...


def redact(url: str) -> str:
    """``url`` without its password (store errors are logged and shown by the API)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# --------------------------------------------------------------------------- Redis


class RedisWeightStore:
    """The fleet's store. ``socket_timeout`` bounds how long a write waits on a dead Redis."""

    kind = "redis"

    def __init__(self, url: str, prefix: str = "chatgw:", *, timeout: float = 1.0) -> None:
        self.where = redact(url)
        self.prefix = prefix
        self.channel = prefix + "control"
        opts: dict[str, Any] = {
            "socket_connect_timeout": timeout,
            "health_check_interval": 0,
            "retry_on_timeout": False,
        }
        # Any: redis-py's return types union sync and async answers.
        self._redis: Any = aioredis.Redis.from_url(url, socket_timeout=timeout, **opts)
        # The subscriber waits on its socket for as long as nothing is published.
        self._sub_redis: Any = aioredis.Redis.from_url(url, socket_timeout=None, **opts)
        self._k_version = prefix + "version"
        self._k_weights = prefix + "weights"
        self._k_ramps = prefix + "ramps"
        self._k_audit = prefix + "audit"

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(
                f"weight store unreachable (Redis at {self.where}) while {doing}: "
                f"{type(exc).__name__}: {exc}"
            ) from None

    async def version(self) -> int:
        with self._errors("reading the version"):
            raw = await self._redis.get(self._k_version)
        return int(raw or 0)

    async def snapshot(self) -> Snapshot:
        with self._errors("reading the live weights"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.get(self._k_version).hgetall(self._k_weights).hgetall(self._k_ramps)
                version, weights, ramps = await pipe.execute()
        return Snapshot(
            int(version or 0),
            {k.decode(): int(v) for k, v in weights.items()},
            {k.decode(): Ramp.from_json(v) for k, v in ramps.items()},
        )

    async def commit(self, change: Change) -> int:
        with self._errors("storing a change (refused, nothing was changed)"):
            for _ in range(20):
                try:
                    version = await self._commit(change)
                    break
                except WatchError:
                    continue  # the ramps hash moved under us: check again
            else:
                raise RampGone(change.if_ramp)
        with contextlib.suppress(RedisError, OSError):
            # Stored already; a lost announcement is caught by every replica's reconcile.
            await self._redis.publish(self.channel, str(version))
        return version

    async def _commit(self, change: Change) -> int:
        async with self._redis.pipeline(transaction=True) as pipe:
            if change.if_ramp is not None:
                route, started_at = change.if_ramp
                await pipe.watch(self._k_ramps)
                raw = await pipe.hget(self._k_ramps, route)
                if raw is None or Ramp.from_json(raw).started_at != started_at:
                    raise RampGone(route)
                pipe.multi()
            for route, basis in change.weights.items():
                if basis is None:
                    pipe.hdel(self._k_weights, route)
                else:
                    pipe.hset(self._k_weights, route, basis)
            for route, ramp in change.ramps.items():
                if ramp is None:
                    pipe.hdel(self._k_ramps, route)
                else:
                    pipe.hset(self._k_ramps, route, ramp.to_json())
            for entry in change.audit:
                self._xadd(pipe, entry)
            pipe.incr(self._k_version)
            results = await pipe.execute()
            return int(results[-1])

    def _xadd(self, pipe: Any, entry: AuditEntry) -> None:
        fields = {k: json.dumps(v) for k, v in entry.to_dict().items() if k != "id"}
        pipe.xadd(self._k_audit, fields, maxlen=AUDIT_MAXLEN, approximate=True)

    async def record(self, entry: AuditEntry) -> None:
        with self._errors("appending to the audit trail"):
            async with self._redis.pipeline(transaction=False) as pipe:
                self._xadd(pipe, entry)
                await pipe.execute()

    async def audit(self, limit: int = 100, route: str | None = None) -> list[AuditEntry]:
        out: list[AuditEntry] = []
        last = "+"
        with self._errors("reading the audit trail"):
            while len(out) < limit:
                batch = await self._redis.xrevrange(self._k_audit, max=last, count=500)
                for sid, fields in batch:
                    raw = {k.decode(): json.loads(v) for k, v in fields.items()}
                    entry = AuditEntry(**raw, id=sid.decode())
                    if route is None or entry.route in (route, "*"):
                        out.append(entry)
                if len(batch) < 500:
                    break
                last = "(" + batch[-1][0].decode()
        return out[:limit]

    async def watch(self) -> AsyncIterator[int]:
        pubsub = self._sub_redis.pubsub(ignore_subscribe_messages=True)
        try:
            with self._errors("listening for changes"):
                await pubsub.subscribe(self.channel)
                while True:
                    msg = await pubsub.get_message(timeout=None)
                    if msg is not None and msg["type"] == "message":
                        with contextlib.suppress(ValueError):
                            yield int(msg["data"])
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    async def close(self) -> None:
        await self._redis.aclose()
        await self._sub_redis.aclose()


# --------------------------------------------------------------------------- local file


class LocalWeightStore:
    """One host's store: ``control.json`` + ``audit.jsonl`` in ``state_dir``."""

    kind = "local"

    def __init__(self, state_dir: str) -> None:
        self.dir = state_dir
        self.where = os.path.abspath(state_dir)
        self._state = os.path.join(state_dir, "control.json")
        self._audit = os.path.join(state_dir, "audit.jsonl")
        self._lock = os.path.join(state_dir, "control.lock")

    @contextlib.contextmanager
    def _locked(self, doing: str) -> Iterator[None]:
        try:
            os.makedirs(self.dir, exist_ok=True)
            with open(self._lock, "a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
        except OSError as exc:
            raise StoreUnavailable(
                f"weight store {self.where} unusable while {doing}: {exc.strerror or exc}"
            ) from None

    def _read(self) -> Snapshot:
        try:
            with open(self._state, encoding="utf-8") as fh:
                raw = json.load(fh)
        except FileNotFoundError:
            return Snapshot()
        except ValueError as exc:
            raise OSError(f"{self._state} is not valid JSON: {exc}") from None
        return Snapshot(
            int(raw.get("version", 0)),
            {k: int(v) for k, v in raw.get("weights", {}).items()},
            {k: Ramp.from_json(json.dumps(v)) for k, v in raw.get("ramps", {}).items()},
        )

    async def version(self) -> int:
        return (await self.snapshot()).version

    async def snapshot(self) -> Snapshot:
        try:
            return await asyncio.to_thread(self._read)
        except OSError as exc:
            raise StoreUnavailable(f"weight store {self.where} unreadable: {exc}") from None

    async def commit(self, change: Change) -> int:
        return await asyncio.to_thread(self._commit, change)

    def _commit(self, change: Change) -> int:
        with self._locked("storing a change (refused, nothing was changed)"):
            snap = self._read()
            if change.if_ramp is not None:
                route, started_at = change.if_ramp
                rec = snap.ramps.get(route)
                if rec is None or rec.started_at != started_at:
                    raise RampGone(route)
            weights = dict(snap.weights)
            ramps = dict(snap.ramps)
            for route, basis in change.weights.items():
                if basis is None:
                    weights.pop(route, None)
                else:
                    weights[route] = basis
            for route, ramp in change.ramps.items():
                if ramp is None:
                    ramps.pop(route, None)
                else:
                    ramps[route] = ramp
            version = snap.version + 1
            body = {
                "version": version,
                "weights": weights,
                "ramps": {k: json.loads(r.to_json()) for k, r in ramps.items()},
            }
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".control-", suffix=".json")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump(body, fh, indent=1, sort_keys=True)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self._state)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            self._append(change.audit)
        return version

    def _append(self, entries: Sequence[AuditEntry]) -> None:
        if not entries:
            return
        with open(self._audit, "a", encoding="utf-8") as fh:
            for entry in entries:
                fh.write(json.dumps(entry.to_dict(), sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    async def record(self, entry: AuditEntry) -> None:
        def append() -> None:
            with self._locked("appending to the audit trail"):
                self._append([entry])

        await asyncio.to_thread(append)

    async def audit(self, limit: int = 100, route: str | None = None) -> list[AuditEntry]:
        return await asyncio.to_thread(self._read_audit, limit, route)

    def _read_audit(self, limit: int, route: str | None) -> list[AuditEntry]:
        try:
            with open(self._audit, encoding="utf-8") as fh:
                lines = fh.readlines()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreUnavailable(f"audit trail {self._audit} unreadable: {exc}") from None
        out: list[AuditEntry] = []
        for n in range(len(lines), 0, -1):
            try:
                raw = json.loads(lines[n - 1])
            except ValueError:
                continue  # a torn last line after a crash
            entry = replace(AuditEntry(**{**raw, "id": ""}), id=str(n))
            if route is None or entry.route in (route, "*"):
                out.append(entry)
                if len(out) >= limit:
                    break
        return out

    async def watch(self) -> AsyncIterator[int]:
        # No channel: replicas sharing the directory catch changes by reconciling.
        await asyncio.Event().wait()
        yield 0  # pragma: no cover - unreachable

    async def close(self) -> None:
        return None


def store_from_env(env: Mapping[str, str]) -> WeightStore:
    """Redis from ``CHATGW_REDIS_URL`` (else ``REDIS_URL``); without either, a local store."""
    url = env.get("CHATGW_REDIS_URL") or env.get("REDIS_URL")
    if url:
        return RedisWeightStore(url, env.get("CHATGW_CONTROL_PREFIX") or "chatgw:")
    return LocalWeightStore(env.get("CHATGW_STATE_DIR") or ".run")
