"""Fixtures of the migration-kit tests: Redis dbs 14 and 15, flushed around each test.

Session keys have fixed names (``session:{id}``), so these tests cannot share a db with
others by key prefix: they own dbs 14 (source) and 15 (target) and FLUSHDB them (never
FLUSHALL). MariaDB databases come from the root ``mysql_database`` factory.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from migrate_helpers import root

SRC_DB, DST_DB = 14, 15


def _url(db: int) -> str:
    return f"redis://{root.REDIS_HOST}:{root.REDIS_PORT}/{db}"


@pytest.fixture
def src() -> Iterator[redis.Redis]:
    """Redis db 14, empty (the migration source)."""
    root.need(root.redis_available(), "Redis is not reachable")
    r = redis.Redis(host=root.REDIS_HOST, port=root.REDIS_PORT, db=SRC_DB)
    r.flushdb()
    yield r
    r.flushdb()
    r.close()


@pytest.fixture
def dst() -> Iterator[redis.Redis]:
    """Redis db 15, empty (a migration target)."""
    root.need(root.redis_available(), "Redis is not reachable")
    r = redis.Redis(host=root.REDIS_HOST, port=root.REDIS_PORT, db=DST_DB)
    r.flushdb()
    yield r
    r.flushdb()
    r.close()


@pytest.fixture
def src_url(src: redis.Redis) -> str:
    return _url(SRC_DB)


@pytest.fixture
def dst_url(dst: redis.Redis) -> str:
    return _url(DST_DB)
