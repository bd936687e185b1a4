"""Storage of chat-admin: the production tables as they are, on MySQL or SQLite.

The tables belong to the legacy services (``shared/contract/schema.sql``); this module
maps them with SQLAlchemy Core and never changes them. On MySQL nothing is created (the
legacy services own the schema); on SQLite, the embedded default, the same tables are
created at startup from :data:`SQLITE_DDL`, an equivalent of the MySQL DDL.

Collation. The MySQL tables use ``utf8mb4_unicode_ci``: ``=``, ``LIKE`` and the unique
keys ignore case, accents and trailing spaces (``PAD SPACE``). SQLite has no such
collation, so every SQLite connection gets two deterministic functions:

- ``cgw_ci_key(s)``: NFKD, combining marks dropped, Unicode case-folded, trailing spaces
  dropped. The unique indexes on team name, user email, label title and contact
  externalId are built on it, so ``Team`` and ``team`` conflict as they do on MySQL.
- ``cgw_ci_contains(haystack, needle)``: substring test on ``cgw_ci_key`` of both sides
  (without the trailing-space rule), used for ``contacts?q=``.

A process that writes these SQLite tables must register the functions too (see
:func:`install_sqlite_functions`), or SQLite refuses to update the indexes.

Example::

    engine = create_engine("sqlite+aiosqlite:///./chat-gateway.db")
    await prepare(engine)          # SQLite: CREATE TABLE IF NOT EXISTS …; MySQL: nothing
    async with engine.begin() as conn:
        ...
"""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Enum,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

__all__ = [
    "DEFAULT_URL",
    "SQLITE_DDL",
    "ci_contains",
    "ci_key",
    "conversation_labels",
    "conversations",
    "create_engine",
    "customer_contacts",
    "install_sqlite_functions",
    "labels",
    "messages",
    "metadata",
    "normalise_url",
    "now",
    "prepare",
    "teams",
    "users",
]

#: No ``DATABASE_URL``: a SQLite file in the working directory, so that data survives a
#: restart (an in-memory database would lose every user, team and label).
DEFAULT_URL = "sqlite+aiosqlite:///./chat-gateway.db"

metadata = MetaData()

teams = Table(
    "teams",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(255), nullable=False),
    Column("description", Text, nullable=True),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("email", String(255), nullable=False),
    Column("name", String(255), nullable=False),
    Column("role", Enum("agent", "admin", native_enum=False, create_constraint=False)),
    Column("team_id", Integer, nullable=True),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

labels = Table(
    "labels",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("title", String(64), nullable=False),
    Column("color", String(7), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

customer_contacts = Table(
    "customer_contacts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(255), nullable=False),
    Column("email", String(255), nullable=True),
    Column("phone", String(64), nullable=True),
    Column("external_id", String(64), nullable=True),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

conversations = Table(
    "conversations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("session_id", String(36), nullable=True),
    Column("contact_id", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("assignee_id", Integer, nullable=True),
    Column("team_id", Integer, nullable=True),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

conversation_labels = Table(
    "conversation_labels",
    metadata,
    Column("conversation_id", Integer, primary_key=True),
    Column("label_id", Integer, primary_key=True),
)

messages = Table(
    "messages",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("message_uid", String(36), nullable=False),
    Column("conversation_id", Integer, nullable=False),
    Column("sender_type", String(16), nullable=False),
    Column("sender_id", String(64), nullable=True),
    Column("content", Text, nullable=False),
    Column("created_at", DateTime, nullable=False),
)

#: The tables of schema.sql for SQLite. Same names, columns, keys and foreign-key actions;
#: ENUMs become CHECKs, DATETIME(3) is stored as text, the utf8mb4_unicode_ci unique keys
#: become unique indexes on ``cgw_ci_key(column)``.
SQLITE_DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS teams (
  id           INTEGER PRIMARY KEY AUTOINCREMENT,
  name         VARCHAR(255) NOT NULL,
  description  TEXT NULL,
  created_at   DATETIME NOT NULL,
  updated_at   DATETIME NOT NULL
)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS uq_teams_name ON teams (cgw_ci_key(name))",
    """CREATE TABLE IF NOT EXISTS users (
  id           INTEGER PRIMARY KEY AUTOINCREMENT,
  email        VARCHAR(255) NOT NULL,
  name         VARCHAR(255) NOT NULL,
  role         VARCHAR(5) NOT NULL DEFAULT 'agent' CHECK (role IN ('agent', 'admin')),
  team_id      INTEGER NULL REFERENCES teams (id) ON DELETE SET NULL,
  created_at   DATETIME NOT NULL,
  updated_at   DATETIME NOT NULL
)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS uq_users_email ON users (cgw_ci_key(email))",
    "CREATE INDEX IF NOT EXISTS ix_users_team ON users (team_id)",
    """CREATE TABLE IF NOT EXISTS labels (
  id           INTEGER PRIMARY KEY AUTOINCREMENT,
  title        VARCHAR(64) NOT NULL,
  color        CHAR(7) NOT NULL DEFAULT '#1f93ff',
  created_at   DATETIME NOT NULL,
  updated_at   DATETIME NOT NULL
)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS uq_labels_title ON labels (cgw_ci_key(title))",
    """CREATE TABLE IF NOT EXISTS customer_contacts (
  id           INTEGER PRIMARY KEY AUTOINCREMENT,
  name         VARCHAR(255) NOT NULL,
  email        VARCHAR(255) NULL,
  phone        VARCHAR(64) NULL,
  external_id  VARCHAR(64) NULL,
  created_at   DATETIME NOT NULL,
  updated_at   DATETIME NOT NULL
)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS uq_contacts_external"
    " ON customer_contacts (cgw_ci_key(external_id))",
    """CREATE TABLE IF NOT EXISTS conversations (
  id           INTEGER PRIMARY KEY AUTOINCREMENT,
  session_id   CHAR(36) NULL UNIQUE,
  contact_id   INTEGER NOT NULL REFERENCES customer_contacts (id),
  status       VARCHAR(8) NOT NULL DEFAULT 'open'
               CHECK (status IN ('open', 'pending', 'resolved')),
  assignee_id  INTEGER NULL REFERENCES users (id) ON DELETE SET NULL,
  team_id      INTEGER NULL REFERENCES teams (id) ON DELETE SET NULL,
  created_at   DATETIME NOT NULL,
  updated_at   DATETIME NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS ix_conversations_status ON conversations (status, updated_at)",
    """CREATE TABLE IF NOT EXISTS conversation_labels (
  conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
  label_id        INTEGER NOT NULL REFERENCES labels (id) ON DELETE CASCADE,
  PRIMARY KEY (conversation_id, label_id)
)""",
    """CREATE TABLE IF NOT EXISTS messages (
  id              INTEGER PRIMARY KEY AUTOINCREMENT,
  message_uid     CHAR(36) NOT NULL UNIQUE,
  conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
  sender_type     VARCHAR(8) NOT NULL CHECK (sender_type IN ('customer', 'agent', 'ai')),
  sender_id       VARCHAR(64) NULL,
  content         TEXT NOT NULL,
  created_at      DATETIME NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS ix_messages_conversation ON messages (conversation_id, id)",
)


# --------------------------------------------------------------------------- collation


def _fold(s: str) -> str:
    decomposed = unicodedata.normalize("NFKD", s)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return stripped.casefold()


def ci_key(s: str | None) -> str | None:
    """What ``utf8mb4_unicode_ci`` compares with ``=``: case, accents and trailing spaces
    ignored (``ci_key("Café ") == ci_key("cafe")``)."""
    if s is None:
        return None
    return _fold(s).rstrip(" ")


def ci_contains(haystack: str | None, needle: str | None) -> int | None:
    """``haystack LIKE '%needle%'`` under ``utf8mb4_unicode_ci``, wildcards literal."""
    if haystack is None or needle is None:
        return None
    return int(_fold(needle) in _fold(haystack))


def install_sqlite_functions(dbapi_connection: Any) -> None:
    """Register ``cgw_ci_key`` and ``cgw_ci_contains`` on a (sqlite3 / aiosqlite adapted)
    DB-API connection. Needed by every connection that writes the SQLite tables."""
    dbapi_connection.create_function("cgw_ci_key", 1, ci_key, deterministic=True)
    dbapi_connection.create_function("cgw_ci_contains", 2, ci_contains, deterministic=True)


# --------------------------------------------------------------------------- engine


def normalise_url(url: str) -> str:
    """Accept the guide's ``mysql+asyncmy://…`` and the async alternatives; plain
    ``mysql://`` / ``sqlite://`` get the async driver. Anything else is a ValueError."""
    parsed = make_url(url)
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("mysql", "mariadb"):
        driver = driver or "asyncmy"
        if driver not in ("asyncmy", "aiomysql"):
            raise ValueError(f"DATABASE_URL driver {driver!r}: use mysql+asyncmy or +aiomysql")
        query = dict(parsed.query)
        query.setdefault("charset", "utf8mb4")
        return parsed.set(drivername=f"mysql+{driver}", query=query).render_as_string(
            hide_password=False
        )
    if backend == "sqlite":
        if driver not in ("", "aiosqlite"):
            raise ValueError(f"DATABASE_URL driver {driver!r}: use sqlite+aiosqlite")
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    raise ValueError(f"DATABASE_URL scheme {parsed.drivername!r}: use mysql+asyncmy or sqlite")


def create_engine(url: str | None, **kw: Any) -> AsyncEngine:
    """An async engine for ``DATABASE_URL`` (``None`` -> :data:`DEFAULT_URL`)."""
    url = normalise_url(url or DEFAULT_URL)
    if url.startswith("sqlite"):
        return _sqlite_engine(url, **kw)
    kw.setdefault("pool_size", 10)
    kw.setdefault("max_overflow", 10)
    kw.setdefault("pool_recycle", 3600)
    kw.setdefault("pool_pre_ping", False)
    return create_async_engine(url, **kw)


def _sqlite_engine(url: str, **kw: Any) -> AsyncEngine:
    database = make_url(url).database
    memory = database in (None, "", ":memory:")
    if memory:
        # An in-memory database lives and dies with its connection: keep exactly one,
        # lent to one task at a time (a StaticPool would let two tasks' transactions
        # interleave on it).
        kw.setdefault("poolclass", AsyncAdaptedQueuePool)
        kw.setdefault("pool_size", 1)
        kw.setdefault("max_overflow", 0)
        kw.setdefault("pool_recycle", -1)
    kw.setdefault("connect_args", {"timeout": 30})
    engine = create_async_engine(url, **kw)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide where transactions start
        # (https://docs.sqlalchemy.org/en/20/dialects/sqlite.html#serializable-isolation-savepoints-transactional-ddl).
        dbapi_connection.isolation_level = None
        install_sqlite_functions(dbapi_connection)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        if not memory:
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the write lock up front: two deferred transactions that both read
        # and then write would otherwise fail with "database is locked" at once.
        write = conn.get_execution_options().get("cgw_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


async def prepare(engine: AsyncEngine) -> None:
    """SQLite: create the tables if missing. MySQL: nothing (the schema is the legacy's)."""
    if engine.dialect.name != "sqlite":
        return
    async with engine.connect() as conn:
        conn = await conn.execution_options(cgw_write=True)
        async with conn.begin():
            for stmt in SQLITE_DDL:
                await conn.exec_driver_sql(stmt)


def now() -> datetime:
    """Now in UTC as a naive datetime truncated to milliseconds (``DATETIME(3)``, and what
    JavaScript's ``new Date()`` can represent)."""
    t = datetime.now(UTC).replace(tzinfo=None)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)
