"""The key-value store the modules share with the legacy services: Redis, or in process.

Two implementations of one small async facade, with the same semantics (tests run one
suite against both):

- :class:`RedisStore`: ``redis.asyncio`` on one connection pool per process and event
  loop, shared by every module (``open_store``) and closed with the last one;
- :class:`MemoryStore`: dictionaries with Redis's rules (TTLs, empty keys vanish, index
  arithmetic, ordering), for a gateway with no Redis (single process only).

Values are ``str`` (UTF-8 on the wire). Commands: ``get/mget/set(ex|px)/delete/exists,
expire/pexpire/pttl, zadd/zrem/zrange/zrevrange(+_withscores)/zscore,
rpush/lrange/ltrim/llen, publish`` and, for atomic groups, :meth:`Store.transaction`
(``MULTI``/``EXEC``)::

    async with open_store(settings.redis_url) as store:
        tx = store.transaction()
        tx.set("session:1", "{}", ex=86400)
        tx.zadd("user_sessions:u-1", {"1": 1704103200000})
        tx.expire("user_sessions:u-1", 86400)
        await tx.execute()                    # -> [True, 1, True]

Pub/sub (the WebSocket hub; channels are shared by every Redis database number)::

    sub = store.subscription()
    await sub.subscribe("chat:session:abc")    # returns once the subscription is in place
    async for channel, data in sub: ...
    await sub.aclose()
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError


class StoreError(Exception):
    """A store command failed (connection lost, wrong type of key...)."""


# --------------------------------------------------------------------------- facade


class Transaction(Protocol):
    """Commands queued and run atomically by :meth:`execute` (results in order)."""

    def set(
        self, key: str, value: str, *, ex: int | None = None, px: int | None = None
    ) -> None: ...

    def delete(self, *keys: str) -> None: ...
    def expire(self, key: str, seconds: int) -> None: ...
    def pexpire(self, key: str, ms: int) -> None: ...
    def zadd(self, key: str, mapping: Mapping[str, float]) -> None: ...
    def zrem(self, key: str, *members: str) -> None: ...
    def rpush(self, key: str, *values: str) -> None: ...
    def ltrim(self, key: str, start: int, stop: int) -> None: ...
    async def execute(self) -> list[Any]: ...


class Subscription(Protocol):
    """A pub/sub listener: ``(channel, data)`` pairs for the subscribed channels."""

    async def subscribe(self, *channels: str) -> None: ...
    async def unsubscribe(self, *channels: str) -> None: ...
    def __aiter__(self) -> AsyncIterator[tuple[str, str]]: ...
    async def aclose(self) -> None: ...


class Store(Protocol):
    """The async key-value facade (see the module docstring)."""

    async def get(self, key: str) -> str | None: ...
    async def mget(self, keys: list[str]) -> list[str | None]: ...
    async def set(
        self, key: str, value: str, *, ex: int | None = None, px: int | None = None
    ) -> bool: ...
    async def delete(self, *keys: str) -> int: ...
    async def exists(self, key: str) -> bool: ...
    async def expire(self, key: str, seconds: int) -> bool: ...
    async def pexpire(self, key: str, ms: int) -> bool: ...
    async def pttl(self, key: str) -> int: ...
    async def zadd(self, key: str, mapping: Mapping[str, float]) -> int: ...
    async def zrem(self, key: str, *members: str) -> int: ...
    async def zscore(self, key: str, member: str) -> float | None: ...
    async def zrange(self, key: str, start: int, stop: int) -> list[str]: ...
    async def zrevrange(self, key: str, start: int, stop: int) -> list[str]: ...
    async def zrange_withscores(
        self, key: str, start: int, stop: int
    ) -> list[tuple[str, float]]: ...
    async def zrevrange_withscores(
        self, key: str, start: int, stop: int
    ) -> list[tuple[str, float]]: ...
    async def rpush(self, key: str, *values: str) -> int: ...
    async def lrange(self, key: str, start: int, stop: int) -> list[str]: ...
    async def ltrim(self, key: str, start: int, stop: int) -> bool: ...
    async def llen(self, key: str) -> int: ...
    async def publish(self, channel: str, message: str) -> int: ...
    def transaction(self) -> Transaction: ...
    def subscription(self) -> Subscription: ...
    async def ping(self) -> bool: ...
    async def aclose(self) -> None: ...


def _slice(n: int, start: int, stop: int) -> tuple[int, int]:
    """Redis LRANGE/ZRANGE/LTRIM index arithmetic -> Python ``[a:b]`` bounds."""
    if start < 0:
        start = max(n + start, 0)
    if stop < 0:
        stop = n + stop
    stop = min(stop, n - 1)
    if start > stop:
        return 0, 0
    return start, stop + 1


# --------------------------------------------------------------------------- in process


class _Entry:
    __slots__ = ("deadline", "value")

    def __init__(self, value: Any, deadline: float | None = None) -> None:
        self.value = value  # str | list[str] | dict[str, float]
        self.deadline = deadline


class MemoryStore:
    """Redis semantics in one process (asyncio: every command is atomic)."""

    def __init__(self) -> None:
        self._data: dict[str, _Entry] = {}
        self._subs: dict[str, set[_MemorySubscription]] = {}

    # ---- internals
    def _live(self, key: str) -> _Entry | None:
        entry = self._data.get(key)
        if entry is not None and entry.deadline is not None and entry.deadline <= time.monotonic():
            del self._data[key]
            return None
        return entry

    def _typed(self, key: str, kind: type) -> _Entry | None:
        entry = self._live(key)
        if entry is not None and not isinstance(entry.value, kind):
            raise StoreError("WRONGTYPE Operation against a key holding the wrong kind of value")
        return entry

    def _drop_if_empty(self, key: str, entry: _Entry) -> None:
        if not entry.value:
            self._data.pop(key, None)

    # ---- strings
    async def get(self, key: str) -> str | None:
        return self._get(key)

    def _get(self, key: str) -> str | None:
        entry = self._typed(key, str)
        return None if entry is None else str(entry.value)

    async def mget(self, keys: list[str]) -> list[str | None]:
        out: list[str | None] = []
        for k in keys:
            entry = self._live(k)
            out.append(entry.value if entry is not None and isinstance(entry.value, str) else None)
        return out

    async def set(
        self, key: str, value: str, *, ex: int | None = None, px: int | None = None
    ) -> bool:
        return self._set(key, value, ex=ex, px=px)

    def _set(self, key: str, value: str, *, ex: int | None = None, px: int | None = None) -> bool:
        ms = px if px is not None else (ex * 1000 if ex is not None else None)
        deadline = None if ms is None else time.monotonic() + ms / 1000
        self._data[key] = _Entry(value, deadline)
        return True

    async def delete(self, *keys: str) -> int:
        return self._delete(*keys)

    def _delete(self, *keys: str) -> int:
        n = 0
        for k in keys:
            if self._live(k) is not None:
                del self._data[k]
                n += 1
        return n

    async def exists(self, key: str) -> bool:
        return self._live(key) is not None

    # ---- TTLs
    async def expire(self, key: str, seconds: int) -> bool:
        return self._pexpire(key, seconds * 1000)

    async def pexpire(self, key: str, ms: int) -> bool:
        return self._pexpire(key, ms)

    def _pexpire(self, key: str, ms: int) -> bool:
        entry = self._live(key)
        if entry is None:
            return False
        if ms <= 0:
            del self._data[key]
        else:
            entry.deadline = time.monotonic() + ms / 1000
        return True

    async def pttl(self, key: str) -> int:
        entry = self._live(key)
        if entry is None:
            return -2
        if entry.deadline is None:
            return -1
        return max(0, round((entry.deadline - time.monotonic()) * 1000))

    # ---- sorted sets
    async def zadd(self, key: str, mapping: Mapping[str, float]) -> int:
        return self._zadd(key, mapping)

    def _zadd(self, key: str, mapping: Mapping[str, float]) -> int:
        entry = self._typed(key, dict)
        if entry is None:
            entry = self._data[key] = _Entry({})
        added = sum(1 for m in mapping if m not in entry.value)
        entry.value.update({m: float(s) for m, s in mapping.items()})
        return added

    async def zrem(self, key: str, *members: str) -> int:
        return self._zrem(key, *members)

    def _zrem(self, key: str, *members: str) -> int:
        entry = self._typed(key, dict)
        if entry is None:
            return 0
        n = sum(1 for m in members if entry.value.pop(m, None) is not None)
        self._drop_if_empty(key, entry)
        return n

    async def zscore(self, key: str, member: str) -> float | None:
        entry = self._typed(key, dict)
        return None if entry is None else entry.value.get(member)

    def _zsorted(self, key: str, reverse: bool) -> list[tuple[str, float]]:
        entry = self._typed(key, dict)
        if entry is None:
            return []
        # Redis orders equal scores by member bytes (lexicographic).
        items = sorted(entry.value.items(), key=lambda kv: (kv[1], kv[0].encode()))
        return items[::-1] if reverse else items

    async def zrange_withscores(self, key: str, start: int, stop: int) -> list[tuple[str, float]]:
        items = self._zsorted(key, False)
        a, b = _slice(len(items), start, stop)
        return items[a:b]

    async def zrevrange_withscores(
        self, key: str, start: int, stop: int
    ) -> list[tuple[str, float]]:
        items = self._zsorted(key, True)
        a, b = _slice(len(items), start, stop)
        return items[a:b]

    async def zrange(self, key: str, start: int, stop: int) -> list[str]:
        return [m for m, _ in await self.zrange_withscores(key, start, stop)]

    async def zrevrange(self, key: str, start: int, stop: int) -> list[str]:
        return [m for m, _ in await self.zrevrange_withscores(key, start, stop)]

    # ---- lists
    async def rpush(self, key: str, *values: str) -> int:
        return self._rpush(key, *values)

    def _rpush(self, key: str, *values: str) -> int:
        entry = self._typed(key, list)
        if entry is None:
            entry = self._data[key] = _Entry([])
        entry.value.extend(values)
        return len(entry.value)

    async def lrange(self, key: str, start: int, stop: int) -> list[str]:
        entry = self._typed(key, list)
        if entry is None:
            return []
        a, b = _slice(len(entry.value), start, stop)
        return list(entry.value[a:b])

    async def ltrim(self, key: str, start: int, stop: int) -> bool:
        return self._ltrim(key, start, stop)

    def _ltrim(self, key: str, start: int, stop: int) -> bool:
        entry = self._typed(key, list)
        if entry is None:
            return True
        a, b = _slice(len(entry.value), start, stop)
        entry.value[:] = entry.value[a:b]
        self._drop_if_empty(key, entry)
        return True

    async def llen(self, key: str) -> int:
        entry = self._typed(key, list)
        return 0 if entry is None else len(entry.value)

    # ---- groups, pub/sub, lifecycle
    def transaction(self) -> Transaction:
        return _MemoryTransaction(self)

    async def publish(self, channel: str, message: str) -> int:
        subs = list(self._subs.get(channel, ()))
        for sub in subs:
            sub.queue.put_nowait((channel, message))
        return len(subs)

    def subscription(self) -> Subscription:
        return _MemorySubscription(self)

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        self._data.clear()


class _MemoryTransaction:
    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._ops: list[Any] = []

    def set(self, key: str, value: str, *, ex: int | None = None, px: int | None = None) -> None:
        self._ops.append(lambda s: s._set(key, value, ex=ex, px=px))

    def delete(self, *keys: str) -> None:
        self._ops.append(lambda s: s._delete(*keys))

    def expire(self, key: str, seconds: int) -> None:
        self._ops.append(lambda s: s._pexpire(key, seconds * 1000))

    def pexpire(self, key: str, ms: int) -> None:
        self._ops.append(lambda s: s._pexpire(key, ms))

    def zadd(self, key: str, mapping: Mapping[str, float]) -> None:
        self._ops.append(lambda s: s._zadd(key, dict(mapping)))

    def zrem(self, key: str, *members: str) -> None:
        self._ops.append(lambda s: s._zrem(key, *members))

    def rpush(self, key: str, *values: str) -> None:
        self._ops.append(lambda s: s._rpush(key, *values))

    def ltrim(self, key: str, start: int, stop: int) -> None:
        self._ops.append(lambda s: s._ltrim(key, start, stop))

    async def execute(self) -> list[Any]:
        # No await between the commands: atomic under asyncio, like MULTI/EXEC.
        ops, self._ops = self._ops, []
        return [op(self._store) for op in ops]


class _MemorySubscription:
    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.queue: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue()
        self._channels: set[str] = set()

    async def subscribe(self, *channels: str) -> None:
        for ch in channels:
            self._store._subs.setdefault(ch, set()).add(self)
            self._channels.add(ch)

    async def unsubscribe(self, *channels: str) -> None:
        for ch in channels:
            subs = self._store._subs.get(ch)
            if subs is not None:
                subs.discard(self)
                if not subs:
                    del self._store._subs[ch]
            self._channels.discard(ch)

    async def __aiter__(self) -> AsyncIterator[tuple[str, str]]:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            yield item

    async def aclose(self) -> None:
        await self.unsubscribe(*list(self._channels))
        self.queue.put_nowait(None)


# --------------------------------------------------------------------------- Redis


def _wrap(exc: RedisError) -> StoreError:
    return StoreError(f"{type(exc).__name__}: {exc}")


class RedisStore:
    """The facade on ``redis.asyncio`` (``decode_responses``: values are ``str``)."""

    def __init__(self, url: str, *, max_connections: int = 64) -> None:
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            max_connections=max_connections,
            socket_connect_timeout=5,
            health_check_interval=30,
        )

    async def _do(self, name: str, *args: Any, **kw: Any) -> Any:
        try:
            return await getattr(self.client, name)(*args, **kw)
        except RedisError as exc:
            raise _wrap(exc) from exc

    async def get(self, key: str) -> str | None:
        # (the client directly, not through _do: one coroutine frame less on every session
        # read, which each resume of the request passes through)
        try:
            return await self.client.get(key)  # type: ignore[return-value]  # (decode_responses)
        except RedisError as exc:
            raise _wrap(exc) from exc

    async def mget(self, keys: list[str]) -> list[str | None]:
        if not keys:
            return []
        return list(await self._do("mget", keys))

    async def set(
        self, key: str, value: str, *, ex: int | None = None, px: int | None = None
    ) -> bool:
        return bool(await self._do("set", key, value, ex=ex, px=px))

    async def delete(self, *keys: str) -> int:
        return int(await self._do("delete", *keys)) if keys else 0

    async def exists(self, key: str) -> bool:
        return bool(await self._do("exists", key))

    async def expire(self, key: str, seconds: int) -> bool:
        return bool(await self._do("expire", key, seconds))

    async def pexpire(self, key: str, ms: int) -> bool:
        return bool(await self._do("pexpire", key, ms))

    async def pttl(self, key: str) -> int:
        return int(await self._do("pttl", key))

    async def zadd(self, key: str, mapping: Mapping[str, float]) -> int:
        return int(await self._do("zadd", key, dict(mapping)))

    async def zrem(self, key: str, *members: str) -> int:
        return int(await self._do("zrem", key, *members)) if members else 0

    async def zscore(self, key: str, member: str) -> float | None:
        score = await self._do("zscore", key, member)
        return None if score is None else float(score)

    async def zrange(self, key: str, start: int, stop: int) -> list[str]:
        return list(await self._do("zrange", key, start, stop))

    async def zrevrange(self, key: str, start: int, stop: int) -> list[str]:
        return list(await self._do("zrevrange", key, start, stop))

    async def zrange_withscores(self, key: str, start: int, stop: int) -> list[tuple[str, float]]:
        rows = await self._do("zrange", key, start, stop, withscores=True)
        return [(m, float(s)) for m, s in rows]

    async def zrevrange_withscores(
        self, key: str, start: int, stop: int
    ) -> list[tuple[str, float]]:
        rows = await self._do("zrevrange", key, start, stop, withscores=True)
        return [(m, float(s)) for m, s in rows]

    async def rpush(self, key: str, *values: str) -> int:
        return int(await self._do("rpush", key, *values))

    async def lrange(self, key: str, start: int, stop: int) -> list[str]:
        return list(await self._do("lrange", key, start, stop))

    async def ltrim(self, key: str, start: int, stop: int) -> bool:
        return bool(await self._do("ltrim", key, start, stop))

    async def llen(self, key: str) -> int:
        return int(await self._do("llen", key))

    async def publish(self, channel: str, message: str) -> int:
        return int(await self._do("publish", channel, message))

    def transaction(self) -> Transaction:
        return _RedisTransaction(self.client)

    def subscription(self) -> Subscription:
        return _RedisSubscription(self.client)

    async def ping(self) -> bool:
        return bool(await self._do("ping"))

    async def aclose(self) -> None:
        await self.client.aclose()


class _RedisTransaction:
    def __init__(self, client: aioredis.Redis) -> None:
        self._pipe = client.pipeline(transaction=True)

    def set(self, key: str, value: str, *, ex: int | None = None, px: int | None = None) -> None:
        self._pipe.set(key, value, ex=ex, px=px)

    def delete(self, *keys: str) -> None:
        self._pipe.delete(*keys)

    def expire(self, key: str, seconds: int) -> None:
        self._pipe.expire(key, seconds)

    def pexpire(self, key: str, ms: int) -> None:
        self._pipe.pexpire(key, ms)

    def zadd(self, key: str, mapping: Mapping[str, float]) -> None:
        self._pipe.zadd(key, dict(mapping))

    def zrem(self, key: str, *members: str) -> None:
        self._pipe.zrem(key, *members)

    def rpush(self, key: str, *values: str) -> None:
        self._pipe.rpush(key, *values)

    def ltrim(self, key: str, start: int, stop: int) -> None:
        self._pipe.ltrim(key, start, stop)

    async def execute(self) -> list[Any]:
        try:
            async with self._pipe as pipe:
                return list(await pipe.execute())
        except RedisError as exc:
            raise _wrap(exc) from exc


class _RedisSubscription:
    """One pub/sub connection; a reader task routes confirmations and messages."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._pubsub = client.pubsub()
        self._queue: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue()
        self._pending: dict[str, list[asyncio.Future[None]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._closed = False

    async def subscribe(self, *channels: str) -> None:
        loop = asyncio.get_running_loop()
        waits = []
        for ch in channels:
            fut: asyncio.Future[None] = loop.create_future()
            self._pending.setdefault(ch, []).append(fut)
            waits.append(fut)
        try:
            await self._pubsub.subscribe(*channels)
        except RedisError as exc:
            raise _wrap(exc) from exc
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read())
        await asyncio.wait_for(asyncio.gather(*waits), timeout=10)

    async def unsubscribe(self, *channels: str) -> None:
        try:
            await self._pubsub.unsubscribe(*channels)
        except RedisError as exc:
            raise _wrap(exc) from exc

    async def _read(self) -> None:
        try:
            while not self._closed:
                msg = await self._pubsub.get_message(timeout=1.0)
                if msg is None:
                    continue
                kind, channel = msg["type"], msg["channel"]
                if kind == "subscribe":
                    for fut in self._pending.pop(channel, []):
                        if not fut.done():
                            fut.set_result(None)
                elif kind == "message":
                    self._queue.put_nowait((channel, msg["data"]))
        except (RedisError, OSError) as exc:
            for futs in self._pending.values():
                for fut in futs:
                    if not fut.done():
                        fut.set_exception(_wrap(exc) if isinstance(exc, RedisError) else exc)
            self._queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[tuple[str, str]]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item

    async def aclose(self) -> None:
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await self._reader
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.aclose()
        self._queue.put_nowait(None)


# --------------------------------------------------------------------------- sharing

_shared: dict[tuple[str | None, int], tuple[RedisStore | MemoryStore, int]] = {}


@contextlib.asynccontextmanager
async def open_store(redis_url: str | None) -> AsyncIterator[Store]:
    """The process's store for ``redis_url`` (``None``: in process), shared and refcounted.

    Every module's lifespan enters this; the first creates the pool (or memory store),
    the last to leave closes it. Keyed by event loop too: a pool never crosses loops.
    """
    key = (redis_url, id(asyncio.get_running_loop()))
    store, count = _shared.get(key, (None, 0))
    if store is None:
        store = RedisStore(redis_url) if redis_url else MemoryStore()
    _shared[key] = (store, count + 1)
    try:
        yield store
    finally:
        store, count = _shared[key]
        if count <= 1:
            del _shared[key]
            await store.aclose()
        else:
            _shared[key] = (store, count - 1)
