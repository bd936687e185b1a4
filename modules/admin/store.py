"""chat-admin's reads and writes over the shared tables (one transaction per write).

Every method returns plain row mappings (or wire dicts for conversations, which need
their labels) and raises the contract's :class:`~modules.common.errors.ApiError` for the
400 / 404 / 409 cases, in the order of legacy-api.md §1: referenced ids (400) before the
addressed row (404) before unique values (409).

Collation-dependent predicates go through :func:`_ci_equals` / :func:`_ci_contains`:
MySQL's ``utf8mb4_unicode_ci`` columns do the work there, the ``cgw_ci_*`` functions of
:mod:`modules.admin.db` do it on SQLite.

Example::

    store = Store(engine)
    rows, total = await store.list_rows("users", page=1, per_page=25, role="agent")
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import (
    ColumnElement,
    RowMapping,
    Table,
    and_,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from modules.admin import wire
from modules.admin.db import (
    conversation_labels,
    conversations,
    customer_contacts,
    labels,
    messages,
    now,
    teams,
    users,
)
from modules.common.dryrun import DRY_RUN
from modules.common.errors import ApiError, bad_request, conflict, not_found

__all__ = ["KIND_TABLES", "Store"]

KIND_TABLES: dict[str, Table] = {
    "users": users,
    "teams": teams,
    "labels": labels,
    "contacts": customer_contacts,
}
_NAMES = {"users": "user", "teams": "team", "labels": "label", "contacts": "contact"}

# MySQL error numbers (https://mariadb.com/kb/en/mariadb-error-codes/).
_ER_DUP_ENTRY = 1062
_ER_ROW_IS_REFERENCED_2 = 1451
_ER_NO_REFERENCED_ROW_2 = 1452
#: Larger than any id either database can hold: such a reference exists nowhere, and
#: SQLite would overflow on it.
_MAX_ROW_ID = 2**63 - 1


def _integrity_error(exc: IntegrityError, *, deleting: bool) -> ApiError:
    """A constraint violation as the contract answers it (409 unique / 400 missing ref)."""
    args = getattr(exc.orig, "args", ())
    code = args[0] if args and isinstance(args[0], int) else None
    text = str(exc.orig)
    if code == _ER_DUP_ENTRY or "UNIQUE constraint failed" in text:
        return conflict("a unique value is taken")
    if code == _ER_ROW_IS_REFERENCED_2 or (deleting and "FOREIGN KEY" in text):
        return conflict("the row is still referenced")
    if code == _ER_NO_REFERENCED_ROW_2 or "FOREIGN KEY" in text:
        return bad_request("a referenced id does not exist")
    raise exc


class Store:
    """Queries of chat-admin on one engine (MySQL or SQLite)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sqlite = engine.dialect.name == "sqlite"

    # ------------------------------------------------------------------ plumbing

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def _write(self, *, deleting: bool = False) -> AsyncIterator[AsyncConnection]:
        """One transaction; constraint errors become the contract's 400 / 409.

        In a shadow dry run (:data:`DRY_RUN` set) every statement runs — checks, constraint
        errors and answers are the real ones — and the transaction is rolled back instead of
        committed, so no row changes (MySQL may still advance an AUTO_INCREMENT counter).
        """
        try:
            async with self.engine.connect() as conn:
                if self._sqlite:
                    conn = await conn.execution_options(cgw_write=True)
                trans = await conn.begin()
                try:
                    yield conn
                except BaseException:
                    await trans.rollback()
                    raise
                if DRY_RUN.get():
                    await trans.rollback()
                else:
                    await trans.commit()
        except IntegrityError as exc:
            raise _integrity_error(exc, deleting=deleting) from None

    def _ci_equals(self, column: Any, value: str) -> ColumnElement[bool]:
        if self._sqlite:
            return func.cgw_ci_key(column) == func.cgw_ci_key(value)
        return column == value

    def _ci_contains(self, column: Any, needle: str) -> ColumnElement[bool]:
        if self._sqlite:
            return func.cgw_ci_contains(column, needle) == 1
        # %, _ and the escape character match literally; the column's collation makes
        # LIKE case- and accent-insensitive.
        escaped = needle.replace("!", "!!").replace("%", "!%").replace("_", "!_")
        return column.like(f"%{escaped}%", escape="!")

    @staticmethod
    async def _one(conn: AsyncConnection, table: Table, row_id: int | None, *, lock: bool = False
                   ) -> RowMapping | None:  # fmt: skip
        if row_id is None:
            return None
        stmt = select(table).where(table.c.id == row_id)
        if lock:
            stmt = stmt.with_for_update()
        return (await conn.execute(stmt)).mappings().first()

    @staticmethod
    async def _require_ref(conn: AsyncConnection, table: Table, row_id: int | None, name: str
                           ) -> None:  # fmt: skip
        """A referenced row must exist (400 otherwise, §1)."""
        if row_id is None:
            return
        found = (
            row_id <= _MAX_ROW_ID
            and (await conn.execute(select(table.c.id).where(table.c.id == row_id))).first()
            is not None
        )
        if not found:
            raise bad_request(f"{name} {row_id} does not exist")

    @staticmethod
    async def _page(
        conn: AsyncConnection,
        table: Any,
        where: Sequence[ColumnElement[bool]],
        order: Sequence[Any],
        page: int,
        per_page: int,
    ) -> tuple[list[RowMapping], int]:
        cond = and_(true(), *where)
        total = int((await conn.execute(select(func.count()).select_from(table).where(cond)))
                    .scalar_one())  # fmt: skip
        offset = (page - 1) * per_page
        if offset >= total:
            return [], total
        stmt = select(table).where(cond).order_by(*order).limit(per_page).offset(offset)
        return list((await conn.execute(stmt)).mappings().all()), total

    # ------------------------------------------------------------------ users, teams, …

    async def list_rows(
        self,
        kind: str,
        *,
        page: int,
        per_page: int,
        role: str | None = None,
        team_id: int | None = None,
        q: str | None = None,
    ) -> tuple[list[RowMapping], int]:
        table = KIND_TABLES[kind]
        where: list[ColumnElement[bool]] = []
        if role is not None:
            where.append(table.c.role == role)
        if team_id is not None:
            where.append(table.c.team_id == team_id)
        if q:
            where.append(
                or_(self._ci_contains(table.c.name, q), self._ci_contains(table.c.email, q))
            )
        async with self._read() as conn:
            return await self._page(conn, table, where, [table.c.id], page, per_page)

    async def get_row(self, kind: str, row_id: int | None) -> RowMapping:
        async with self._read() as conn:
            row = await self._one(conn, KIND_TABLES[kind], row_id)
        if row is None:
            raise not_found(f"{_NAMES[kind]} not found")
        return row

    async def create_row(self, kind: str, cols: Mapping[str, Any]) -> RowMapping:
        table = KIND_TABLES[kind]
        async with self._write() as conn:
            if kind == "users":
                await self._require_ref(conn, teams, cols.get("team_id"), "teamId")
            t = now()
            result = await conn.execute(insert(table).values(**cols, created_at=t, updated_at=t))
            pk = result.inserted_primary_key
            assert pk is not None
            row = await self._one(conn, table, pk[0])
        assert row is not None
        return row

    async def update_row(self, kind: str, row_id: int | None, cols: Mapping[str, Any]
                         ) -> RowMapping:  # fmt: skip
        table = KIND_TABLES[kind]
        async with self._write() as conn:
            if kind == "users":
                await self._require_ref(conn, teams, cols.get("team_id"), "teamId")
            if await self._one(conn, table, row_id, lock=True) is None:
                raise not_found(f"{_NAMES[kind]} not found")
            await conn.execute(update(table).where(table.c.id == row_id)
                               .values(**cols, updated_at=now()))  # fmt: skip
            row = await self._one(conn, table, row_id)
        assert row is not None
        return row

    async def delete_row(self, kind: str, row_id: int | None) -> None:
        """Delete; the foreign keys null team / assignee ids and drop label links
        (``ON DELETE SET NULL`` / ``CASCADE``: no ``updated_at`` changes)."""
        table = KIND_TABLES[kind]
        async with self._write(deleting=True) as conn:
            if await self._one(conn, table, row_id, lock=True) is None:
                raise not_found(f"{_NAMES[kind]} not found")
            if kind == "contacts":
                used = await conn.execute(
                    select(conversations.c.id).where(conversations.c.contact_id == row_id).limit(1)
                )
                if used.first() is not None:
                    raise conflict("the contact has conversations")
            await conn.execute(delete(table).where(table.c.id == row_id))

    # ------------------------------------------------------------------ conversations

    async def _with_labels(self, conn: AsyncConnection, rows: Sequence[RowMapping]
                           ) -> list[dict[str, Any]]:  # fmt: skip
        if not rows:
            return []
        links = await conn.execute(
            select(conversation_labels.c.conversation_id, labels.c.title)
            .join(labels, labels.c.id == conversation_labels.c.label_id)
            .where(conversation_labels.c.conversation_id.in_([r["id"] for r in rows]))
        )
        by_conv: dict[int, list[str]] = {}
        for cid, title in links:
            by_conv.setdefault(cid, []).append(title)
        return [wire.conversation(r, by_conv.get(r["id"], ())) for r in rows]

    async def _conversation_out(self, conn: AsyncConnection, conv_id: int) -> dict[str, Any]:
        row = await self._one(conn, conversations, conv_id)
        assert row is not None
        return (await self._with_labels(conn, [row]))[0]

    async def list_conversations(
        self,
        *,
        page: int,
        per_page: int,
        status: str | None = None,
        assignee_id: int | None = None,
        team_id: int | None = None,
        label: str | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        c = conversations
        where: list[ColumnElement[bool]] = []
        if status is not None:
            where.append(c.c.status == status)
        if assignee_id is not None:
            where.append(c.c.assignee_id == assignee_id)
        if team_id is not None:
            where.append(c.c.team_id == team_id)
        if label:
            where.append(
                exists()
                .where(conversation_labels.c.conversation_id == c.c.id)
                .where(labels.c.id == conversation_labels.c.label_id)
                .where(self._ci_equals(labels.c.title, label))
            )
        order = [c.c.updated_at.desc(), c.c.id.desc()]
        async with self._read() as conn:
            rows, total = await self._page(conn, c, where, order, page, per_page)
            return await self._with_labels(conn, rows), total

    async def get_conversation(self, conv_id: int | None) -> dict[str, Any]:
        async with self._read() as conn:
            row = await self._one(conn, conversations, conv_id)
            if row is None:
                raise not_found("conversation not found")
            return (await self._with_labels(conn, [row]))[0]

    async def update_conversation(self, conv_id: int | None, cols: Mapping[str, Any]
                                  ) -> dict[str, Any]:  # fmt: skip
        async with self._write() as conn:
            await self._require_ref(conn, users, cols.get("assignee_id"), "assigneeId")
            await self._require_ref(conn, teams, cols.get("team_id"), "teamId")
            if conv_id is None or await self._one(conn, conversations, conv_id, lock=True) is None:
                raise not_found("conversation not found")
            await conn.execute(update(conversations).where(conversations.c.id == conv_id)
                               .values(**cols, updated_at=now()))  # fmt: skip
            return await self._conversation_out(conn, conv_id)

    async def _label_id(self, conn: AsyncConnection, title: str) -> int:
        found = await conn.execute(
            select(labels.c.id).where(self._ci_equals(labels.c.title, title)).limit(1)
        )
        label_id = found.scalar()
        if label_id is None:
            raise not_found("label not found")
        return int(label_id)

    async def add_label(self, conv_id: int | None, title: str) -> dict[str, Any]:
        """Attach a label; attaching it again changes nothing (``updated_at`` kept)."""
        async with self._write() as conn:
            if conv_id is None or await self._one(conn, conversations, conv_id, lock=True) is None:
                raise not_found("conversation not found")
            label_id = await self._label_id(conn, title)
            result = await conn.execute(
                insert(conversation_labels)
                .prefix_with("IGNORE", dialect="mysql")
                .prefix_with("OR IGNORE", dialect="sqlite")
                .values(conversation_id=conv_id, label_id=label_id)
            )
            if result.rowcount > 0:
                await self._touch(conn, conv_id)
            return await self._conversation_out(conn, conv_id)

    async def remove_label(self, conv_id: int | None, title: str) -> dict[str, Any]:
        """Detach a label; an unknown label is 404, a known one not attached a no-op."""
        async with self._write() as conn:
            if conv_id is None or await self._one(conn, conversations, conv_id, lock=True) is None:
                raise not_found("conversation not found")
            label_id = await self._label_id(conn, title)
            result = await conn.execute(
                delete(conversation_labels).where(
                    conversation_labels.c.conversation_id == conv_id,
                    conversation_labels.c.label_id == label_id,
                )
            )
            if result.rowcount > 0:
                await self._touch(conn, conv_id)
            return await self._conversation_out(conn, conv_id)

    @staticmethod
    async def _touch(conn: AsyncConnection, conv_id: int) -> None:
        await conn.execute(
            update(conversations).where(conversations.c.id == conv_id).values(updated_at=now())
        )

    async def list_messages(
        self, conv_id: int | None, *, limit: int, before: str | None
    ) -> list[dict[str, Any]]:
        """The last ``limit`` messages of a conversation before message ``before``
        (exclusive; it must be a message of this conversation, else 400), oldest first."""
        m = messages
        async with self._read() as conn:
            before_id = None
            if before is not None:
                if conv_id is not None:
                    found = await conn.execute(
                        select(m.c.id).where(
                            m.c.conversation_id == conv_id, m.c.message_uid == before
                        )
                    )
                    before_id = found.scalar()
                if before_id is None:
                    raise bad_request("before does not name a message of this conversation")
            conv = await self._one(conn, conversations, conv_id)
            if conv is None:
                raise not_found("conversation not found")
            stmt = select(m.c.message_uid, m.c.sender_type, m.c.sender_id, m.c.content,
                          m.c.created_at).where(m.c.conversation_id == conv_id)  # fmt: skip
            if before_id is not None:
                stmt = stmt.where(m.c.id < before_id)
            rows = (await conn.execute(stmt.order_by(m.c.id.desc()).limit(limit))).mappings().all()
            return [wire.message(r, conv["session_id"]) for r in reversed(rows)]

    # ------------------------------------------------------------------ stats

    async def stats(self) -> dict[str, Any]:
        def count(table: Table, *where: ColumnElement[bool]) -> Any:
            return select(func.count()).select_from(table).where(*where).scalar_subquery()

        c = conversations.c
        stmt = select(
            count(conversations, c.status == "open").label("open"),
            count(conversations, c.status == "pending").label("pending"),
            count(conversations, c.status == "resolved").label("resolved"),
            count(users).label("users"),
            count(teams).label("teams"),
            count(customer_contacts).label("contacts"),
            count(labels).label("labels"),
        )
        async with self._read() as conn:
            r = (await conn.execute(stmt)).mappings().one()
        return {
            "conversations": {k: int(r[k]) for k in ("open", "pending", "resolved")},
            **{k: int(r[k]) for k in ("users", "teams", "contacts", "labels")},
        }
