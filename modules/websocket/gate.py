"""A concurrency gate in front of the shared store.

``modules.common.store.RedisStore`` uses a non-blocking redis-py pool of 64 connections:
a 65th concurrent command fails at once with ``MaxConnectionsError("Too many
connections")`` instead of waiting. A thousand sockets joining at once reach that easily
(measured with ``test_thousand_sockets_through_one_gateway_exchange_messages_none_lost``),
so this module sends its store commands through a semaphore that leaves room in the pool
for the other modules of the process::

    store = gated(shared_store, limit=32)
    await store.get("session:…")          # waits for a slot instead of failing
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

from modules.common.store import Store, Transaction

__all__ = ["DEFAULT_LIMIT", "gated"]

DEFAULT_LIMIT = 32


class _GatedTransaction:
    def __init__(self, tx: Transaction, sem: asyncio.Semaphore) -> None:
        self._tx = tx
        self._sem = sem

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tx, name)

    async def execute(self) -> list[Any]:
        async with self._sem:
            return await self._tx.execute()


class _GatedStore:
    _PASS = frozenset({"subscription", "aclose"})

    def __init__(self, store: Store, limit: int) -> None:
        self._store = store
        self._sem = asyncio.Semaphore(limit)

    def transaction(self) -> Transaction:
        return cast(Transaction, _GatedTransaction(self._store.transaction(), self._sem))

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name in self._PASS or not callable(attr):
            return attr
        fn = cast(Callable[..., Awaitable[Any]], attr)

        async def call(*args: Any, **kw: Any) -> Any:
            async with self._sem:
                return await fn(*args, **kw)

        return call


def gated(store: Store, limit: int = DEFAULT_LIMIT) -> Store:
    """``store`` with at most ``limit`` commands in flight."""
    return cast(Store, _GatedStore(store, limit))
