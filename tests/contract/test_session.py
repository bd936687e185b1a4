"""§2 chat-session, with the §6 chat-session edge rules and the Redis storage formats."""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from contract_helpers import JS_ISO, JSON_CT, UUID4, assert_error, auth, create_session

FIELDS = {"sessionId", "userId", "agent", "context", "metadata", "createdAt", "updatedAt"}
DAY = 86400


@pytest.fixture
def rdb(target):
    client = target.stack.redis()
    yield client
    client.close()


def url(target, sid: str = "") -> str:
    return f"{target.session}/api/sessions" + (f"/{sid}" if sid else "")


def js_ms(iso: str) -> int:
    """Epoch milliseconds of a JavaScript ISO string."""
    dt = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return round(dt.timestamp() * 1000)


def assert_session(s: dict[str, Any]) -> None:
    """All seven fields with the contract's types."""
    assert set(s) == FIELDS, s
    assert isinstance(s["sessionId"], str) and s["sessionId"]
    assert isinstance(s["userId"], str) and s["userId"]
    assert s["agent"] in ("ai", "human")
    assert isinstance(s["context"], dict)
    assert isinstance(s["metadata"], dict)
    assert re.match(JS_ISO, s["createdAt"]), s["createdAt"]
    assert re.match(JS_ISO, s["updatedAt"]), s["updatedAt"]


def stored(rdb, sid: str) -> dict[str, Any] | None:
    raw = rdb.get(f"session:{sid}")
    return None if raw is None else json.loads(raw)


def put_record(rdb, sid: str, record: dict[str, Any], user_id: str, score_ms: int) -> None:
    """Write a session record and its index entry directly, as another writer would."""
    rdb.set(f"session:{sid}", json.dumps(record), ex=DAY)
    rdb.zadd(f"user_sessions:{user_id}", {sid: score_ms})
    rdb.expire(f"user_sessions:{user_id}", DAY)


def legacy_record(sid: str, user_id: str, created: str, **kw: Any) -> dict[str, Any]:
    rec = {
        "sessionId": sid,
        "userId": user_id,
        "agent": "ai",
        "context": {},
        "metadata": {},
        "createdAt": created,
        "updatedAt": created,
    }
    rec.update(kw)
    return rec


def get(http, target, sid: str, tok: str):
    return http.get(url(target, sid), headers=auth(tok))


def patch(http, target, sid: str, tok: str, body: Any):
    return http.patch(url(target, sid), json=body, headers=auth(tok))


def listing(http, target, user_id: str, tok: str):
    return http.get(url(target), params={"userId": user_id}, headers=auth(tok))


def tick() -> None:
    """Let the millisecond clock move so that a new `updatedAt` differs."""
    time.sleep(0.003)


# --------------------------------------------------------------------------- create


def test_create_with_empty_body_has_contract_defaults(target, http, token, uid):
    me = uid()
    before = int(time.time() * 1000)
    r = http.post(url(target), json={}, headers=auth(token(me)))
    after = int(time.time() * 1000)
    assert r.status_code == 201, r.text
    assert r.headers["content-type"] == JSON_CT
    s = r.json()
    assert_session(s)
    assert re.match(UUID4, s["sessionId"])
    assert s["userId"] == me
    assert s["agent"] == "ai"
    assert s["context"] == {}
    assert s["metadata"] == {}
    assert s["createdAt"] == s["updatedAt"]
    assert before - 5 <= js_ms(s["createdAt"]) <= after + 5


def test_create_with_metadata_returns_it(target, http, token):
    meta = {"channel": "web", "nested": {"a": [1, 2]}, "n": None}
    s = create_session(http, target.session, token(), {"metadata": meta})
    assert s["metadata"] == meta


def test_create_with_null_metadata_means_not_given(target, http, token):
    s = create_session(http, target.session, token(), {"metadata": None})
    assert s["metadata"] == {}


def test_create_with_null_userid_defaults_to_sub(target, http, token, uid):
    me = uid()
    s = create_session(http, target.session, token(me), {"userId": None})
    assert s["userId"] == me


def test_create_by_customer_for_itself_explicitly_is_201(target, http, token, uid):
    me = uid()
    s = create_session(http, target.session, token(me), {"userId": me})
    assert s["userId"] == me


def test_create_by_customer_for_another_user_is_403(target, http, token, uid, rdb):
    other = uid()
    r = http.post(url(target), json={"userId": other}, headers=auth(token(uid())))
    assert_error(r, 403, "forbidden")
    assert rdb.exists(f"user_sessions:{other}") == 0


@pytest.mark.parametrize("role", ["agent", "admin"])
def test_create_by_staff_for_any_user_is_201(target, http, token, uid, role):
    other = uid()
    s = create_session(http, target.session, token(uid(), role), {"userId": other})
    assert s["userId"] == other


@pytest.mark.parametrize("metadata", [[], "x", 1, True, [{"a": 1}]])
def test_create_with_non_object_metadata_is_400(target, http, token, metadata):
    r = http.post(url(target), json={"metadata": metadata}, headers=auth(token()))
    assert_error(r, 400, "bad_request")


@pytest.mark.parametrize("user_id", ["", 42, True, {}, ["u-1"]])
def test_create_with_empty_or_non_string_userid_is_400(target, http, token, user_id):
    r = http.post(url(target), json={"userId": user_id}, headers=auth(token(role="admin")))
    assert_error(r, 400, "bad_request")


def test_create_for_another_user_with_bad_metadata_is_400_before_403(target, http, token, uid):
    r = http.post(url(target), json={"userId": uid(), "metadata": 5}, headers=auth(token()))
    assert_error(r, 400, "bad_request")


def test_create_stores_legacy_record_with_ttl_and_index(target, http, token, uid, rdb):
    me = uid()
    s = create_session(http, target.session, token(me), {"metadata": {"k": 1}})
    assert stored(rdb, s["sessionId"]) == s
    assert DAY - 10 <= rdb.ttl(f"session:{s['sessionId']}") <= DAY
    assert DAY - 10 <= rdb.ttl(f"user_sessions:{me}") <= DAY
    assert rdb.type(f"user_sessions:{me}") == b"zset"
    assert rdb.zscore(f"user_sessions:{me}", s["sessionId"]) == js_ms(s["createdAt"])


def test_create_twice_gives_distinct_ids_and_both_indexed(target, http, token, uid, rdb):
    me = uid()
    a = create_session(http, target.session, token(me))
    b = create_session(http, target.session, token(me))
    assert a["sessionId"] != b["sessionId"]
    members = {m.decode() for m in rdb.zrange(f"user_sessions:{me}", 0, -1)}
    assert members == {a["sessionId"], b["sessionId"]}


# --------------------------------------------------------------------------- get


def test_get_returns_the_created_session(target, http, token):
    tok = token()
    s = create_session(http, target.session, tok, {"metadata": {"x": "y"}})
    r = get(http, target, s["sessionId"], tok)
    assert r.status_code == 200
    assert r.headers["content-type"] == JSON_CT
    assert r.json() == s


@pytest.mark.parametrize("sid", ["00000000-0000-4000-8000-000000000000", "nope", "123"])
def test_get_missing_session_is_404(target, http, token, sid):
    assert_error(get(http, target, sid, token(role="admin")), 404, "not_found")


def test_get_other_users_session_as_customer_is_403(target, http, token, uid):
    s = create_session(http, target.session, token(uid()))
    assert_error(get(http, target, s["sessionId"], token(uid())), 403, "forbidden")


@pytest.mark.parametrize("role", ["agent", "admin"])
def test_get_any_session_as_staff_is_200(target, http, token, uid, role):
    s = create_session(http, target.session, token(uid()))
    r = get(http, target, s["sessionId"], token(uid(), role))
    assert r.status_code == 200
    assert r.json() == s


def test_get_missing_session_without_token_is_401_before_404(target, http):
    assert_error(http.get(url(target, str(uuid.uuid4()))), 401, "unauthorized")


def test_session_paths_tolerate_one_trailing_slash(target, http, token, uid):
    me = uid()
    tok = token(me)
    s = create_session(http, target.session, tok)
    r = http.post(url(target) + "/", json={}, headers=auth(tok))
    assert r.status_code == 201, r.text
    assert get(http, target, s["sessionId"] + "/", tok).json() == s
    r = http.patch(url(target, s["sessionId"]) + "/", json={"agent": "human"}, headers=auth(tok))
    assert r.json()["agent"] == "human"
    r = http.get(url(target) + "/", params={"userId": me}, headers=auth(tok))
    assert len(r.json()["data"]) == 2
    assert http.delete(url(target, s["sessionId"]) + "/", headers=auth(tok)).status_code == 204


def test_get_missing_session_as_customer_is_404_not_403(target, http, token):
    assert_error(get(http, target, str(uuid.uuid4()), token()), 404, "not_found")


# --------------------------------------------------------------------------- patch


def test_patch_agent_to_human_and_back(target, http, token):
    tok = token()
    s = create_session(http, target.session, tok)
    r = patch(http, target, s["sessionId"], tok, {"agent": "human"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == JSON_CT
    assert r.json()["agent"] == "human"
    assert get(http, target, s["sessionId"], tok).json()["agent"] == "human"
    assert patch(http, target, s["sessionId"], tok, {"agent": "ai"}).json()["agent"] == "ai"


@pytest.mark.parametrize("agent", ["robot", "AI", "Human", "", 1, True, {}])
def test_patch_agent_outside_enum_is_400(target, http, token, agent, rdb):
    tok = token()
    s = create_session(http, target.session, tok)
    r = patch(http, target, s["sessionId"], tok, {"agent": agent})
    assert_error(r, 400, "bad_request")
    assert stored(rdb, s["sessionId"]) == s


@pytest.mark.parametrize("field", ["context", "metadata"])
@pytest.mark.parametrize("value", [[], "x", 3, False])
def test_patch_with_non_object_context_or_metadata_is_400(target, http, token, field, value):
    tok = token()
    s = create_session(http, target.session, tok)
    assert_error(patch(http, target, s["sessionId"], tok, {field: value}), 400, "bad_request")


@pytest.mark.parametrize("field", ["context", "metadata"])
def test_patch_merges_one_level_and_null_removes_key(target, http, token, field):
    tok = token()
    s = create_session(http, target.session, tok)
    sid = s["sessionId"]
    first = {"a": 1, "b": {"x": 1, "y": 2}, "c": [1], "d": "keep"}
    assert patch(http, target, sid, tok, {field: first}).json()[field] == first
    r = patch(http, target, sid, tok, {field: {"b": {"z": 3}, "c": None, "e": 5, "gone": None}})
    assert r.status_code == 200
    expected = {"a": 1, "b": {"z": 3}, "d": "keep", "e": 5}
    assert r.json()[field] == expected
    assert get(http, target, sid, tok).json()[field] == expected


def test_patch_context_leaves_metadata_and_agent_alone(target, http, token):
    tok = token()
    s = create_session(http, target.session, tok, {"metadata": {"m": 1}})
    r = patch(http, target, s["sessionId"], tok, {"context": {"c": 1}})
    body = r.json()
    assert body["metadata"] == {"m": 1}
    assert body["agent"] == "ai"
    assert body["context"] == {"c": 1}
    assert body["userId"] == s["userId"]
    assert body["sessionId"] == s["sessionId"]
    assert body["createdAt"] == s["createdAt"]


def test_patch_with_null_fields_means_not_given(target, http, token):
    tok = token()
    s = create_session(http, target.session, tok, {"metadata": {"m": 1}})
    r = patch(http, target, s["sessionId"], tok, {"agent": None, "context": None, "metadata": None})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["agent"], body["context"], body["metadata"]) == ("ai", {}, {"m": 1})


def test_patch_ignores_userid_sessionid_and_timestamps_in_body(target, http, token, uid):
    tok = token()
    s = create_session(http, target.session, tok)
    r = patch(
        http,
        target,
        s["sessionId"],
        tok,
        {"userId": uid(), "sessionId": "x", "createdAt": "2000-01-01T00:00:00.000Z"},
    )
    assert r.status_code == 200
    body = r.json()
    assert (body["userId"], body["sessionId"], body["createdAt"]) == (
        s["userId"],
        s["sessionId"],
        s["createdAt"],
    )


def test_patch_with_empty_body_only_bumps_updated_at(target, http, token, rdb):
    tok = token()
    s = create_session(http, target.session, tok, {"metadata": {"m": 1}})
    tick()
    r = http.patch(url(target, s["sessionId"]), content=b"", headers=auth(tok))
    assert r.status_code == 200, r.text
    body = r.json()
    assert_session(body)
    assert body["updatedAt"] > s["updatedAt"]
    assert {k: v for k, v in body.items() if k != "updatedAt"} == {
        k: v for k, v in s.items() if k != "updatedAt"
    }
    assert stored(rdb, s["sessionId"]) == body


def test_patch_sets_updated_at_to_now(target, http, token):
    tok = token()
    s = create_session(http, target.session, tok)
    tick()
    before = int(time.time() * 1000)
    body = patch(http, target, s["sessionId"], tok, {"context": {"a": 1}}).json()
    after = int(time.time() * 1000)
    assert before - 5 <= js_ms(body["updatedAt"]) <= after + 5
    assert body["createdAt"] == s["createdAt"]


def test_patch_resets_ttl_of_session_and_index(target, http, token, uid, rdb):
    me = uid()
    tok = token(me)
    s = create_session(http, target.session, tok)
    rdb.expire(f"session:{s['sessionId']}", 100)
    rdb.expire(f"user_sessions:{me}", 100)
    assert patch(http, target, s["sessionId"], tok, {}).status_code == 200
    assert DAY - 10 <= rdb.ttl(f"session:{s['sessionId']}") <= DAY
    assert DAY - 10 <= rdb.ttl(f"user_sessions:{me}") <= DAY


def test_patch_missing_session_is_404(target, http, token):
    r = patch(http, target, str(uuid.uuid4()), token(role="agent"), {"agent": "human"})
    assert_error(r, 404, "not_found")


def test_patch_other_users_session_as_customer_is_403_and_unchanged(target, http, token, uid, rdb):
    s = create_session(http, target.session, token(uid()))
    r = patch(http, target, s["sessionId"], token(uid()), {"agent": "human"})
    assert_error(r, 403, "forbidden")
    assert stored(rdb, s["sessionId"]) == s


def test_patch_other_users_session_with_bad_body_is_400_before_403(target, http, token, uid):
    s = create_session(http, target.session, token(uid()))
    r = patch(http, target, s["sessionId"], token(uid()), {"agent": "robot"})
    assert_error(r, 400, "bad_request")


def test_patch_missing_session_as_customer_is_404_before_403(target, http, token):
    r = patch(http, target, str(uuid.uuid4()), token(), {"agent": "human"})
    assert_error(r, 404, "not_found")


@pytest.mark.parametrize("role", ["agent", "admin"])
def test_patch_any_session_as_staff_is_200(target, http, token, uid, role):
    s = create_session(http, target.session, token(uid()))
    r = patch(http, target, s["sessionId"], token(uid(), role), {"agent": "human"})
    assert r.status_code == 200
    assert r.json()["agent"] == "human"


# --------------------------------------------------------------------------- delete


def test_delete_removes_key_and_index_entry_only(target, http, token, uid, rdb):
    me = uid()
    tok = token(me)
    keep = create_session(http, target.session, tok)
    s = create_session(http, target.session, tok)
    sid = s["sessionId"]
    rdb.rpush(f"history:{sid}", json.dumps({"role": "user", "content": "hi"}))
    r = http.delete(url(target, sid), headers=auth(tok))
    assert r.status_code == 204
    assert r.content == b""
    assert rdb.exists(f"session:{sid}") == 0
    assert rdb.zscore(f"user_sessions:{me}", sid) is None
    assert rdb.zscore(f"user_sessions:{me}", keep["sessionId"]) is not None
    assert rdb.lrange(f"history:{sid}", 0, -1) == [b'{"role": "user", "content": "hi"}']
    assert_error(get(http, target, sid, tok), 404, "not_found")
    assert [x["sessionId"] for x in listing(http, target, me, tok).json()["data"]] == [
        keep["sessionId"]
    ]


def test_delete_twice_is_404_the_second_time(target, http, token):
    tok = token()
    s = create_session(http, target.session, tok)
    assert http.delete(url(target, s["sessionId"]), headers=auth(tok)).status_code == 204
    assert_error(http.delete(url(target, s["sessionId"]), headers=auth(tok)), 404, "not_found")


def test_delete_missing_session_is_404(target, http, token):
    r = http.delete(url(target, str(uuid.uuid4())), headers=auth(token(role="admin")))
    assert_error(r, 404, "not_found")


def test_delete_other_users_session_as_customer_is_403_and_kept(target, http, token, uid, rdb):
    s = create_session(http, target.session, token(uid()))
    r = http.delete(url(target, s["sessionId"]), headers=auth(token(uid())))
    assert_error(r, 403, "forbidden")
    assert stored(rdb, s["sessionId"]) == s


@pytest.mark.parametrize("role", ["agent", "admin"])
def test_delete_any_session_as_staff_is_204(target, http, token, uid, role):
    s = create_session(http, target.session, token(uid()))
    r = http.delete(url(target, s["sessionId"]), headers=auth(token(uid(), role)))
    assert r.status_code == 204


# --------------------------------------------------------------------------- list


def test_list_without_userid_is_400(target, http, token):
    r = http.get(url(target), headers=auth(token(role="admin")))
    assert_error(r, 400, "bad_request")


def test_list_with_empty_userid_is_400(target, http, token):
    r = http.get(url(target) + "?userId=", headers=auth(token(role="admin")))
    assert_error(r, 400, "bad_request")


def test_list_of_user_without_sessions_is_empty(target, http, token, uid):
    me = uid()
    r = listing(http, target, me, token(me))
    assert r.status_code == 200
    assert r.headers["content-type"] == JSON_CT
    assert r.json() == {"data": []}


def test_list_returns_own_sessions_newest_first(target, http, token, uid):
    me = uid()
    tok = token(me)
    made = [create_session(http, target.session, tok, {"metadata": {"i": i}}) for i in range(4)]
    create_session(http, target.session, token(uid()))  # someone else's
    r = listing(http, target, me, tok)
    assert r.status_code == 200
    expected = sorted(made, key=lambda s: (s["createdAt"], s["sessionId"]), reverse=True)
    assert r.json() == {"data": expected}


def test_list_orders_by_created_at_not_index_insertion(target, http, token, uid, rdb):
    me = uid()
    ids = [str(uuid.uuid4()) for _ in range(3)]
    times = ["2024-01-01T10:00:00.002Z", "2024-01-01T10:00:00.000Z", "2024-01-01T10:00:00.001Z"]
    for sid, t in zip(ids, times, strict=True):
        put_record(rdb, sid, legacy_record(sid, me, t), me, js_ms(t))
    data = listing(http, target, me, token(me)).json()["data"]
    assert [s["sessionId"] for s in data] == [ids[0], ids[2], ids[1]]


def test_list_ties_are_ordered_by_session_id_descending(target, http, token, uid, rdb):
    me = uid()
    t = "2024-02-02T02:02:02.222Z"
    ids = [str(uuid.uuid4()) for _ in range(5)]
    for sid in ids:
        put_record(rdb, sid, legacy_record(sid, me, t), me, js_ms(t))
    later = str(uuid.uuid4())
    lt = "2024-02-02T02:02:02.223Z"
    put_record(rdb, later, legacy_record(later, me, lt), me, js_ms(lt))
    data = listing(http, target, me, token(me)).json()["data"]
    assert [s["sessionId"] for s in data] == [later, *sorted(ids, reverse=True)]


def test_list_skips_expired_index_entries_without_removing_them(target, http, token, uid, rdb):
    me = uid()
    tok = token(me)
    live = create_session(http, target.session, tok)
    ghost = str(uuid.uuid4())
    rdb.zadd(f"user_sessions:{me}", {ghost: int(time.time() * 1000) + 1000})
    r = listing(http, target, me, tok)
    assert r.json() == {"data": [live]}
    assert rdb.zscore(f"user_sessions:{me}", ghost) is not None


def test_list_other_user_as_customer_is_403(target, http, token, uid):
    other = uid()
    create_session(http, target.session, token(other))
    assert_error(listing(http, target, other, token(uid())), 403, "forbidden")


@pytest.mark.parametrize("role", ["agent", "admin"])
def test_list_any_user_as_staff_is_200(target, http, token, uid, role):
    other = uid()
    s = create_session(http, target.session, token(other))
    r = listing(http, target, other, token(uid(), role))
    assert r.json() == {"data": [s]}


def test_list_ignores_unknown_query_parameters(target, http, token, uid):
    me = uid()
    s = create_session(http, target.session, token(me))
    r = http.get(url(target), params={"userId": me, "foo": "bar"}, headers=auth(token(me)))
    assert r.json() == {"data": [s]}


# --------------------------------------------------------------------------- other shapes


def test_legacy_record_without_updated_at_reads_updated_at_as_created_at(
    target, http, token, uid, rdb
):
    me = uid()
    sid = str(uuid.uuid4())
    rec = legacy_record(sid, me, "2024-03-03T03:03:03.333Z")
    del rec["updatedAt"]
    put_record(rdb, sid, rec, me, js_ms(rec["createdAt"]))
    body = get(http, target, sid, token(me)).json()
    assert body == {**rec, "updatedAt": "2024-03-03T03:03:03.333Z"}
    assert listing(http, target, me, token(me)).json() == {"data": [body]}


def python_record(user_id: str, **kw: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "user_id": user_id,
        "agent_type": "ai",
        "context": {"c": 1},
        "metadata": {"m": 2},
        "created_at": "2024-01-01T10:00:00.123000+00:00",
        "updated_at": "2024-01-01T11:00:00.456000+00:00",
    }
    rec.update(kw)
    return {k: v for k, v in rec.items() if v is not _MISSING}


_MISSING = object()

# (overrides of the Python record, expected wire fields)
PYTHON_SHAPES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "iso_six_digits_offset_utc": (
        {
            "created_at": "2024-01-01T10:00:00.123999+00:00",
            "updated_at": "2024-01-01T10:30:00.000001+00:00",
        },
        {"createdAt": "2024-01-01T10:00:00.123Z", "updatedAt": "2024-01-01T10:30:00.000Z"},
    ),
    "iso_six_digits_z": (
        {"created_at": "2024-01-01T10:00:00.999999Z", "updated_at": "2024-01-01T10:00:01.5Z"},
        {"createdAt": "2024-01-01T10:00:00.999Z", "updatedAt": "2024-01-01T10:00:01.500Z"},
    ),
    "iso_plus_0800": (
        {
            "created_at": "2024-01-01T18:00:00.250000+08:00",
            "updated_at": "2024-01-02T07:59:59+08:00",
        },
        {"createdAt": "2024-01-01T10:00:00.250Z", "updatedAt": "2024-01-01T23:59:59.000Z"},
    ),
    "iso_negative_offset_crossing_midnight": (
        {"created_at": "2023-12-31T23:30:00.000-05:00"},
        {"createdAt": "2024-01-01T04:30:00.000Z", "updatedAt": "2024-01-01T11:00:00.456Z"},
    ),
    "epoch_seconds": (
        {"created_at": 1704103200, "updated_at": 1704103200.5},
        {"createdAt": "2024-01-01T10:00:00.000Z", "updatedAt": "2024-01-01T10:00:00.500Z"},
    ),
    "epoch_milliseconds": (
        {"created_at": 1704103200123, "updated_at": 1704106800999},
        {"createdAt": "2024-01-01T10:00:00.123Z", "updatedAt": "2024-01-01T11:00:00.999Z"},
    ),
    "missing_context_and_metadata": (
        {"context": _MISSING, "metadata": _MISSING},
        {"context": {}, "metadata": {}},
    ),
    "missing_updated_at": (
        {"updated_at": _MISSING},
        {"createdAt": "2024-01-01T10:00:00.123Z", "updatedAt": "2024-01-01T10:00:00.123Z"},
    ),
    "human_agent": ({"agent_type": "human"}, {"agent": "human"}),
    "session_id_differs_from_key": ({"session_id": "not-the-key"}, {}),
    "session_id_equals_key": ({"session_id": "KEY"}, {}),
}


@pytest.mark.parametrize("shape", list(PYTHON_SHAPES))
def test_python_shape_record_is_served_in_js_form(target, http, token, uid, rdb, shape):
    me = uid()
    sid = str(uuid.uuid4())
    overrides, expected_fields = PYTHON_SHAPES[shape]
    overrides = {k: (sid if v == "KEY" else v) for k, v in overrides.items()}
    rec = python_record(me, **overrides)
    put_record(rdb, sid, rec, me, 1704103200123)
    expected = {
        "sessionId": sid,
        "userId": me,
        "agent": "ai",
        "context": {"c": 1},
        "metadata": {"m": 2},
        "createdAt": "2024-01-01T10:00:00.123Z",
        "updatedAt": "2024-01-01T11:00:00.456Z",
        **expected_fields,
    }
    r = get(http, target, sid, token(me))
    assert r.status_code == 200, r.text
    assert r.json() == expected
    assert listing(http, target, me, token(me)).json() == {"data": [expected]}
    # Reading does not rewrite the record.
    assert stored(rdb, sid) == rec


def test_python_shape_record_ownership_uses_user_id(target, http, token, uid, rdb):
    me = uid()
    sid = str(uuid.uuid4())
    put_record(rdb, sid, python_record(me), me, 1704103200123)
    assert get(http, target, sid, token(me)).status_code == 200
    assert_error(get(http, target, sid, token(uid())), 403, "forbidden")
    assert_error(patch(http, target, sid, token(uid()), {"agent": "human"}), 403, "forbidden")


def test_python_and_legacy_records_list_together_in_order(target, http, token, uid, rdb):
    me = uid()
    py_sid, js_sid = str(uuid.uuid4()), str(uuid.uuid4())
    put_record(rdb, py_sid, python_record(me, created_at=1704103200.5), me, 1704103200500)
    put_record(
        rdb,
        js_sid,
        legacy_record(js_sid, me, "2024-01-01T10:00:00.400Z"),
        me,
        js_ms("2024-01-01T10:00:00.400Z"),
    )
    data = listing(http, target, me, token(me)).json()["data"]
    assert [s["sessionId"] for s in data] == [py_sid, js_sid]
    for s in data:
        assert_session(s)


def test_delete_python_shape_record_removes_key_and_index(target, http, token, uid, rdb):
    me = uid()
    sid = str(uuid.uuid4())
    put_record(rdb, sid, python_record(me), me, 1704103200123)
    assert http.delete(url(target, sid), headers=auth(token(me))).status_code == 204
    assert rdb.exists(f"session:{sid}") == 0
    assert rdb.zscore(f"user_sessions:{me}", sid) is None


def test_patch_on_python_shape_record_rewrites_it_in_legacy_shape(target, http, token, uid, rdb):
    """Legacy writes the legacy shape, also over a Python-shape record (§6 chat-session).

    This is the one test that pins the *written* shape: a Python module configured to
    write the Python shape would swap this expectation, nothing else.
    """
    me = uid()
    sid = str(uuid.uuid4())
    put_record(rdb, sid, python_record(me, session_id="other-id"), me, 1704103200123)
    rdb.expire(f"session:{sid}", 100)
    before = int(time.time() * 1000)
    r = patch(http, target, sid, token(me), {"metadata": {"n": 3, "m": None}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert stored(rdb, sid) == body
    assert set(body) == FIELDS
    assert body["sessionId"] == sid
    assert body["userId"] == me
    assert body["agent"] == "ai"
    assert body["context"] == {"c": 1}
    assert body["metadata"] == {"n": 3}
    assert body["createdAt"] == "2024-01-01T10:00:00.123Z"
    assert js_ms(body["updatedAt"]) >= before - 5
    assert DAY - 10 <= rdb.ttl(f"session:{sid}") <= DAY


def test_timestamps_are_js_iso_everywhere(target, http, token, uid):
    me = uid()
    tok = token(me)
    s = create_session(http, target.session, tok)
    bodies = [
        s,
        get(http, target, s["sessionId"], tok).json(),
        patch(http, target, s["sessionId"], tok, {}).json(),
        *listing(http, target, me, tok).json()["data"],
    ]
    for b in bodies:
        assert_session(b)
