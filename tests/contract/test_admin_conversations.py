"""chat-admin conversations, their labels and messages, and stats (§5, §6 chat-admin).

Conversations are made the contract's way, by a first message through chat-core
(``new_conversation``). Lists are filtered to a team of the test's own so that the
expected order is exact whatever other tests left behind.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid

import pytest
from chat_helpers import (
    admin_url,
    conversation_row,
    get_conversation,
    iso_ms,
    list_messages,
    new_contact,
    new_conversation,
    new_label,
    new_team,
    new_user,
    send_ok,
    sfx,
    sql,
    tick,
)
from contract_helpers import JS_ISO, assert_error, auth


@pytest.fixture
def admin_tok(token, uid):
    return token(sub=uid(), role="admin")


@pytest.fixture
def admin(admin_tok):
    return auth(admin_tok)


def _patch(http, target, admin, conv_id, body):
    return http.patch(admin_url(target, f"conversations/{conv_id}"), json=body, headers=admin)


def _add_label(http, target, admin, conv_id, title):
    return http.post(
        admin_url(target, f"conversations/{conv_id}/labels"), json={"title": title}, headers=admin
    )


def _remove_label(http, target, admin, conv_id, title):
    return http.delete(admin_url(target, f"conversations/{conv_id}/labels/{title}"), headers=admin)


# --------------------------------------------------------------------------- shape


def test_conversation_made_by_a_first_message_has_the_wire_shape(target, http, admin, admin_tok):
    sid, conv_id = new_conversation(http, target, admin_tok)
    row = conversation_row(target, sid)
    conv = get_conversation(http, target, admin, conv_id)
    assert conv == {
        "id": conv_id,
        "sessionId": sid,
        "contactId": row["contact_id"],
        "status": "open",
        "assigneeId": None,
        "teamId": None,
        "labels": [],
        "createdAt": iso_ms(row["created_at"]),
        "updatedAt": iso_ms(row["updated_at"]),
    }
    assert re.match(JS_ISO, conv["createdAt"])


@pytest.mark.parametrize("bad_id", ["abc", "1abc", "-1", "0", "999999999"])
def test_unknown_or_malformed_conversation_id_is_404(target, http, admin, bad_id):
    base = f"conversations/{bad_id}"
    assert_error(http.get(admin_url(target, base), headers=admin), 404, "not_found")
    assert_error(_patch(http, target, admin, bad_id, {}), 404, "not_found")
    assert_error(http.get(admin_url(target, base + "/messages"), headers=admin), 404, "not_found")


def test_conversations_are_not_created_by_post(target, http, admin):
    r = http.post(admin_url(target, "conversations"), json={"contactId": 1}, headers=admin)
    assert_error(r, 404, "not_found")


# --------------------------------------------------------------------------- list


def _team_with(http, target, admin, conv_ids):
    team = new_team(http, target, admin)
    for cid in conv_ids:
        assert _patch(http, target, admin, cid, {"teamId": team["id"]}).status_code == 200
    return team


def _listed(http, target, admin, **params):
    r = http.get(admin_url(target, "conversations"), params=params, headers=admin)
    assert r.status_code == 200, r.text
    return r.json()


def test_conversation_list_is_newest_updated_first_ties_by_id_desc(target, http, admin, admin_tok):
    ids = [new_conversation(http, target, admin_tok)[1] for _ in range(4)]
    team = _team_with(http, target, admin, ids)
    base = dt.datetime(2020, 1, 1, 12, 0, 0, 123000)
    stamps = {ids[0]: base, ids[1]: base, ids[2]: base + dt.timedelta(seconds=1), ids[3]: base}
    for cid, when in stamps.items():
        sql(target, "UPDATE conversations SET updated_at = %s WHERE id = %s", (when, cid))
    body = _listed(http, target, admin, teamId=team["id"])
    assert [c["id"] for c in body["data"]] == [ids[2], ids[3], ids[1], ids[0]]
    assert body["meta"] == {"page": 1, "perPage": 25, "total": 4}
    assert body["data"][0]["updatedAt"] == "2020-01-01T12:00:01.123Z"
    page2 = _listed(http, target, admin, teamId=team["id"], page=2, perPage=3)
    assert [c["id"] for c in page2["data"]] == [ids[0]]
    assert page2["meta"] == {"page": 2, "perPage": 3, "total": 4}


def test_conversation_list_filters(target, http, admin, admin_tok):
    ids = [new_conversation(http, target, admin_tok)[1] for _ in range(3)]
    team = _team_with(http, target, admin, ids)
    user = new_user(http, target, admin)
    label = new_label(http, target, admin)
    assert _patch(http, target, admin, ids[0], {"status": "pending"}).status_code == 200
    assert _patch(http, target, admin, ids[1], {"assigneeId": user["id"]}).status_code == 200
    assert _add_label(http, target, admin, ids[2], label["title"]).status_code == 200

    def ids_for(**params):
        return [c["id"] for c in _listed(http, target, admin, teamId=team["id"], **params)["data"]]

    assert ids_for(status="pending") == [ids[0]]
    assert ids_for(status="open") == [ids[2], ids[1]]
    assert ids_for(status="resolved") == []
    assert ids_for(assigneeId=user["id"]) == [ids[1]]
    assert ids_for(label=label["title"].upper()) == [ids[2]]
    assert ids_for(label="") == [ids[2], ids[1], ids[0]]
    assert ids_for(label=f"nope-{sfx()}") == []
    assert ids_for(assigneeId=999999999) == []
    everyone = _listed(http, target, admin, label=label["title"])
    assert [c["id"] for c in everyone["data"]] == [ids[2]]
    assert everyone["data"][0]["labels"] == [label["title"]]


@pytest.mark.parametrize(
    "params",
    [
        {"status": "closed"},
        {"status": ""},
        {"status": "OPEN"},
        {"assigneeId": "abc"},
        {"assigneeId": "0"},
        {"assigneeId": ""},
        {"teamId": "-1"},
        {"teamId": "1.5"},
    ],
    ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()),
)
def test_conversation_list_bad_filter_is_400(target, http, admin, params):
    r = http.get(admin_url(target, "conversations"), params=params, headers=admin)
    assert_error(r, 400, "bad_request")


# --------------------------------------------------------------------------- PATCH


def test_conversation_patch_sets_fields_and_bumps_updated_at(target, http, admin, admin_tok):
    _, cid = new_conversation(http, target, admin_tok)
    before = get_conversation(http, target, admin, cid)
    team, user = new_team(http, target, admin), new_user(http, target, admin)
    tick()
    r = _patch(
        http,
        target,
        admin,
        cid,
        {"status": "resolved", "assigneeId": user["id"], "teamId": team["id"]},
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out == {
        **before,
        "status": "resolved",
        "assigneeId": user["id"],
        "teamId": team["id"],
        "updatedAt": out["updatedAt"],
    }
    assert out["updatedAt"] > before["updatedAt"]
    assert get_conversation(http, target, admin, cid) == out

    tick()
    r = _patch(http, target, admin, cid, {"status": None, "assigneeId": None})
    assert (r.json()["status"], r.json()["assigneeId"], r.json()["teamId"]) == (
        "resolved",
        None,
        team["id"],
    )
    assert r.json()["updatedAt"] > out["updatedAt"]
    tick()
    r = _patch(http, target, admin, cid, {})
    assert r.status_code == 200 and r.json()["updatedAt"] > out["updatedAt"]
    r = _patch(http, target, admin, cid, {"teamId": None})
    assert r.json()["teamId"] is None


@pytest.mark.parametrize(
    "body",
    [
        {"status": "closed"},
        {"status": 1},
        {"assigneeId": 999999999},
        {"assigneeId": "1"},
        {"assigneeId": 0},
        {"assigneeId": 1.5},
        {"teamId": 999999999},
        {"teamId": True},
    ],
    ids=[
        "status",
        "status-type",
        "assignee-missing",
        "assignee-string",
        "assignee-zero",
        "assignee-float",
        "team-missing",
        "team-bool",
    ],
)
def test_conversation_patch_invalid_is_400_before_404(target, http, admin, admin_tok, body):
    _, cid = new_conversation(http, target, admin_tok)
    before = get_conversation(http, target, admin, cid)
    assert_error(_patch(http, target, admin, cid, body), 400, "bad_request")
    assert_error(_patch(http, target, admin, 999999999, body), 400, "bad_request")
    assert get_conversation(http, target, admin, cid) == before


# --------------------------------------------------------------------------- labels


def test_labels_add_is_lower_cased_sorted_by_code_point_and_idempotent(
    target, http, admin, admin_tok
):
    _, cid = new_conversation(http, target, admin_tok)
    s = sfx()
    titles = [f"p{s}a", f"p{s}_x", f"p{s}0", f"p{s}-x"]
    for t in titles:
        new_label(http, target, admin, title=t)
    before = get_conversation(http, target, admin, cid)
    tick()
    r = _add_label(http, target, admin, cid, titles[0].upper())
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["labels"] == [titles[0]]
    assert first["updatedAt"] > before["updatedAt"]
    for t in titles[1:]:
        assert _add_label(http, target, admin, cid, t).status_code == 200
    conv = get_conversation(http, target, admin, cid)
    assert conv["labels"] == [f"p{s}-x", f"p{s}0", f"p{s}_x", f"p{s}a"]
    tick()
    r = _add_label(http, target, admin, cid, titles[1])
    assert r.status_code == 200
    assert r.json() == conv


def test_labels_add_errors(target, http, admin, admin_tok):
    _, cid = new_conversation(http, target, admin_tok)
    label = new_label(http, target, admin)
    assert_error(_add_label(http, target, admin, cid, f"unknown-{sfx()}"), 404, "not_found")
    assert_error(_add_label(http, target, admin, 999999999, label["title"]), 404, "not_found")
    url = admin_url(target, f"conversations/{cid}/labels")
    for body in [{}, {"title": None}, {"title": 5}, {"title": ""}, {"title": "not valid"}]:
        assert_error(http.post(url, json=body, headers=admin), 400, "bad_request")
    assert get_conversation(http, target, admin, cid)["labels"] == []


def test_labels_remove(target, http, admin, admin_tok):
    _, cid = new_conversation(http, target, admin_tok)
    a, b = new_label(http, target, admin), new_label(http, target, admin)
    _add_label(http, target, admin, cid, a["title"])
    added = _add_label(http, target, admin, cid, b["title"]).json()
    tick()
    r = _remove_label(http, target, admin, cid, a["title"].upper())
    assert r.status_code == 200, r.text
    removed = r.json()
    assert removed["labels"] == [b["title"]]
    assert removed["updatedAt"] > added["updatedAt"]
    tick()
    r = _remove_label(http, target, admin, cid, a["title"])
    assert r.status_code == 200 and r.json() == removed
    assert_error(_remove_label(http, target, admin, cid, f"unknown-{sfx()}"), 404, "not_found")
    assert_error(_remove_label(http, target, admin, 999999999, b["title"]), 404, "not_found")
    assert get_conversation(http, target, admin, cid) == removed


def test_deleting_a_label_removes_it_without_bumping_updated_at(target, http, admin, admin_tok):
    _, cid = new_conversation(http, target, admin_tok)
    keep, gone = new_label(http, target, admin), new_label(http, target, admin)
    _add_label(http, target, admin, cid, keep["title"])
    conv = _add_label(http, target, admin, cid, gone["title"]).json()
    tick()
    assert http.delete(admin_url(target, f"labels/{gone['id']}"), headers=admin).status_code == 204
    assert get_conversation(http, target, admin, cid) == {**conv, "labels": [keep["title"]]}


# --------------------------------------------------------------------------- cascades


def test_deleting_a_team_nulls_conversation_team_without_bumping(target, http, admin, admin_tok):
    _, cid = new_conversation(http, target, admin_tok)
    team = new_team(http, target, admin)
    conv = _patch(http, target, admin, cid, {"teamId": team["id"]}).json()
    tick()
    assert http.delete(admin_url(target, f"teams/{team['id']}"), headers=admin).status_code == 204
    assert get_conversation(http, target, admin, cid) == {**conv, "teamId": None}


def test_deleting_a_user_unassigns_without_bumping(target, http, admin, admin_tok):
    _, cid = new_conversation(http, target, admin_tok)
    user = new_user(http, target, admin)
    conv = _patch(http, target, admin, cid, {"assigneeId": user["id"]}).json()
    tick()
    assert http.delete(admin_url(target, f"users/{user['id']}"), headers=admin).status_code == 204
    assert get_conversation(http, target, admin, cid) == {**conv, "assigneeId": None}


def test_deleting_a_contact_with_conversations_is_409(target, http, admin, admin_tok):
    _, cid = new_conversation(http, target, admin_tok)
    contact_id = get_conversation(http, target, admin, cid)["contactId"]
    r = http.delete(admin_url(target, f"contacts/{contact_id}"), headers=admin)
    assert_error(r, 409, "conflict")
    assert http.get(admin_url(target, f"contacts/{contact_id}"), headers=admin).status_code == 200


# --------------------------------------------------------------------------- messages


def test_new_message_bumps_conversation_updated_at(target, http, admin, admin_tok):
    sid, cid = new_conversation(http, target, admin_tok)
    before = get_conversation(http, target, admin, cid)
    tick()
    msg = send_ok(http, target, admin_tok, sid, "another one")["message"]
    after = get_conversation(http, target, admin, cid)
    assert after == {**before, "updatedAt": after["updatedAt"]}
    assert after["updatedAt"] > before["updatedAt"]
    assert after["updatedAt"] >= msg["createdAt"]


def test_conversation_messages_match_chat_core_list(target, http, admin, admin_tok, token, uid):
    sid, cid = new_conversation(http, target, admin_tok)
    for i in range(4):
        send_ok(http, target, admin_tok, sid, f"n{i}")
    core = list_messages(http, target, admin_tok, sid).json()["data"]
    assert len(core) == 5
    url = admin_url(target, f"conversations/{cid}/messages")
    r = http.get(url, headers=admin)
    assert r.status_code == 200
    assert r.json() == {"data": core}
    r = http.get(url, params={"limit": 2, "before": core[3]["messageId"]}, headers=admin)
    assert r.json() == {"data": core[1:3]}
    agent = auth(token(sub=uid(), role="agent"))
    assert http.get(url, params={"limit": 1}, headers=agent).json() == {"data": core[-1:]}


@pytest.mark.parametrize(
    "params",
    [{"limit": "0"}, {"limit": "201"}, {"limit": "x"}, {"before": "UNKNOWN"}, {"before": ""}],
    ids=["limit-0", "limit-201", "limit-x", "before-unknown", "before-empty"],
)
def test_conversation_messages_bad_query_is_400(target, http, admin, admin_tok, params):
    _, cid = new_conversation(http, target, admin_tok)
    params = {k: (str(uuid.uuid4()) if v == "UNKNOWN" else v) for k, v in params.items()}
    r = http.get(admin_url(target, f"conversations/{cid}/messages"), params=params, headers=admin)
    assert_error(r, 400, "bad_request")


def test_conversation_messages_before_a_message_of_another_conversation_is_400(
    target, http, admin, admin_tok
):
    sid, _ = new_conversation(http, target, admin_tok)
    _, other = new_conversation(http, target, admin_tok)
    mid = list_messages(http, target, admin_tok, sid).json()["data"][0]["messageId"]
    r = http.get(
        admin_url(target, f"conversations/{other}/messages"), params={"before": mid}, headers=admin
    )
    assert_error(r, 400, "bad_request")


# --------------------------------------------------------------------------- stats


def _stats(http, target, admin):
    r = http.get(admin_url(target, "stats"), headers=admin)
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"conversations", "users", "teams", "contacts", "labels"}
    assert set(body["conversations"]) == {"open", "pending", "resolved"}
    return body


def test_stats_count_rows_and_conversation_statuses(target, http, admin, admin_tok):
    before = _stats(http, target, admin)
    for kind in ("users", "teams", "contacts", "labels"):
        total = http.get(admin_url(target, kind), headers=admin).json()["meta"]["total"]
        assert before[kind] == total
    new_user(http, target, admin)
    new_team(http, target, admin)
    new_label(http, target, admin)
    new_contact(http, target, admin)
    _, cid = new_conversation(http, target, admin_tok)  # also creates a contact
    mid = _stats(http, target, admin)
    assert mid == {
        "conversations": {**before["conversations"], "open": before["conversations"]["open"] + 1},
        "users": before["users"] + 1,
        "teams": before["teams"] + 1,
        "contacts": before["contacts"] + 2,
        "labels": before["labels"] + 1,
    }
    _patch(http, target, admin, cid, {"status": "pending"})
    after = _stats(http, target, admin)
    assert after["conversations"] == {
        "open": before["conversations"]["open"],
        "pending": before["conversations"]["pending"] + 1,
        "resolved": before["conversations"]["resolved"],
    }
    total = sum(after["conversations"].values())
    assert _listed(http, target, admin, perPage=1)["meta"]["total"] == total
