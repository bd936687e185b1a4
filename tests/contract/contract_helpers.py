"""Plain helpers for the contract tests (import as ``from contract_helpers import …``)."""

from __future__ import annotations

import contextlib
import json
import uuid
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import httpx

#: JavaScript ``Date.prototype.toISOString()``: exactly three fraction digits and ``Z``.
JS_ISO = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"
UUID4 = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
JSON_CT = "application/json; charset=utf-8"
SYSTEM_PROMPT = "You are a helpful customer service assistant."
PROVIDER_PATH = "/api/v1/services/aigc/text-generation/generation"


def new_uid() -> str:
    return "u-" + uuid.uuid4().hex[:12]


def new_marker() -> str:
    return "mk-" + uuid.uuid4().hex[:16]


@contextlib.contextmanager
def quiet_jwt() -> Iterator[None]:
    """Silence PyJWT's InsecureKeyLengthWarning: the legacy secret is what it is (the
    test stack's is 26 bytes), and pytest turns warnings into errors."""
    from jwt.warnings import InsecureKeyLengthWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        yield


def auth(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    """The §1 error shape: status, JSON content type, ``{"error": {"code", "message"}}``."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers.get("content-type") == JSON_CT, r.headers.get("content-type")
    body = r.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str)


def last_user_content(body: Any) -> str | None:
    """The content of the last ``user`` message of a provider request body."""
    try:
        messages = body["input"]["messages"]
    except (TypeError, KeyError):
        return None
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            c = m.get("content")
            return c if isinstance(c, str) else None
    return None


def sse_events(raw: str | Iterable[str]) -> list[Any]:
    """Parse ``data: <json>\\n\\n`` events (the contract's framing) into JSON values."""
    text = raw if isinstance(raw, str) else "".join(raw)
    out = []
    for block in text.split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: ") and "\n" not in block, repr(block)
        out.append(json.loads(block[len("data: ") :]))
    return out


def utf16_len(s: str) -> int:
    """JavaScript's ``String.length``: UTF-16 code units."""
    return len(s.encode("utf-16-le")) // 2


def create_session(
    http: httpx.Client, base: str, tok: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Create a session on chat-session ``base`` and return the session object (asserts 201)."""
    r = http.post(f"{base}/api/sessions", json=body or {}, headers=auth(tok))
    assert r.status_code == 201, (r.status_code, r.text)
    return dict(r.json())
