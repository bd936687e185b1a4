"""The split decision: stable buckets, monotonic ramps, sticky keys, force tokens."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from gateway.config import Sticky
from gateway.split import (
    BUCKETS,
    bucket,
    check_force_token,
    goes_new,
    jwt_sub,
    mint_force_token,
    sticky_key,
)


def fake_jwt(payload: object) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return f"{b64(b'{}')}.{b64(json.dumps(payload).encode())}.sig"


@given(st.text(min_size=1))
def test_bucket_is_in_range_and_deterministic(key: str) -> None:
    assert 0 <= bucket(key) < BUCKETS
    assert bucket(key) == bucket(key)


def test_bucket_is_stable_across_processes() -> None:
    keys = ["u-1", "u-42", "αβγ", "x" * 300]
    code = "import sys; from gateway.split import bucket; print([bucket(k) for k in sys.argv[1:]])"
    out = subprocess.run(
        [sys.executable, "-c", code, *keys], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str([bucket(k) for k in keys])


@given(st.text(min_size=1), st.integers(0, BUCKETS), st.integers(0, BUCKETS))
def test_raising_the_percentage_only_moves_keys_to_new(key: str, a: int, b: int) -> None:
    low, high = min(a, b), max(a, b)
    if goes_new(low, key):
        assert goes_new(high, key)


def test_percentage_matches_share_of_keys() -> None:
    keys = [f"user-{i}" for i in range(20000)]
    share = sum(goes_new(2500, k) for k in keys) / len(keys)
    assert 0.23 < share < 0.27


def test_zero_and_hundred_percent_are_absolute() -> None:
    assert not goes_new(0, "anyone") and goes_new(BUCKETS, "anyone")


def test_jwt_sub_is_read_without_verification() -> None:
    assert jwt_sub(fake_jwt({"sub": "u-7", "role": "customer"})) == "u-7"


@given(st.text())
def test_jwt_sub_never_crashes_on_garbage(token: str) -> None:
    assert jwt_sub(token) is None or isinstance(jwt_sub(token), str)


def test_jwt_sub_rejects_non_string_or_empty_sub() -> None:
    assert jwt_sub(fake_jwt({"sub": 42})) is None
    assert jwt_sub(fake_jwt({"sub": ""})) is None
    assert jwt_sub(fake_jwt([1, 2])) is None
    assert jwt_sub("a.!!!.c") is None


def test_sticky_key_sources() -> None:
    token = fake_jwt({"sub": "u-9"})
    headers = [
        (b"authorization", f"Bearer {token}".encode()),
        (b"x-user", b"h-1"),
        (b"cookie", b"a=1; sid=c-1"),
    ]
    qs = b"user=q-1&token=" + fake_jwt({"sub": "ws-1"}).encode()
    assert sticky_key(Sticky("jwt.sub"), headers, qs, {}) == "u-9"
    assert sticky_key(Sticky("jwt.sub"), headers, qs, {}, websocket=True) == "ws-1"  # ?token= wins
    assert sticky_key(Sticky("header", "x-user"), headers, qs, {}) == "h-1"
    assert sticky_key(Sticky("cookie", "sid"), headers, qs, {}) == "c-1"
    assert sticky_key(Sticky("query", "user"), headers, qs, {}) == "q-1"
    assert sticky_key(Sticky("path", "id"), headers, qs, {"id": "p-1"}) == "p-1"
    assert sticky_key(Sticky("none"), headers, qs, {}) is None


def test_sticky_key_absent_is_none() -> None:
    assert sticky_key(Sticky("jwt.sub"), [(b"authorization", b"Basic abc")], b"", {}) is None
    assert sticky_key(Sticky("header", "x-user"), [], b"", {}) is None


def test_force_token_round_trip() -> None:
    token = mint_force_token("ops-secret", "new", 60, now=1000)
    assert check_force_token("ops-secret", token, now=1001) == ("new", "ok")


def test_force_token_expired_tampered_unsigned_or_disabled_is_ignored() -> None:
    token = mint_force_token("ops-secret", "new", 60, now=1000)
    assert check_force_token("ops-secret", token, now=1060) == (None, "expired")
    assert check_force_token("other", token, now=1001) == (None, "bad_signature")
    tampered = token.replace("v1.new.", "v1.legacy.")
    assert check_force_token("ops-secret", tampered, now=1001) == (None, "bad_signature")
    assert check_force_token("ops-secret", "new", now=1001) == (None, "malformed")
    assert check_force_token(None, token, now=1001) == (None, "disabled")
