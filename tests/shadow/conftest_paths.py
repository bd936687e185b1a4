"""Paths and URLs for the shadow tests that need MariaDB (plain helpers, not fixtures)."""

from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def schema_sql() -> list[str]:
    """The unchanged production schema, statement by statement."""
    with open(os.path.join(ROOT, "deploy", "legacy", "schema.sql"), encoding="utf-8") as fh:
        text = "\n".join(line for line in fh if not line.lstrip().startswith("--"))
    return [s.strip() for s in text.split(";") if s.strip()]


def mysql_url_for(db: str) -> str:
    host = os.environ.get("TEST_MYSQL_HOST", "127.0.0.1")
    port = os.environ.get("TEST_MYSQL_PORT", "3306")
    return f"mysql+asyncmy://root@{host}:{port}/{db}"
