"""Input rules of chat-admin (legacy-api.md §5, §6 "chat-admin"): pure functions, no I/O.

Body validators return the columns to write (``{"team_id": None}`` clears, an absent key
leaves the column alone); every violation is a 400 :class:`~modules.common.errors.ApiError`.
The rules are JavaScript's: lengths in UTF-16 code units, ``null`` is "not given" for a
required field and "clear" for a nullable one, an integer is any JSON number with no
fraction (``3.0`` is ``3``), booleans are not numbers.

Example::

    user_columns({"email": "A@B.io", "name": "Ann"}, create=True)
    # {"email": "a@b.io", "name": "Ann", "role": "agent"}
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from modules.common.errors import bad_request
from modules.common.jsfmt import js_len

__all__ = [
    "MAX_SAFE_INTEGER",
    "STATUSES",
    "USER_ROLES",
    "contact_columns",
    "conversation_columns",
    "enum_query",
    "label_columns",
    "label_title",
    "lower",
    "page_params",
    "path_id",
    "query_int",
    "storable",
    "team_columns",
    "user_columns",
]

MAX_SAFE_INTEGER = 2**53 - 1
USER_ROLES = ("agent", "admin")
STATUSES = ("open", "pending", "resolved")
DEFAULT_COLOR = "#1f93ff"
_TEXT_MAX_BYTES = 65535  # TEXT column: team description

_DIGITS = re.compile(r"[0-9]+")
_EMAIL = re.compile(r"[^@]+@[^@]+")
_TITLE = re.compile(r"[a-z0-9_-]{1,64}")
_COLOR = re.compile(r"#[0-9a-fA-F]{6}")

#: ``ApiRequest.query``: the first value of a query parameter, or ``None``.
Query = Callable[[str], str | None]


def lower(s: str) -> str:
    """JavaScript's ``toLowerCase`` (full Unicode mapping, final sigma included)."""
    return s.lower()


# --------------------------------------------------------------------------- path, query


def path_id(raw: str) -> int | None:
    """A path id: plain decimal digits, 1..2**53-1; anything else addresses nothing."""
    if not _DIGITS.fullmatch(raw):
        return None
    n = int(raw)
    return n if 1 <= n <= MAX_SAFE_INTEGER else None


def query_int(
    query: Query, name: str, *, lo: int = 1, hi: int = MAX_SAFE_INTEGER, default: int | None = None
) -> int | None:
    raw = query(name)
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw):
        raise bad_request(f"{name} must be a decimal integer")
    n = int(raw)
    if not lo <= n <= hi:
        raise bad_request(f"{name} must be between {lo} and {hi}")
    return n


def page_params(query: Query) -> tuple[int, int]:
    page = query_int(query, "page", default=1)
    per_page = query_int(query, "perPage", hi=100, default=25)
    assert page is not None and per_page is not None
    return page, per_page


def enum_query(query: Query, name: str, allowed: Sequence[str]) -> str | None:
    raw = query(name)
    if raw is None:
        return None
    if raw not in allowed:
        raise bad_request(f"{name} must be one of {', '.join(allowed)}")
    return raw


# --------------------------------------------------------------------------- body fields


def _given(v: object) -> bool:
    return v is not None


def _string(body: Mapping[str, Any], name: str, *, lo: int = 1, hi: int = 255) -> str | None:
    v = body.get(name)
    if v is None:
        return None
    if not isinstance(v, str):
        raise bad_request(f"{name} must be a string")
    if not lo <= js_len(v) <= hi:
        raise bad_request(f"{name} must be {lo}..{hi} characters")
    return storable(v)


def _required_string(body: Mapping[str, Any], name: str, create: bool) -> str | None:
    v = _string(body, name)
    if v is None and create:
        raise bad_request(f"{name} is required")
    return v


def _nullable_string(body: Mapping[str, Any], name: str, hi: int) -> tuple[bool, str | None]:
    """(given, value): absent -> (False, None); null -> (True, None) clears."""
    if name not in body:
        return False, None
    if body[name] is None:
        return True, None
    return True, _string(body, name, lo=0, hi=hi)


def _nullable_id(body: Mapping[str, Any], name: str) -> tuple[bool, int | None]:
    if name not in body:
        return False, None
    v = body[name]
    if v is None:
        return True, None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise bad_request(f"{name} must be a positive integer or null")
    if isinstance(v, float) and not v.is_integer():
        raise bad_request(f"{name} must be a positive integer or null")
    n = int(v)
    if n < 1:
        raise bad_request(f"{name} must be a positive integer or null")
    return True, n


def _one_of(body: Mapping[str, Any], name: str, allowed: Sequence[str]) -> str | None:
    v = body.get(name)
    if v is None:
        return None
    if not isinstance(v, str) or v not in allowed:
        raise bad_request(f"{name} must be one of {', '.join(allowed)}")
    return v


def label_title(body: Mapping[str, Any], *, required: bool) -> str | None:
    """``title`` lower-cased, then 1..64 of ``[a-z0-9_-]``."""
    v = body.get("title")
    if v is None:
        if required:
            raise bad_request("title is required")
        return None
    if not isinstance(v, str):
        raise bad_request("title must be a string")
    title = lower(v)
    if not _TITLE.fullmatch(title):
        raise bad_request("title must be 1..64 characters of [a-z0-9_-]")
    return title


# --------------------------------------------------------------------------- resources


def user_columns(body: Mapping[str, Any], *, create: bool) -> dict[str, Any]:
    cols: dict[str, Any] = {}
    email = body.get("email")
    if _given(email):
        if not isinstance(email, str):
            raise bad_request("email must be a string")
        email = lower(email)
        if not _EMAIL.fullmatch(email) or js_len(email) > 255:
            raise bad_request("email is not valid")
        cols["email"] = storable(email)
    elif create:
        raise bad_request("email is required")
    name = _required_string(body, "name", create)
    if name is not None:
        cols["name"] = name
    role = _one_of(body, "role", USER_ROLES)
    if role is not None:
        cols["role"] = role
    elif create:
        cols["role"] = "agent"
    given, team_id = _nullable_id(body, "teamId")
    if given:
        cols["team_id"] = team_id
    return cols


def team_columns(body: Mapping[str, Any], *, create: bool) -> dict[str, Any]:
    cols: dict[str, Any] = {}
    name = _required_string(body, "name", create)
    if name is not None:
        cols["name"] = name
    given, description = _nullable_string(body, "description", hi=2**62)
    if given:
        if description is not None and _utf8_len(description) > _TEXT_MAX_BYTES:
            raise bad_request("description is too long")
        cols["description"] = description
    return cols


def label_columns(body: Mapping[str, Any], *, create: bool) -> dict[str, Any]:
    cols: dict[str, Any] = {}
    title = label_title(body, required=create)
    if title is not None:
        cols["title"] = title
    color = body.get("color")
    if _given(color):
        if not isinstance(color, str) or not _COLOR.fullmatch(color):
            raise bad_request("color must be #rrggbb")
        cols["color"] = color
    elif create:
        cols["color"] = DEFAULT_COLOR
    return cols


def contact_columns(body: Mapping[str, Any], *, create: bool) -> dict[str, Any]:
    cols: dict[str, Any] = {}
    name = _required_string(body, "name", create)
    if name is not None:
        cols["name"] = name
    for field, column, hi in (("email", "email", 255), ("phone", "phone", 64),
                              ("externalId", "external_id", 64)):  # fmt: skip
        given, value = _nullable_string(body, field, hi)
        if given or create:
            cols[column] = value
    return cols


def conversation_columns(body: Mapping[str, Any]) -> dict[str, Any]:
    cols: dict[str, Any] = {}
    status = _one_of(body, "status", STATUSES)
    if status is not None:
        cols["status"] = status
    for field, column in (("assigneeId", "assignee_id"), ("teamId", "team_id")):
        given, value = _nullable_id(body, field)
        if given:
            cols[column] = value
    return cols


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def storable(s: str) -> str:
    """What MySQL receives from Node for ``s``: a lone surrogate (possible in JSON's
    ``"\\ud800"``) is written as U+FFFD, as ``Buffer.from(s, 'utf8')`` does."""
    return _LONE_SURROGATE.sub("\ufffd", s)


def _utf8_len(s: str) -> int:
    """``Buffer.byteLength(s, 'utf8')``: a lone surrogate is written as U+FFFD (3 bytes)."""
    return len(s.encode("utf-8", errors="surrogatepass"))
