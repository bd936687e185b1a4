"""Session records in the shared store (legacy-api.md §2, §6 "chat-session").

Reads both record shapes into the 7-field wire session, exactly as the legacy reader
(``deploy/legacy/lib/sessions.js``) does; writes the legacy shape (default), the Python
shape of the migration guide, or both field sets in one record::

    repo = SessionRepo(store, write_shape="legacy")
    s = await repo.get("7f…")                 # WireSession | None (missing/expired/unreadable)
    s = replace(s, agent="human", updated_at=js_iso(now_ms()))
    await repo.write(s)                        # SET EX 86400 + ZADD score createdAt + EXPIRE

A record is *Python-shaped* when it has ``user_id`` and neither ``userId`` nor
``createdAt``; the key's id wins over the stored one; a record without a readable user
id or times is treated as missing.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from modules.common.auth import User
from modules.common.config import WriteShape
from modules.common.jsfmt import JSONError, js_dumps, js_iso, js_loads, js_number, parse_time
from modules.common.store import Store

SESSION_TTL = 86400


def session_key(session_id: str) -> str:
    return f"session:{session_id}"


def user_index_key(user_id: str) -> str:
    return f"user_sessions:{user_id}"


@dataclass(frozen=True)
class WireSession:
    """The session as clients see it; times are JavaScript ISO strings."""

    session_id: str
    user_id: str
    agent: str
    context: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    updated_at: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {
            "sessionId": self.session_id,
            "userId": self.user_id,
            "agent": self.agent,
            "context": self.context,
            "metadata": self.metadata,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
        }

    @property
    def created_ms(self) -> int:
        ms = parse_time(self.created_at)
        return 0 if ms is None else ms


def _time_to_iso(v: object) -> str | None:
    if isinstance(v, str):
        return _str_time_to_iso(v)
    ms = parse_time(v)
    return None if ms is None else js_iso(ms)


@functools.lru_cache(maxsize=8192)
def _str_time_to_iso(v: str) -> str | None:
    """Cached: a pure function, and every read of a session reparses the same two stamps
    (parse + strftime was a quarter of a session GET's own CPU, bench/README.md)."""
    ms = parse_time(v)
    return None if ms is None else js_iso(ms)


def _user_id_of(v: object) -> str | None:
    if isinstance(v, str) and v:
        return v
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return js_number(float(v))
    return None


def _obj(v: object) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def from_stored(obj: object, key_id: str | None) -> WireSession | None:
    """A parsed record of either shape -> the wire session, or ``None`` if unreadable."""
    if not isinstance(obj, dict):
        return None
    legacy = "userId" in obj or "createdAt" in obj or "user_id" not in obj
    if legacy:
        names = ("sessionId", "userId", "agent", "createdAt", "updatedAt")
    else:
        names = ("session_id", "user_id", "agent_type", "created_at", "updated_at")
    sid_name, uid_name, agent_name, created_name, updated_name = names
    session_id = key_id if key_id is not None else obj.get(sid_name)
    created = _time_to_iso(obj.get(created_name))
    updated = created if obj.get(updated_name) is None else _time_to_iso(obj.get(updated_name))
    user_id = _user_id_of(obj.get(uid_name))
    if not isinstance(session_id, str) or not session_id:
        return None
    if user_id is None or created is None or updated is None:
        return None
    agent = obj.get(agent_name)
    return WireSession(
        session_id=session_id,
        user_id=user_id,
        agent=agent if isinstance(agent, str) else "ai",
        context=_obj(obj.get("context")),
        metadata=_obj(obj.get("metadata")),
        created_at=created,
        updated_at=updated,
    )


def parse_record(raw: str | None, key_id: str | None) -> WireSession | None:
    """The stored JSON text -> wire session (``None``: missing or unreadable)."""
    if raw is None:
        return None
    try:
        obj = js_loads(raw)
    except JSONError:
        return None
    return from_stored(obj, key_id)


def _python_iso(iso: str) -> str:
    """``2024-01-01T10:00:00.123Z`` -> ``2024-01-01T10:00:00.123000+00:00`` (isoformat)."""
    ms = parse_time(iso) or 0
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC).replace(microsecond=(ms % 1000) * 1000)
    return dt.isoformat()


def to_stored(s: WireSession, shape: WriteShape) -> dict[str, Any]:
    """The record to store: legacy fields, Python fields, or both in one object."""
    out: dict[str, Any] = {}
    if shape in ("legacy", "both"):
        out.update(s.to_wire())
    if shape in ("python", "both"):
        out.update(
            {
                "session_id": s.session_id,
                "user_id": s.user_id,
                "agent_type": s.agent,
                "context": s.context,
                "metadata": s.metadata,
                "created_at": _python_iso(s.created_at),
                "updated_at": _python_iso(s.updated_at),
            }
        )
    return out


def can_access(user: User, session: WireSession) -> bool:
    """§2 ownership: a customer only its own sessions; agents and admins any."""
    return user.role != "customer" or session.user_id == user.sub


class SessionRepo:
    """Reads and writes session records and the per-user index."""

    def __init__(self, store: Store, write_shape: WriteShape = "legacy") -> None:
        self.store = store
        self.write_shape = write_shape

    async def get(self, session_id: str) -> WireSession | None:
        return parse_record(await self.store.get(session_key(session_id)), session_id)

    async def get_many(self, ids: list[str]) -> list[WireSession | None]:
        raws = await self.store.mget([session_key(i) for i in ids])
        return [parse_record(raw, i) for raw, i in zip(raws, ids, strict=True)]

    async def write(self, s: WireSession) -> WireSession:
        """Store ``s`` with a fresh TTL, (re)index it and reset the index TTL, atomically."""
        idx = user_index_key(s.user_id)
        tx = self.store.transaction()
        tx.set(
            session_key(s.session_id),
            js_dumps(to_stored(s, self.write_shape)).decode(),
            ex=SESSION_TTL,
        )
        tx.zadd(idx, {s.session_id: s.created_ms})
        tx.expire(idx, SESSION_TTL)
        await tx.execute()
        return s

    async def delete(self, s: WireSession) -> None:
        """The session key and its index entry (history and MySQL rows stay)."""
        tx = self.store.transaction()
        tx.delete(session_key(s.session_id))
        tx.zrem(user_index_key(s.user_id), s.session_id)
        await tx.execute()

    async def list_for_user(self, user_id: str) -> list[WireSession]:
        """Newest first (``createdAt``, ties ``sessionId`` descending); expired entries and
        records of another user are skipped, not removed."""
        ids = await self.store.zrange(user_index_key(user_id), 0, -1)
        found = [s for s in await self.get_many(ids) if s is not None and s.user_id == user_id]
        found.sort(key=lambda s: s.session_id, reverse=True)
        found.sort(key=lambda s: s.created_ms, reverse=True)
        return found
