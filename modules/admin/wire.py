"""Rows -> the contract's JSON objects (legacy-api.md §4 message, §5 resources)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from modules.common.jsfmt import js_iso

__all__ = ["WIRE", "by_code_point", "contact", "conversation", "label", "message", "team", "user"]

Row = Mapping[Any, Any]


def user(r: Row) -> dict[str, Any]:
    return {
        "id": r["id"],
        "email": r["email"],
        "name": r["name"],
        "role": r["role"],
        "teamId": r["team_id"],
        "createdAt": js_iso(r["created_at"]),
        "updatedAt": js_iso(r["updated_at"]),
    }


def team(r: Row) -> dict[str, Any]:
    return {
        "id": r["id"],
        "name": r["name"],
        "description": r["description"],
        "createdAt": js_iso(r["created_at"]),
        "updatedAt": js_iso(r["updated_at"]),
    }


def label(r: Row) -> dict[str, Any]:
    return {
        "id": r["id"],
        "title": r["title"],
        "color": r["color"],
        "createdAt": js_iso(r["created_at"]),
        "updatedAt": js_iso(r["updated_at"]),
    }


def contact(r: Row) -> dict[str, Any]:
    return {
        "id": r["id"],
        "name": r["name"],
        "email": r["email"],
        "phone": r["phone"],
        "externalId": r["external_id"],
        "createdAt": js_iso(r["created_at"]),
        "updatedAt": js_iso(r["updated_at"]),
    }


def by_code_point(titles: Iterable[str]) -> list[str]:
    """Plain code-point order (Python's ``str`` order), not the SQL collation's."""
    return sorted(titles)


def conversation(r: Row, titles: Iterable[str]) -> dict[str, Any]:
    return {
        "id": r["id"],
        "sessionId": r["session_id"],
        "contactId": r["contact_id"],
        "status": r["status"],
        "assigneeId": r["assignee_id"],
        "teamId": r["team_id"],
        "labels": by_code_point(titles),
        "createdAt": js_iso(r["created_at"]),
        "updatedAt": js_iso(r["updated_at"]),
    }


def message(r: Row, session_id: str | None) -> dict[str, Any]:
    return {
        "messageId": r["message_uid"],
        "sessionId": session_id,
        "from": r["sender_type"],
        "senderId": r["sender_id"],
        "text": r["content"],
        "createdAt": js_iso(r["created_at"]),
    }


#: Wire function of each plain resource kind (the path segment under /api/admin/).
WIRE = {"users": user, "teams": team, "labels": label, "contacts": contact}
