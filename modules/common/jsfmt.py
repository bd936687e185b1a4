"""JavaScript's formatting rules, so that both sides print the same bytes.

- :func:`js_len`: ``String.prototype.length`` (UTF-16 code units; an emoji counts 2).
- :func:`js_trim`: ``String.prototype.trim`` (ECMA-262 WhiteSpace + LineTerminator,
  which includes U+FEFF and excludes the C0 separators Python's ``str.strip`` removes).
- :func:`js_iso`: ``Date.prototype.toISOString`` (``2024-01-01T10:00:00.000Z``).
- :func:`parse_time`: a stored timestamp of either record shape -> epoch ms (§6).
- :func:`js_loads` / :func:`js_dumps`: ``JSON.parse`` / ``JSON.stringify`` (compact,
  raw UTF-8, numbers as JavaScript prints them, integer-like keys first as V8 orders them).

Example::

    js_dumps({"b": 1.0, "1": "é"}) == '{"1":"é","b":1}'.encode()
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson

# ECMA-262 §12.2 WhiteSpace (incl. Zs) and §12.3 LineTerminator.
_JS_WS = (
    "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def js_len(s: str) -> int:
    """Length in UTF-16 code units, as JavaScript's ``String.length`` counts."""
    return len(s) + sum(1 for ch in s if ord(ch) > 0xFFFF)


def js_trim(s: str) -> str:
    """JavaScript's ``String.prototype.trim``."""
    return s.strip(_JS_WS)


def now_ms() -> int:
    """``Date.now()``."""
    return int(datetime.now(UTC).timestamp() * 1000)


def js_iso(value: datetime | int | float) -> str:
    """``new Date(value).toISOString()``, truncated to milliseconds.

    A naive ``datetime`` is taken as UTC.
    """
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
        dt = dt.astimezone(UTC)
    else:
        ms = math.floor(value)
        dt = _EPOCH + timedelta(milliseconds=ms)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


# As deploy/legacy/lib/sessions.js reads stored times (ISO_RE, case-insensitive).
_ISO = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?"
    r"(?:(Z)|([+-])(\d{2}):?(\d{2}))?$",
    re.IGNORECASE,
)


def parse_time(value: object) -> int | None:
    """A stored timestamp -> epoch milliseconds (truncated), or ``None`` if unreadable.

    Accepts ISO-8601 strings with any number of fraction digits and ``Z`` or an offset
    (JavaScript's and Python's ``isoformat()``; no offset reads as UTC) and non-negative
    epoch numbers: seconds below 1e11, milliseconds above (legacy-api.md §6). Mirrors the
    legacy reader, ``Date.UTC`` quirks included (a day past the month's end rolls over,
    years 0..99 are 1900..1999); numbers are rounded to microseconds first so that float
    noise (``1704103200.123 * 1000``) does not lose a millisecond.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            return None
        micros = math.floor(value * 1e6 + 0.5) if value < 1e11 else math.floor(value * 1e3 + 0.5)
        return micros // 1000
    if not isinstance(value, str):
        return None
    m = _ISO.match(js_trim(value))
    if m is None:
        return None
    y, mo, d, h, mi, s, frac, z, sign, oh, om = m.groups()
    year, month, day, hour, minute, sec = int(y), int(mo), int(d), int(h), int(mi), int(s or 0)
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59 and sec <= 59):
        return None
    if year <= 99:
        year += 1900
    base = datetime(year, month, 1, tzinfo=UTC) + timedelta(
        days=day - 1, hours=hour, minutes=minute, seconds=sec
    )
    ms = (base - _EPOCH) // timedelta(milliseconds=1) + int(((frac or "") + "000")[:3])
    if not z and sign:
        offset = (int(oh) * 60 + int(om)) * 60000
        ms = ms - offset if sign == "+" else ms + offset
    return ms


# --------------------------------------------------------------------------- JSON


class JSONError(ValueError):
    """Not JSON as ``JSON.parse`` reads it."""


def _reject_constant(name: str) -> Any:
    raise JSONError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def js_loads(text: str | bytes) -> Any:
    """``JSON.parse`` of a UTF-8 text (invalid bytes become U+FFFD, as Node decodes).

    orjson reads what it can; whatever it refuses (a lone surrogate escape, a number
    beyond a double's range, invalid UTF-8, nesting past 1 024, or invalid JSON) is read
    again by the standard library's parser, which decides. The two agree on everything
    orjson accepts, except integers past 64 bits: orjson reads them as doubles, as
    JavaScript does, and js_dumps prints both the same way (tests/modules/test_jsfmt.py).
    The stdlib alone was two thirds of a session GET's record parsing (bench/README.md).
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", errors="replace")
    try:
        return _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        raise JSONError(str(exc)) from exc


def js_number(f: float) -> str:
    """``Number.prototype.toString()`` of a double (``null`` for NaN/Infinity, as JSON)."""
    if not math.isfinite(f):
        return "null"
    if f == 0:
        return "0"
    sign = "-" if f < 0 else ""
    _, digit_tuple, exp = Decimal(repr(abs(f))).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    assert isinstance(exp, int)
    exp += len(digit_tuple) - len(digits)
    k = len(digits)
    n = exp + k
    if k <= n <= 21:
        out = digits + "0" * (n - k)
    elif 0 < n <= 21:
        out = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        mant = digits if k == 1 else digits[0] + "." + digits[1:]
        out = f"{mant}e{'+' if e >= 0 else '-'}{abs(e)}"
    return sign + out


_MAX_SAFE = 2**53
_ARRAY_INDEX_MAX = 2**32 - 2
_INDEX_KEY = re.compile(r"^(?:0|[1-9][0-9]*)$")


def _escape_str(s: str) -> bytes:
    """A JSON string literal as ``JSON.stringify`` writes it, lone surrogates escaped."""
    out: list[str] = []
    for ch in s:
        if 0xD800 <= ord(ch) <= 0xDFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(orjson.dumps(ch).decode()[1:-1])
    return ('"' + "".join(out) + '"').encode()


def _has_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _is_index(key: str) -> bool:
    return bool(_INDEX_KEY.match(key)) and int(key) <= _ARRAY_INDEX_MAX


def _js_value(v: Any) -> Any:
    if isinstance(v, str):
        return orjson.Fragment(_escape_str(v)) if _has_surrogate(v) else v
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int):
        if -_MAX_SAFE <= v <= _MAX_SAFE:
            return v
        try:
            return orjson.Fragment(js_number(float(v)).encode())
        except OverflowError:
            return None
    if isinstance(v, float):
        return orjson.Fragment(js_number(v).encode())
    if isinstance(v, dict):
        keys = list(v)
        index = sorted((k for k in keys if _is_index(k)), key=int)
        if index:
            keys = index + [k for k in keys if not _is_index(k)]
        if any(_has_surrogate(k) for k in keys):
            parts = [_escape_str(k) + b":" + orjson.dumps(_js_value(v[k])) for k in keys]
            return orjson.Fragment(b"{" + b",".join(parts) + b"}")
        return {k: _js_value(v[k]) for k in keys}
    if isinstance(v, list | tuple):
        return [_js_value(x) for x in v]
    raise TypeError(f"{type(v).__name__} is not JSON-serialisable")


def _js_fast(v: Any) -> Any:
    """:func:`_js_value` without the per-string surrogate checks: orjson refuses a lone
    surrogate, and :func:`js_dumps` then takes the exact path. The common case (plain
    strings, small ints, no index-like keys) allocates nothing but the output."""
    t = type(v)
    if t is str or t is bool or v is None:
        return v
    if t is int:
        return v if -_MAX_SAFE <= v <= _MAX_SAFE else _js_value(v)
    if t is dict:
        if any(k[:1].isdigit() for k in v if type(k) is str):
            return _js_value(v)  # JavaScript puts array-index keys first
        return {k: _js_fast(x) for k, x in v.items()}
    if t is list or t is tuple:
        return [_js_fast(x) for x in v]
    return _js_value(v)  # floats, subclasses, the unserialisable


def _plain(v: Any) -> bool:
    """True when orjson writes ``v`` exactly as ``JSON.stringify`` does without any help:
    strings, booleans, null, safe integers, and lists and objects of them whose keys do
    not start with a digit (no array-index key to move first). The common record passes
    this check without a copy being made."""
    t = type(v)
    if t is str or t is bool or v is None:
        return True
    if t is int:
        return -_MAX_SAFE <= v <= _MAX_SAFE
    if t is dict:
        for k, x in v.items():
            if type(k) is not str or k[:1].isdigit() or not _plain(x):
                return False
        return True
    if t is list:
        return all(map(_plain, v))
    return False


def js_dumps(value: Any) -> bytes:
    """``JSON.stringify(value)`` as UTF-8 bytes."""
    try:
        if _plain(value):
            return orjson.dumps(value)
        return orjson.dumps(_js_fast(value))
    except orjson.JSONEncodeError:  # a lone surrogate (or worse): the exact, slow way
        return orjson.dumps(_js_value(value))
