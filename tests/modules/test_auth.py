import base64
import json
import logging
import time

import pytest
from module_helpers import SECRET, token

import modules.common.auth as auth_mod
from modules.common.auth import InvalidToken, User, authenticate, verify_token
from modules.common.errors import ApiError


def _b64(obj: object) -> str:
    raw = json.dumps(obj).encode() if not isinstance(obj, bytes) else obj
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unauthorized(header: str | None, secret: str | None = SECRET) -> None:
    with pytest.raises(ApiError) as info:
        authenticate(header, secret)
    assert (info.value.status, info.value.code) == (401, "unauthorized")


def test_valid_token_gives_sub_and_role():
    assert authenticate("Bearer " + token("u-7", "agent"), SECRET) == User("u-7", "agent")


@pytest.mark.parametrize(
    "header",
    [None, "", "bearer x", "Bearer", "Bearer  " + "x", "Basic abc", "Token abc"],
)
def test_missing_or_malformed_header_is_401(header):
    _unauthorized(header)


def test_lowercase_scheme_is_401():
    _unauthorized("bearer " + token())


def test_double_space_after_bearer_is_401():
    _unauthorized("Bearer  " + token())


def test_wrong_secret_is_401():
    _unauthorized("Bearer " + token(secret="other-secret"))


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_other_hmac_algorithms_are_401(alg):
    _unauthorized("Bearer " + token(algorithm=alg))


def test_alg_none_is_401():
    unsigned = f"{_b64({'alg': 'none'})}.{_b64({'sub': 'u', 'role': 'admin', 'exp': 9e9})}."
    _unauthorized("Bearer " + unsigned)


def test_missing_exp_is_401():
    _unauthorized("Bearer " + token(exp_in=None))


def test_non_numeric_exp_is_401():
    _unauthorized("Bearer " + token(exp_in=None, exp=str(int(time.time()) + 60)))


def test_boolean_exp_is_401():
    _unauthorized("Bearer " + token(exp_in=None, exp=True))


def test_exp_equal_to_now_is_expired_without_tolerance():
    now = 1_700_000_000
    tok = token(exp_in=None, exp=now)
    with pytest.raises(InvalidToken):
        verify_token(tok, SECRET, now=now + 0.2)
    assert verify_token(tok, SECRET, now=now - 1).sub == "u-1"


def test_future_nbf_is_401_and_past_nbf_is_accepted():
    _unauthorized("Bearer " + token(nbf=int(time.time()) + 60))
    assert authenticate("Bearer " + token(nbf=int(time.time()) - 5), SECRET).sub == "u-1"


def test_aud_and_iss_are_not_checked():
    assert authenticate("Bearer " + token(aud="someone", iss="x"), SECRET).role == "customer"


@pytest.mark.parametrize("sub", [42, "", None])
def test_sub_that_is_not_a_non_empty_string_is_401(sub):
    _unauthorized("Bearer " + token(sub=sub))


@pytest.mark.parametrize("role", ["root", "", "Admin"])
def test_unknown_role_is_401(role):
    _unauthorized("Bearer " + token(role=role))


def test_tampered_signature_is_401():
    tok = token()
    head, payload, sig = tok.split(".")
    flipped = sig[:-1] + ("A" if sig[-1] != "A" else "B")
    _unauthorized(f"Bearer {head}.{payload}.{flipped}")


def test_trailing_garbage_after_token_is_401():
    _unauthorized("Bearer " + token() + " ")


def test_missing_secret_is_401_and_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(auth_mod, "_warned_no_secret", False)
    with caplog.at_level(logging.WARNING, logger="modules.auth"):
        _unauthorized("Bearer " + token(), secret=None)
        _unauthorized("Bearer " + token(), secret="")
    assert sum("JWT_SECRET_KEY" in r.getMessage() for r in caplog.records) == 1


def test_a_verified_token_is_checked_against_the_clock_again_on_every_use():
    now = 1_700_000_000
    tok = token(exp_in=None, exp=now + 10, nbf=now - 5)
    assert verify_token(tok, SECRET, now=now).sub == "u-1"  # verified, now cached
    assert (tok, SECRET) in auth_mod._verified
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(tok, SECRET, now=now + 10)
    with pytest.raises(InvalidToken, match="not active"):
        verify_token(tok, SECRET, now=now - 6)
    assert verify_token(tok, SECRET, now=now + 9).role == "customer"


def test_the_cache_never_accepts_a_token_under_another_secret_nor_keeps_failures():
    tok = token()
    assert verify_token(tok, SECRET).sub == "u-1"
    with pytest.raises(InvalidToken, match="bad signature"):
        verify_token(tok, "another-secret-of-the-same-length-000000")
    head, payload, sig = tok.split(".")
    bad = f"{head}.{payload}.{sig[:-1]}{'A' if sig[-1] != 'A' else 'B'}"
    for _ in range(2):
        with pytest.raises(InvalidToken):
            verify_token(bad, SECRET)
    assert (bad, SECRET) not in auth_mod._verified


def test_the_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(auth_mod, "_VERIFIED_MAX", 3)
    auth_mod._verified.clear()
    for i in range(7):
        verify_token(token(sub=f"u-{i}"), SECRET)
        assert len(auth_mod._verified) <= 3
