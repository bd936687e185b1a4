"""The WebSocket hub: delivery to every socket joined to a session, on every instance.

Frames travel on the contract's channel ``chat:session:{sessionId}`` as
``{"frame": <frame>, "exclude": <socket id>|null}`` (legacy-api.md §4 "Several
instances"), so legacy chat-core instances, this module and other gateway replicas are
peers. One subscriber connection per process multiplexes every channel: a channel is
subscribed when the first local socket joins its session (:meth:`Hub.join` returns once
the subscription is in place, so ``joined`` is sent after it) and unsubscribed when the
last one leaves. Subscribe/unsubscribe of one channel are queued in order.

Subscribers:

- with Redis, :class:`_RedisSubscriber` (its own connection, raw bytes decoded with
  U+FFFD replacement like Node; the shared ``modules.common.store`` subscription decodes
  strictly and its reader dies on a non-UTF-8 publication, which the contract suite
  publishes on purpose); if the connection breaks, it reconnects and resubscribes;
- without Redis, the in-process store's subscription (single process).

Example::

    hub = Hub(store, redis_url)
    await hub.start()
    await hub.join(member, sid)           # member.id, member.joined, member.deliver(text)
    await hub.publish(sid, {"type": "pong"}, exclude=None)
    hub.leave_all(member)
    await hub.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from modules.common.jsfmt import JSONError, js_dumps, js_loads
from modules.common.store import Store, Subscription

__all__ = ["CHANNEL_PREFIX", "Hub", "Member", "parse_publication"]

log = logging.getLogger("modules.websocket.hub")

CHANNEL_PREFIX = "chat:session:"
#: How long a publisher waits for its own publication to come back (legacy ECHO_WAIT_MS).
ECHO_WAIT = 2.0
_SUBSCRIBE_TIMEOUT = 10.0

OnMessage = Callable[[str, str], None]


class Member(Protocol):
    """A local socket as the hub sees it."""

    id: str
    joined: set[str]
    closed: bool

    def deliver(self, text: str) -> None: ...


def parse_publication(data: str) -> tuple[str, str | None] | None:
    """A channel payload -> (frame re-serialised, exclude), or ``None`` when it is not
    the contract shape: a JSON object whose ``frame`` is an object and whose ``exclude``
    is ``null`` or a string (missing ``exclude`` is ignored, as legacy does)."""
    try:
        msg = js_loads(data)
    except JSONError:
        return None
    if not isinstance(msg, dict) or not isinstance(msg.get("frame"), dict):
        return None
    if "exclude" not in msg:
        return None
    exclude = msg["exclude"]
    if exclude is not None and not isinstance(exclude, str):
        return None
    return js_dumps(msg["frame"]).decode(), exclude


# --------------------------------------------------------------------------- subscribers


class _Subscriber(Protocol):
    async def subscribe(self, channel: str) -> None: ...
    async def unsubscribe(self, channel: str) -> None: ...
    async def aclose(self) -> None: ...


class _StoreSubscriber:
    """The in-process store's subscription, read by one task."""

    def __init__(self, sub: Subscription, on_message: OnMessage) -> None:
        self._sub = sub
        self._task = asyncio.get_running_loop().create_task(self._read(on_message))

    async def _read(self, on_message: OnMessage) -> None:
        async for channel, data in self._sub:
            on_message(channel, data)

    async def subscribe(self, channel: str) -> None:
        await self._sub.subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        await self._sub.unsubscribe(channel)

    async def aclose(self) -> None:
        await self._sub.aclose()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class _RedisSubscriber:
    """One Redis pub/sub connection for the process; bytes in, ``str`` (U+FFFD) out."""

    def __init__(self, url: str, on_message: OnMessage) -> None:
        self._client = aioredis.Redis.from_url(
            url, decode_responses=False, socket_connect_timeout=5
        )
        self._on_message = on_message
        self._pubsub = self._client.pubsub()
        self._channels: set[str] = set()
        self._pending: dict[str, list[asyncio.Future[None]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        # Connect now: two first SUBSCRIBEs racing would each open a connection.
        await self._pubsub.connect()

    async def subscribe(self, channel: str) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(channel, []).append(fut)
        self._channels.add(channel)
        try:
            await self._pubsub.subscribe(channel)
            if self._reader is None or self._reader.done():
                self._reader = asyncio.get_running_loop().create_task(self._read())
            await asyncio.wait_for(asyncio.shield(fut), _SUBSCRIBE_TIMEOUT)
        except BaseException:
            self._channels.discard(channel)
            waiters = self._pending.get(channel, [])
            if fut in waiters:
                waiters.remove(fut)
            raise

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        await self._pubsub.unsubscribe(channel)

    def _confirm(self, channel: str, exc: BaseException | None = None) -> None:
        for fut in self._pending.pop(channel, []):
            if not fut.done():
                if exc is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(exc)

    async def _read(self) -> None:
        while not self._closed:
            try:
                msg = await self._pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as exc:
                if self._closed:
                    return
                log.warning("hub subscriber lost its Redis connection (%s); reconnecting", exc)
                for channel in list(self._pending):
                    self._confirm(channel, exc)
                await self._reconnect()
                continue
            if msg is None:
                continue
            kind = msg["type"]
            channel = bytes(msg["channel"]).decode("utf-8", "replace")
            if kind in (b"subscribe", "subscribe"):
                self._confirm(channel)
            elif kind in (b"message", "message"):
                data = msg["data"]
                text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
                try:
                    self._on_message(channel, text)
                except Exception:
                    log.exception("hub failed to deliver a publication on %s", channel)

    async def _reconnect(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.aclose()
        self._pubsub = self._client.pubsub()
        while not self._closed:
            try:
                await self._pubsub.connect()
                if self._channels:
                    await self._pubsub.subscribe(*self._channels)
                return
            except (RedisError, OSError):
                await asyncio.sleep(0.5)

    async def aclose(self) -> None:
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await self._reader
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.aclose()
        await self._client.aclose()


# --------------------------------------------------------------------------- hub


class _Channel:
    __slots__ = ("members", "ready")

    def __init__(self) -> None:
        self.members: set[Member] = set()
        self.ready: asyncio.Task[None] | None = None


def _consume(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a failed op is reported to its awaiters only


class Hub:
    """Local sockets by session, and the process's one subscriber."""

    def __init__(self, store: Store, redis_url: str | None) -> None:
        self.store = store
        self.redis_url = redis_url
        self._sub: _Subscriber | None = None
        self._channels: dict[str, _Channel] = {}
        self._ops: dict[str, asyncio.Task[None]] = {}
        self._echo: dict[str, list[asyncio.Future[None]]] = {}

    async def start(self) -> None:
        if self.redis_url:
            sub = _RedisSubscriber(self.redis_url, self._on_message)
            await sub.start()
            self._sub = sub
        else:
            self._sub = _StoreSubscriber(self.store.subscription(), self._on_message)

    async def close(self) -> None:
        for task in list(self._ops.values()):
            task.cancel()
        if self._sub is not None:
            await self._sub.aclose()
            self._sub = None
        self._channels.clear()

    @property
    def subscriber(self) -> _Subscriber:
        if self._sub is None:
            raise RuntimeError("the hub has not started")
        return self._sub

    def channel_count(self) -> int:
        """Sessions with local sockets (for tests and metrics)."""
        return len(self._channels)

    # ---- membership

    def _queue_op(self, session_id: str, fn: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        prev = self._ops.get(session_id)

        async def run() -> None:
            if prev is not None:
                await asyncio.wait([prev])
            await fn()

        task = asyncio.get_running_loop().create_task(run())
        self._ops[session_id] = task

        def done(t: asyncio.Task[None]) -> None:
            _consume(t)
            if self._ops.get(session_id) is t:
                del self._ops[session_id]

        task.add_done_callback(done)
        return task

    async def join(self, member: Member, session_id: str) -> None:
        """Add ``member`` to the session; returns once the channel is subscribed."""
        while True:
            ch = self._channels.get(session_id)
            if ch is None:
                ch = _Channel()
                self._channels[session_id] = ch
                ch.ready = self._queue_op(session_id, self._subscribe_op(session_id))
                ch.ready.add_done_callback(self._on_ready(session_id, ch))
            assert ch.ready is not None
            await asyncio.shield(ch.ready)
            if member.closed:
                if self._channels.get(session_id) is ch and not ch.members:
                    self._drop(session_id)
                return
            if self._channels.get(session_id) is ch:
                ch.members.add(member)
                member.joined.add(session_id)
                return
            # The channel was dropped (its last member left) while we waited: again.

    def _subscribe_op(self, session_id: str) -> Callable[[], Awaitable[None]]:
        channel = CHANNEL_PREFIX + session_id
        return lambda: self.subscriber.subscribe(channel)

    def _on_ready(self, session_id: str, ch: _Channel) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            failed = task.cancelled() or task.exception() is not None
            if failed and self._channels.get(session_id) is ch:
                del self._channels[session_id]

        return done

    def leave_all(self, member: Member) -> None:
        """Remove a closing socket everywhere; unsubscribe channels left empty."""
        for session_id in member.joined:
            ch = self._channels.get(session_id)
            if ch is None:
                continue
            ch.members.discard(member)
            if not ch.members:
                self._drop(session_id)
        member.joined.clear()

    def _drop(self, session_id: str) -> None:
        self._channels.pop(session_id, None)
        if self._sub is None:
            return
        channel = CHANNEL_PREFIX + session_id
        self._queue_op(session_id, lambda: self.subscriber.unsubscribe(channel))

    # ---- delivery

    async def publish(self, session_id: str, frame: dict[str, Any], exclude: str | None) -> None:
        """Publish a frame to every socket joined to the session, on every instance.

        With local sockets joined, wait (up to 2 s) for our own subscriber to see it, so
        a sender gets ``ack``, ``message``, then answers to its next frames, in order, and
        an HTTP answer comes after local delivery (as legacy chat-core does).
        """
        payload = js_dumps({"frame": frame, "exclude": exclude}).decode()
        fut: asyncio.Future[None] | None = None
        ch = self._channels.get(session_id)
        if ch is not None and ch.members:
            fut = asyncio.get_running_loop().create_future()
            self._echo.setdefault(payload, []).append(fut)
        try:
            await self.store.publish(CHANNEL_PREFIX + session_id, payload)
            if fut is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(fut), ECHO_WAIT)
        finally:
            if fut is not None:
                waiters = self._echo.get(payload)
                if waiters is not None and fut in waiters:
                    waiters.remove(fut)
                    if not waiters:
                        del self._echo[payload]

    def _on_message(self, channel: str, data: str) -> None:
        try:
            if not channel.startswith(CHANNEL_PREFIX):
                return
            ch = self._channels.get(channel[len(CHANNEL_PREFIX) :])
            if ch is None:
                return
            parsed = parse_publication(data)
            if parsed is None:
                return
            text, exclude = parsed
            for member in list(ch.members):
                if member.id != exclude:
                    member.deliver(text)
        finally:
            for fut in self._echo.pop(data, []):
                if not fut.done():
                    fut.set_result(None)
