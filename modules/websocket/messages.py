"""Chat messages in the production tables, stored and listed as chat-core does it.

A port of ``deploy/legacy/lib/messages.js`` (legacy-api.md §4 "Message object on the
wire", CONTRACT-NOTES "chat-core"), over the engine and tables of
:mod:`modules.admin.db` (MySQL as is, or the embedded SQLite default shared with the
admin module)::

    store = MessageStore(engine)
    msg = await store.store(session_id=sid, user_id="u-1", sender="customer",
                            sender_id="u-1", text="hi")
    before = await store.resolve_before(sid, msg["messageId"])     # row id, or 400
    page = await store.list(sid, limit=50, before_id=before)        # oldest first

One transaction per message (READ COMMITTED on MySQL, see ``_write``): the conversation row is locked (``SELECT … FOR UPDATE``)
before the time is taken, so ``createdAt`` follows the row-id order within a
conversation; the first message reuses the contact whose ``external_id`` is the
session's user (column collation) or creates it, and creates the conversation; the
conversation's ``updated_at`` becomes the message time. A race between two first
messages (duplicate key, deadlock) is retried up to 5 times, as legacy does.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, insert, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from modules.admin.db import conversations, customer_contacts, messages, now
from modules.common.dryrun import DRY_RUN
from modules.common.errors import bad_request
from modules.common.jsfmt import js_iso

__all__ = ["MessageStore", "wire_message"]

# MySQL error numbers (https://mariadb.com/kb/en/mariadb-error-codes/).
_ER_DUP_ENTRY = 1062
_ER_LOCK_DEADLOCK = 1213
_RETRIES = 5


def wire_message(
    message_id: str,
    session_id: str,
    sender: str,
    sender_id: str | None,
    text: str,
    created_at: datetime,
) -> dict[str, Any]:
    """The §4 message object, keys in legacy order."""
    return {
        "messageId": message_id,
        "sessionId": session_id,
        "from": sender,
        "senderId": sender_id,
        "text": text,
        "createdAt": js_iso(created_at),
    }


def _retryable(exc: DBAPIError) -> bool:
    args = getattr(exc.orig, "args", ())
    code = args[0] if args and isinstance(args[0], int) else None
    if code in (_ER_DUP_ENTRY, _ER_LOCK_DEADLOCK):
        return True
    text = str(exc.orig)
    return "UNIQUE constraint failed" in text or "database is locked" in text


class MessageStore:
    """Reads and writes ``messages`` / ``conversations`` / ``customer_contacts``."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sqlite = engine.dialect.name == "sqlite"

    def _ci_equals(self, column: Any, value: str) -> ColumnElement[bool]:
        """``column = value`` under ``utf8mb4_unicode_ci`` (SQLite: ``cgw_ci_key``)."""
        if self._sqlite:
            return func.cgw_ci_key(column) == func.cgw_ci_key(value)
        return column == value  # type: ignore[no-any-return,unused-ignore]

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            if self._sqlite:
                # BEGIN IMMEDIATE (modules.admin.db): one writer at a time, no lock upgrade.
                conn = await conn.execution_options(cgw_write=True)
            else:
                # READ COMMITTED: the FOR UPDATE on a conversation that does not exist yet
                # takes no gap lock, so first messages of different sessions do not queue
                # behind each other (under REPEATABLE READ 500 of them at once waited past
                # the pool timeout); two first messages of one session still meet on the
                # unique key, and the loser retries, as legacy does.
                conn = await conn.execution_options(isolation_level="READ COMMITTED")
            trans = await conn.begin()
            try:
                yield conn
            except BaseException:
                await trans.rollback()
                raise
            if DRY_RUN.get():  # a shadow dry run: the insert ran, nothing is kept
                await trans.rollback()
            else:
                await trans.commit()

    async def store(
        self, *, session_id: str, user_id: str, sender: str, sender_id: str | None, text: str
    ) -> dict[str, Any]:
        """Store one message of a session; its wire object."""
        message_id = str(uuid.uuid4())
        for attempt in range(_RETRIES + 1):
            try:
                async with self._write() as conn:
                    created = await self._store_tx(
                        conn, message_id, session_id, user_id, sender, sender_id, text
                    )
                break
            except DBAPIError as exc:
                if attempt < _RETRIES and _retryable(exc):
                    continue
                raise
        return wire_message(message_id, session_id, sender, sender_id, text, created)

    async def _store_tx(
        self,
        conn: AsyncConnection,
        message_id: str,
        session_id: str,
        user_id: str,
        sender: str,
        sender_id: str | None,
        text: str,
    ) -> datetime:
        found = (
            await conn.execute(
                select(conversations.c.id)
                .where(conversations.c.session_id == session_id)
                .with_for_update()
            )
        ).first()
        # Taken once the row is locked: createdAt follows row-id order in a conversation.
        t = now()
        if found is not None:
            conversation_id = int(found[0])
        else:
            contact = (
                await conn.execute(
                    select(customer_contacts.c.id)
                    .where(self._ci_equals(customer_contacts.c.external_id, user_id))
                    .order_by(customer_contacts.c.id)
                    .limit(1)
                    .with_for_update()
                )
            ).first()
            if contact is not None:
                contact_id = int(contact[0])
            else:
                res = await conn.execute(
                    insert(customer_contacts).values(
                        name=user_id,
                        email=None,
                        phone=None,
                        external_id=user_id,
                        created_at=t,
                        updated_at=t,
                    )
                )
                contact_id = int(res.inserted_primary_key[0])  # type: ignore[index]
            res = await conn.execute(
                insert(conversations).values(
                    session_id=session_id,
                    contact_id=contact_id,
                    status="open",
                    assignee_id=None,
                    team_id=None,
                    created_at=t,
                    updated_at=t,
                )
            )
            conversation_id = int(res.inserted_primary_key[0])  # type: ignore[index]
        await conn.execute(
            insert(messages).values(
                message_uid=message_id,
                conversation_id=conversation_id,
                sender_type=sender,
                sender_id=sender_id,
                content=text,
                created_at=t,
            )
        )
        await conn.execute(
            update(conversations).where(conversations.c.id == conversation_id).values(updated_at=t)
        )
        return t

    async def resolve_before(self, session_id: str, before: str) -> int:
        """The row id of message ``before`` of the session's conversation, else 400."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(messages.c.id)
                    .select_from(
                        messages.join(
                            conversations, conversations.c.id == messages.c.conversation_id
                        )
                    )
                    .where(
                        conversations.c.session_id == session_id,
                        self._ci_equals(messages.c.message_uid, before),
                    )
                )
            ).first()
        if row is None:
            raise bad_request("before does not name a message of this conversation")
        return int(row[0])

    async def list(self, session_id: str, *, limit: int, before_id: int | None) -> list[Any]:
        """The last ``limit`` messages (before row ``before_id``), oldest first."""
        async with self.engine.connect() as conn:
            conv = (
                await conn.execute(
                    select(conversations.c.id).where(conversations.c.session_id == session_id)
                )
            ).first()
            if conv is None:
                return []
            query = select(
                messages.c.message_uid,
                messages.c.sender_type,
                messages.c.sender_id,
                messages.c.content,
                messages.c.created_at,
            ).where(messages.c.conversation_id == conv[0])
            if before_id is not None:
                query = query.where(messages.c.id < before_id)
            rows = (await conn.execute(query.order_by(messages.c.id.desc()).limit(limit))).all()
        return [wire_message(r[0], session_id, r[1], r[2], r[3], r[4]) for r in reversed(rows)]
