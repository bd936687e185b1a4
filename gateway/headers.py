"""Header rules shared by every path that forwards a request (HTTP, WebSocket, shadow).

Hop-by-hop headers belong to one connection and are never forwarded (RFC 9110 §7.6.1):
``Connection`` and every header it names, plus ``Proxy-Connection``, ``Keep-Alive``,
``TE``, ``Transfer-Encoding`` and ``Upgrade``. ``Content-Length`` is dropped whenever
``Transfer-Encoding`` is present (RFC 9112 §6.1: a message with both is a smuggling
attempt or an error, and the chunked framing wins).
"""

from __future__ import annotations

import os

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

# Headers the WebSocket client library sets itself on the upstream handshake.
WS_HANDSHAKE = frozenset(
    {
        b"host",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"sec-websocket-accept",
        b"content-length",
    }
)

REQUEST_ID = b"x-request-id"


def connection_tokens(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Header names listed in ``Connection`` (lower-cased)."""
    names: set[bytes] = set()
    for k, v in headers:
        if k == b"connection":
            names.update(t.strip().lower() for t in v.split(b",") if t.strip())
    return frozenset(names)


def end_to_end(
    headers: list[tuple[bytes, bytes]], drop: frozenset[bytes] = frozenset()
) -> list[tuple[bytes, bytes]]:
    """``headers`` (lower-case names) less hop-by-hop ones, those named in Connection,
    ``drop``, and Content-Length when Transfer-Encoding is present."""
    named = connection_tokens(headers)
    chunked = False
    for k, _ in headers:
        if k == b"transfer-encoding":
            chunked = True
            break
    out = []
    for k, v in headers:
        if k in HOP_BY_HOP or k in named or k in drop or (chunked and k == b"content-length"):
            continue
        out.append((k, v))
    return out


# Request ids are cut from one os.urandom() call per 256 ids: a getrandom() syscall per
# request was 8 % of the gateway's own CPU on the in-process path (bench/README.md).
_ID_BATCH = 256
_ids: list[bytes] = []
os.register_at_fork(after_in_child=_ids.clear)  # a forked child must not reuse the parent's


def new_request_id() -> bytes:
    """32 lower-case hex characters from 16 random bytes (``os.urandom``)."""
    if not _ids:
        raw = os.urandom(16 * _ID_BATCH).hex().encode("ascii")
        _ids.extend(raw[i : i + 32] for i in range(0, len(raw), 32))
    return _ids.pop()


def valid_request_id(value: bytes) -> bool:
    """A client-supplied X-Request-Id is kept if short and printable ASCII."""
    return 0 < len(value) <= 128 and all(0x21 <= c <= 0x7E for c in value)


def request_id(client_rid: bytes | None) -> bytes:
    """The client's X-Request-Id when it is valid (kept end to end), else a new one."""
    return client_rid if client_rid and valid_request_id(client_rid) else new_request_id()
