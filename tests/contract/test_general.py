"""§1 conventions and §6 "Requests and auth", on all four services."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import httpx
import pytest
from contract_helpers import JSON_CT, assert_error, auth, create_session, quiet_jwt

SERVICES = ["core", "ai", "session", "admin"]
SERVICE_NAMES = {
    "core": "chat-core",
    "ai": "ai-service",
    "session": "chat-session",
    "admin": "chat-admin",
}
MIB = 1024 * 1024

# A protected request per service, and what it answers once authenticated as `admin`
# (the role every service lets through): a status past the 401 check.
PROBES: dict[str, tuple[str, str, Any, int]] = {
    "core": ("POST", "/api/messages", {}, 400),
    "ai": ("POST", "/api/ai/chat", {}, 400),
    "session": ("GET", "/api/sessions?userId={sub}", None, 200),
    "admin": ("GET", "/api/admin/stats", None, 200),
}

# A known path and a method it does not route.
UNROUTED = {
    "core": ("PUT", "/api/messages"),
    "ai": ("GET", "/api/ai/chat"),
    "session": ("PUT", "/api/sessions"),
    "admin": ("PUT", "/api/admin/users"),
}

# A body-taking endpoint per service, the role that passes the role check, and a JSON body
# builder whose validation fails only because of its size (so "accepted" shows as 400/201).
BODY_ENDPOINTS: dict[str, tuple[str, str]] = {
    "core": ("/api/messages", "customer"),
    "ai": ("/api/ai/chat", "customer"),
    "session": ("/api/sessions", "customer"),
    "admin": ("/api/admin/teams", "admin"),
}


def base(target, service: str) -> str:
    return str(getattr(target, service))


def probe(http: httpx.Client, target, service: str, headers: dict[str, str], sub: str):
    method, path, body, _ = PROBES[service]
    url = base(target, service) + path.format(sub=sub)
    return http.request(method, url, json=body, headers=headers)


def b64url(obj: object) -> str:
    raw = json.dumps(obj, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def padded_body(size: int, fields: dict[str, Any]) -> bytes:
    """A JSON object of exactly ``size`` bytes: ``fields`` plus an unknown ``pad`` string."""
    head = json.dumps(fields, separators=(",", ":"))[:-1]
    head += ("," if fields else "") + '"pad":"'
    n = size - len(head.encode()) - 2
    assert n >= 0
    out = (head + "a" * n + '"}').encode()
    assert len(out) == size
    return out


# --------------------------------------------------------------------------- health


def health_name(target, service):
    """§6 "The gateway": /health on the gateway's port is the gateway's own, not proxied."""
    return "chat-gateway" if target.name.startswith("gateway") else SERVICE_NAMES[service]


@pytest.mark.parametrize("service", SERVICES)
def test_health_without_token_is_ok_with_service_name(target, http, service):
    r = http.get(base(target, service) + "/health")
    assert r.status_code == 200
    assert r.headers["content-type"] == JSON_CT
    assert r.json() == {"status": "ok", "service": health_name(target, service)}


@pytest.mark.parametrize("service", SERVICES)
def test_health_with_trailing_slash_is_ok(target, http, service):
    r = http.get(base(target, service) + "/health/")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "service": health_name(target, service)}


# --------------------------------------------------------------------------- 404


@pytest.mark.parametrize("service", SERVICES)
def test_unknown_path_without_token_is_404_before_401(target, http, service):
    r = http.get(base(target, service) + "/api/no-such-thing")
    assert_error(r, 404, "not_found")


@pytest.mark.parametrize("service", SERVICES)
def test_unknown_path_with_token_is_404(target, http, token, service):
    r = http.post(
        base(target, service) + "/api/no-such-thing", json={}, headers=auth(token(role="admin"))
    )
    assert_error(r, 404, "not_found")


@pytest.mark.parametrize("service", SERVICES)
def test_unrouted_method_on_known_path_is_404_not_405(target, http, token, service):
    method, path = UNROUTED[service]
    r = http.request(method, base(target, service) + path, headers=auth(token(role="admin")))
    assert_error(r, 404, "not_found")


@pytest.mark.parametrize("service", SERVICES)
def test_unrouted_method_without_token_is_404(target, http, service):
    method, path = UNROUTED[service]
    r = http.request(method, base(target, service) + path)
    assert_error(r, 404, "not_found")


@pytest.mark.parametrize("service", SERVICES)
def test_api_path_with_one_trailing_slash_is_routed(target, http, token, uid, service):
    sub = uid()
    method, path, body, expected = PROBES[service]
    path = path.format(sub=sub)
    path = path.replace("?", "/?") if "?" in path else path + "/"
    r = http.request(
        method, base(target, service) + path, json=body, headers=auth(token(sub, "admin"))
    )
    assert r.status_code == expected, r.text


# --------------------------------------------------------------------------- 401


def raw_jwt(claims: dict[str, Any], secret: str, algorithm: str = "HS256") -> str:
    import jwt

    with quiet_jwt():
        return str(jwt.encode(claims, secret, algorithm=algorithm))


def authorization_variant(variant: str, target, token, sub: str) -> str:
    """The ``Authorization`` value of a bad-credentials case ("" = no header)."""
    now = int(time.time())
    secret = target.stack.jwt_secret
    alg_none = (
        b64url({"alg": "none", "typ": "JWT"})
        + "."
        + b64url({"sub": sub, "role": "admin", "exp": now + 3600})
        + "."
    )
    cases = {
        "no_header": lambda: "",
        "lowercase_bearer": lambda: f"bearer {token(sub, 'admin')}",
        "uppercase_bearer": lambda: f"BEARER {token(sub, 'admin')}",
        "two_spaces": lambda: f"Bearer  {token(sub, 'admin')}",
        "basic_scheme": lambda: "Basic dXNlcjpwYXNz",
        # h11 refuses a header value ending in a space, so "Bearer " cannot be sent.
        "bearer_without_token": lambda: "Bearer",
        "garbage_token": lambda: "Bearer not.a.jwt",
        "bad_signature": lambda: f"Bearer {token(sub, 'admin', secret='other-secret-0123456789')}",
        "expired": lambda: f"Bearer {token(sub, 'admin', exp_in=-5)}",
        "exp_missing": lambda: f"Bearer {token(sub, 'admin', exp_in=None)}",
        "exp_string": lambda: f"Bearer {token(sub, 'admin', exp_in=None, exp=str(now + 3600))}",
        "nbf_future": lambda: f"Bearer {token(sub, 'admin', nbf=now + 600)}",
        "alg_hs512": lambda: f"Bearer {token(sub, 'admin', algorithm='HS512')}",
        "alg_none": lambda: f"Bearer {alg_none}",
        "unknown_role": lambda: f"Bearer {token(sub, 'superuser')}",
        "role_missing": lambda: f"Bearer {raw_jwt({'sub': sub, 'exp': now + 3600}, secret)}",
        "numeric_sub": lambda: f"Bearer {token(42, 'admin')}",
        "empty_sub": lambda: f"Bearer {token('', 'admin')}",
        "sub_missing": lambda: f"Bearer {raw_jwt({'role': 'admin', 'exp': now + 3600}, secret)}",
    }
    return cases[variant]()


TOKEN_VARIANTS = [
    "no_header",
    "lowercase_bearer",
    "uppercase_bearer",
    "two_spaces",
    "basic_scheme",
    "bearer_without_token",
    "garbage_token",
    "bad_signature",
    "expired",
    "exp_missing",
    "exp_string",
    "nbf_future",
    "alg_hs512",
    "alg_none",
    "unknown_role",
    "role_missing",
    "numeric_sub",
    "empty_sub",
    "sub_missing",
]


@pytest.mark.parametrize("variant", TOKEN_VARIANTS)
@pytest.mark.parametrize("service", SERVICES)
def test_bad_authorization_is_401(target, http, token, uid, service, variant):
    sub = uid()
    value = authorization_variant(variant, target, token, sub)
    headers = {"Authorization": value} if value else {}
    assert_error(probe(http, target, service, headers, sub), 401, "unauthorized")


ACCEPTED_CLAIMS: dict[str, Any] = {
    "aud_and_iss": lambda now: {"aud": "someone-else", "iss": "elsewhere"},
    "aud_list": lambda now: {"aud": ["a", "b"]},
    "nbf_past": lambda now: {"nbf": now - 5},
    "iat_and_jti": lambda now: {"iat": now, "jti": "j-1"},
    "exp_float": lambda now: {"exp_in": None, "exp": now + 3600.5},
    "extra_claims": lambda now: {"email": "x@example.com", "name": "X"},
}


@pytest.mark.parametrize("variant", list(ACCEPTED_CLAIMS))
@pytest.mark.parametrize("service", SERVICES)
def test_token_with_unchecked_claims_is_accepted(target, http, token, uid, service, variant):
    sub = uid()
    tok = token(sub, "admin", **ACCEPTED_CLAIMS[variant](int(time.time())))
    r = probe(http, target, service, auth(tok), sub)
    assert r.status_code == PROBES[service][3], r.text
    assert r.headers["content-type"] == JSON_CT


@pytest.mark.parametrize("service", SERVICES)
def test_valid_token_passes_authentication(target, http, token, uid, service):
    sub = uid()
    r = probe(http, target, service, auth(token(sub, "admin")), sub)
    assert r.status_code == PROBES[service][3], r.text


# --------------------------------------------------------------------------- bodies


def test_empty_body_counts_as_empty_object(target, http, token):
    tok = token()
    r = http.post(f"{target.session}/api/sessions", content=b"", headers=auth(tok))
    assert r.status_code == 201, r.text
    assert r.json()["metadata"] == {}


def test_whitespace_body_counts_as_empty_object(target, http, token):
    r = http.post(
        f"{target.session}/api/sessions",
        content=b" \r\n\t ",
        headers={**auth(token()), "Content-Type": "application/json"},
    )
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "foo/bar"]
)
def test_body_is_parsed_as_json_whatever_content_type(target, http, token, content_type):
    headers = auth(token())
    if content_type:
        headers["Content-Type"] = content_type
    r = http.post(
        f"{target.session}/api/sessions", content=b'{"metadata": {"k": "v"}}', headers=headers
    )
    assert r.status_code == 201, r.text
    assert r.json()["metadata"] == {"k": "v"}


@pytest.mark.parametrize("raw", [b"{", b"not json", b"{'a': 1}", b'{"a":1} x'])
@pytest.mark.parametrize("service", SERVICES)
def test_invalid_json_body_is_400(target, http, token, service, raw):
    path, role = BODY_ENDPOINTS[service]
    r = http.post(
        base(target, service) + path,
        content=raw,
        headers={**auth(token(role=role)), "Content-Type": "application/json"},
    )
    assert_error(r, 400, "bad_request")


@pytest.mark.parametrize("raw", [b"[]", b'"x"', b"1", b"null", b"true"])
@pytest.mark.parametrize("service", SERVICES)
def test_non_object_json_body_is_400(target, http, token, service, raw):
    path, role = BODY_ENDPOINTS[service]
    r = http.post(
        base(target, service) + path,
        content=raw,
        headers={**auth(token(role=role)), "Content-Type": "application/json"},
    )
    assert_error(r, 400, "bad_request")


def test_unknown_fields_are_ignored(target, http, token):
    sub = "u-" + uuid.uuid4().hex[:12]
    r = http.post(
        f"{target.session}/api/sessions",
        json={"foo": 1, "agent": "human", "context": {"x": 1}, "sessionId": "abc"},
        headers=auth(token(sub)),
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {
        "sessionId",
        "userId",
        "agent",
        "context",
        "metadata",
        "createdAt",
        "updatedAt",
    }
    assert body["agent"] == "ai"
    assert body["context"] == {}
    assert body["sessionId"] != "abc"


def _size_fields(service: str) -> dict[str, Any]:
    # chat-session: a valid create, padded with an unknown field. The other services get
    # only the pad, so a body that passes the size check is refused by validation (400,
    # a required field is missing) and nothing is written.
    return {"metadata": {}} if service == "session" else {}


@pytest.mark.parametrize("service", SERVICES)
def test_body_of_exactly_one_mib_is_accepted(target, http, token, service):
    path, role = BODY_ENDPOINTS[service]
    body = padded_body(MIB, _size_fields(service))
    r = http.post(
        base(target, service) + path,
        content=body,
        headers={**auth(token(role=role)), "Content-Type": "application/json"},
    )
    if service == "session":
        assert r.status_code == 201, r.text
    else:
        # Parsed, then refused by validation (a required field is missing): not 413.
        assert_error(r, 400, "bad_request")


@pytest.mark.parametrize("service", SERVICES)
def test_body_one_byte_over_one_mib_is_413(target, http, token, service):
    path, role = BODY_ENDPOINTS[service]
    body = padded_body(MIB + 1, _size_fields(service))
    r = http.post(
        base(target, service) + path,
        content=body,
        headers={**auth(token(role=role)), "Content-Type": "application/json"},
    )
    assert_error(r, 413, "payload_too_large")


@pytest.mark.parametrize("service", SERVICES)
def test_oversized_body_without_token_is_401_before_413(target, http, service):
    path, _ = BODY_ENDPOINTS[service]
    r = http.post(
        base(target, service) + path,
        content=padded_body(2 * MIB, {}),
        headers={"Content-Type": "application/json"},
    )
    assert_error(r, 401, "unauthorized")


@pytest.mark.parametrize("service", SERVICES)
def test_oversized_invalid_json_is_413_before_400(target, http, token, service):
    path, role = BODY_ENDPOINTS[service]
    r = http.post(
        base(target, service) + path,
        content=b"{" + b"x" * MIB,
        headers={**auth(token(role=role)), "Content-Type": "application/json"},
    )
    assert_error(r, 413, "payload_too_large")


def test_oversized_body_from_customer_on_admin_is_403_before_413(target, http, token):
    r = http.post(
        f"{target.admin}/api/admin/teams",
        content=padded_body(MIB + 1, {"name": "t"}),
        headers={**auth(token(role="customer")), "Content-Type": "application/json"},
    )
    assert_error(r, 403, "forbidden")


def test_oversized_body_on_missing_session_is_413_before_404(target, http, token):
    r = http.patch(
        f"{target.session}/api/sessions/{uuid.uuid4()}",
        content=padded_body(MIB + 1, {}),
        headers={**auth(token(role="agent")), "Content-Type": "application/json"},
    )
    assert_error(r, 413, "payload_too_large")


def test_invalid_body_on_missing_session_is_400_before_404(target, http, token):
    r = http.patch(
        f"{target.session}/api/sessions/{uuid.uuid4()}",
        json={"agent": "robot"},
        headers=auth(token(role="agent")),
    )
    assert_error(r, 400, "bad_request")


# --------------------------------------------------------------------------- content type


@pytest.mark.parametrize("service", SERVICES)
def test_error_responses_carry_json_utf8_content_type(target, http, service):
    method, path, body, _ = PROBES[service]
    r = http.request(method, base(target, service) + path.format(sub="u-x"), json=body)
    assert_error(r, 401, "unauthorized")


def test_success_response_carries_json_utf8_content_type(target, http, token):
    tok = token()
    s = create_session(http, target.session, tok)
    r = http.get(f"{target.session}/api/sessions/{s['sessionId']}", headers=auth(tok))
    assert r.status_code == 200
    assert r.headers["content-type"] == JSON_CT


def test_non_ascii_text_round_trips_as_utf8(target, http, token):
    tok = token()
    meta = {"name": "Zoë 中文 😀", "k\u00e9y": "\u2028"}
    s = create_session(http, target.session, tok, {"metadata": meta})
    r = http.get(f"{target.session}/api/sessions/{s['sessionId']}", headers=auth(tok))
    assert json.loads(r.content.decode("utf-8"))["metadata"] == meta
