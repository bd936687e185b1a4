"""chat-admin users, teams, labels, contacts: roles, CRUD, validation, lists (§5, §6).

Tables are shared by every test of the session: expectations are relative to the rows a
test creates itself (unique names), never to an empty database.
"""

from __future__ import annotations

import pytest
from chat_helpers import (
    KEYS,
    admin_url,
    create,
    new_contact,
    new_label,
    new_team,
    new_user,
    sfx,
    tick,
)
from contract_helpers import JSON_CT, assert_error, auth


@pytest.fixture
def admin(token, uid):
    return auth(token(sub=uid(), role="admin"))


@pytest.fixture
def agent(token, uid):
    return auth(token(sub=uid(), role="agent"))


KINDS = ["users", "teams", "labels", "contacts"]

# --------------------------------------------------------------------------- roles

_ALL_ROUTES = [
    ("GET", "users"),
    ("GET", "users/1"),
    ("GET", "teams"),
    ("GET", "labels/1"),
    ("GET", "contacts"),
    ("GET", "conversations"),
    ("GET", "conversations/1"),
    ("GET", "conversations/1/messages"),
    ("GET", "stats"),
    ("POST", "users"),
    ("PATCH", "teams/1"),
    ("DELETE", "labels/1"),
    ("POST", "contacts"),
    ("PATCH", "conversations/1"),
    ("POST", "conversations/1/labels"),
    ("DELETE", "conversations/1/labels/x"),
]
_WRITES = [(m, p) for m, p in _ALL_ROUTES if m != "GET"]


@pytest.mark.parametrize(("method", "path"), _ALL_ROUTES)
def test_customer_is_forbidden_everywhere(target, http, token, method, path):
    r = http.request(method, admin_url(target, path), json={}, headers=auth(token()))
    assert_error(r, 403, "forbidden")


@pytest.mark.parametrize(("method", "path"), _WRITES)
def test_agent_writes_are_forbidden_before_validation_and_existence(
    target, http, agent, method, path
):
    r = http.request(method, admin_url(target, path), json={"email": 5}, headers=agent)
    assert_error(r, 403, "forbidden")
    r = http.request(method, admin_url(target, path.replace("/1", "/999999999")), headers=agent)
    assert_error(r, 403, "forbidden")


@pytest.mark.parametrize("path", ["users", "teams", "labels", "contacts", "conversations", "stats"])
def test_agent_may_read(target, http, agent, path):
    r = http.get(admin_url(target, path), headers=agent)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == JSON_CT


@pytest.mark.parametrize(("method", "path"), _ALL_ROUTES)
def test_admin_without_token_is_401(target, http, method, path):
    r = http.request(method, admin_url(target, path), json={})
    assert_error(r, 401, "unauthorized")


def test_agent_reads_the_same_resource_as_admin(target, http, admin, agent):
    team = new_team(http, target, admin)
    r = http.get(admin_url(target, f"teams/{team['id']}"), headers=agent)
    assert r.status_code == 200
    assert r.json() == team


# --------------------------------------------------------------------------- users


def test_user_create_lower_cases_email_and_defaults_role_to_agent(target, http, admin):
    s = sfx()
    user = create(http, target, admin, "users", {"email": f"Mixed.{s}@Example.COM", "name": "Ann"})
    assert {k: user[k] for k in ("email", "name", "role", "teamId")} == {
        "email": f"mixed.{s}@example.com",
        "name": "Ann",
        "role": "agent",
        "teamId": None,
    }
    assert user["createdAt"] == user["updatedAt"]
    r = http.get(admin_url(target, f"users/{user['id']}"), headers=admin)
    assert r.status_code == 200 and r.json() == user


def test_user_create_with_role_admin_and_team(target, http, admin):
    team = new_team(http, target, admin)
    user = new_user(http, target, admin, role="admin", teamId=team["id"])
    assert (user["role"], user["teamId"]) == ("admin", team["id"])


def test_user_create_with_null_role_and_team_takes_defaults(target, http, admin):
    user = new_user(http, target, admin, role=None, teamId=None)
    assert (user["role"], user["teamId"]) == ("agent", None)


def test_user_limits_are_counted_in_utf16_units(target, http, admin):
    local = "a" * (255 - len("@example.com"))
    user = create(
        http,
        target,
        admin,
        "users",
        {"email": f"{local}@example.com", "name": "\U0001f600" * 127 + "n"},
    )
    assert len(user["email"]) == 255
    r = http.post(
        admin_url(target, "users"),
        json={"email": f"{sfx()}@example.com", "name": "\U0001f600" * 128},
        headers=admin,
    )
    assert_error(r, 400, "bad_request")
    # clean up the long email so a rerun on the same stack can create it again
    assert http.delete(admin_url(target, f"users/{user['id']}"), headers=admin).status_code == 204


_BAD_USERS = {
    "no-email": {"name": "N"},
    "null-email": {"email": None, "name": "N"},
    "numeric-email": {"email": 5, "name": "N"},
    "empty-email": {"email": "", "name": "N"},
    "no-at": {"email": "nobody.example.com", "name": "N"},
    "nothing-before-at": {"email": "@example.com", "name": "N"},
    "nothing-after-at": {"email": "x@", "name": "N"},
    "two-ats": {"email": "a@b@c", "name": "N"},
    "email-256": {"email": "a" * 244 + "@example.com", "name": "N"},
    "no-name": {"email": "EMAIL"},
    "empty-name": {"email": "EMAIL", "name": ""},
    "name-256": {"email": "EMAIL", "name": "n" * 256},
    "numeric-name": {"email": "EMAIL", "name": 5},
    "role-customer": {"email": "EMAIL", "name": "N", "role": "customer"},
    "role-upper": {"email": "EMAIL", "name": "N", "role": "AGENT"},
    "role-numeric": {"email": "EMAIL", "name": "N", "role": 1},
    "team-missing": {"email": "EMAIL", "name": "N", "teamId": 999999999},
    "team-string": {"email": "EMAIL", "name": "N", "teamId": "1"},
    "team-zero": {"email": "EMAIL", "name": "N", "teamId": 0},
    "team-negative": {"email": "EMAIL", "name": "N", "teamId": -1},
    "team-float": {"email": "EMAIL", "name": "N", "teamId": 1.5},
}


@pytest.mark.parametrize("case", list(_BAD_USERS))
def test_user_create_with_invalid_field_is_400(target, http, admin, case):
    body = {k: (f"{sfx()}@example.com" if v == "EMAIL" else v) for k, v in _BAD_USERS[case].items()}
    r = http.post(admin_url(target, "users"), json=body, headers=admin)
    assert_error(r, 400, "bad_request")


def test_user_email_taken_in_any_case_is_409(target, http, admin):
    user = new_user(http, target, admin)
    r = http.post(
        admin_url(target, "users"),
        json={"email": user["email"].upper(), "name": "Dup"},
        headers=admin,
    )
    assert_error(r, 409, "conflict")
    r = http.post(
        admin_url(target, "users"), json={"email": user["email"], "name": ""}, headers=admin
    )
    assert_error(r, 400, "bad_request")


def test_user_patch_changes_given_fields_and_bumps_updated_at(target, http, admin):
    team = new_team(http, target, admin)
    user = new_user(http, target, admin, teamId=team["id"])
    tick()
    s = sfx()
    r = http.patch(
        admin_url(target, f"users/{user['id']}"),
        json={"name": "Renamed", "email": f"NEW.{s}@X.Y", "role": "admin"},
        headers=admin,
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out == {
        **user,
        "name": "Renamed",
        "email": f"new.{s}@x.y",
        "role": "admin",
        "updatedAt": out["updatedAt"],
    }
    assert out["updatedAt"] > user["updatedAt"]
    assert http.get(admin_url(target, f"users/{user['id']}"), headers=admin).json() == out


def test_user_patch_null_on_required_field_means_not_given_and_clears_team(target, http, admin):
    team = new_team(http, target, admin)
    user = new_user(http, target, admin, teamId=team["id"])
    r = http.patch(
        admin_url(target, f"users/{user['id']}"),
        json={"name": None, "email": None, "role": None},
        headers=admin,
    )
    assert r.status_code == 200
    assert r.json()["teamId"] == team["id"]
    assert {k: r.json()[k] for k in ("name", "email", "role")} == {
        k: user[k] for k in ("name", "email", "role")
    }
    r = http.patch(admin_url(target, f"users/{user['id']}"), json={"teamId": None}, headers=admin)
    assert r.status_code == 200 and r.json()["teamId"] is None


def test_user_patch_empty_body_only_bumps_updated_at(target, http, admin):
    user = new_user(http, target, admin)
    tick()
    r = http.patch(admin_url(target, f"users/{user['id']}"), json={}, headers=admin)
    assert r.status_code == 200
    assert r.json() == {**user, "updatedAt": r.json()["updatedAt"]}
    assert r.json()["updatedAt"] > user["updatedAt"]


def test_user_patch_errors(target, http, admin):
    a, b = new_user(http, target, admin), new_user(http, target, admin)
    url = admin_url(target, f"users/{a['id']}")
    assert_error(http.patch(url, json={"email": b["email"]}, headers=admin), 409, "conflict")
    assert_error(http.patch(url, json={"teamId": 999999999}, headers=admin), 400, "bad_request")
    assert_error(http.patch(url, json={"role": "customer"}, headers=admin), 400, "bad_request")
    assert_error(http.patch(url, json={"name": ""}, headers=admin), 400, "bad_request")
    missing = admin_url(target, "users/999999999")
    assert_error(http.patch(missing, json={"name": "x"}, headers=admin), 404, "not_found")
    assert_error(http.patch(missing, json={"name": ""}, headers=admin), 400, "bad_request")


# --------------------------------------------------------------------------- teams


def test_team_create_and_read(target, http, admin):
    name = f"Team Ω {sfx()}"
    team = create(http, target, admin, "teams", {"name": name})
    assert (team["name"], team["description"]) == (name, None)
    with_desc = new_team(http, target, admin, description="")
    assert with_desc["description"] == ""
    r = http.get(admin_url(target, f"teams/{team['id']}"), headers=admin)
    assert r.json() == team


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": None},
        {"name": 5},
        {"name": "t" * 256},
        {"name": "NAME", "description": 5},
    ],
    ids=["no-name", "empty", "null", "numeric", "256", "numeric-description"],
)
def test_team_create_with_invalid_field_is_400(target, http, admin, body):
    body = {k: (f"t-{sfx()}" if v == "NAME" else v) for k, v in body.items()}
    assert_error(
        http.post(admin_url(target, "teams"), json=body, headers=admin), 400, "bad_request"
    )


def test_team_name_taken_is_409(target, http, admin):
    team = new_team(http, target, admin)
    r = http.post(admin_url(target, "teams"), json={"name": team["name"]}, headers=admin)
    assert_error(r, 409, "conflict")
    other = new_team(http, target, admin)
    r = http.patch(
        admin_url(target, f"teams/{other['id']}"), json={"name": team["name"]}, headers=admin
    )
    assert_error(r, 409, "conflict")
    r = http.patch(
        admin_url(target, f"teams/{team['id']}"), json={"name": team["name"]}, headers=admin
    )
    assert r.status_code == 200


def test_team_patch_null_description_clears_and_absent_keeps(target, http, admin):
    team = new_team(http, target, admin, description="first")
    url = admin_url(target, f"teams/{team['id']}")
    r = http.patch(url, json={"name": None}, headers=admin)
    assert (r.json()["name"], r.json()["description"]) == (team["name"], "first")
    r = http.patch(url, json={"description": None}, headers=admin)
    assert (r.json()["name"], r.json()["description"]) == (team["name"], None)


def test_deleting_team_nulls_its_members_team(target, http, admin):
    team = new_team(http, target, admin)
    user = new_user(http, target, admin, teamId=team["id"])
    r = http.delete(admin_url(target, f"teams/{team['id']}"), headers=admin)
    assert r.status_code == 204 and r.content == b""
    got = http.get(admin_url(target, f"users/{user['id']}"), headers=admin).json()
    assert got["teamId"] is None
    assert got["updatedAt"] == user["updatedAt"]


# --------------------------------------------------------------------------- labels


def test_label_create_lower_cases_title_and_defaults_color(target, http, admin):
    s = sfx()
    label = create(http, target, admin, "labels", {"title": f"Urgent_Case-{s}"})
    assert (label["title"], label["color"]) == (f"urgent_case-{s}", "#1f93ff")
    colored = new_label(http, target, admin, color="#ABCdef")
    assert colored["color"] == "#ABCdef"
    nulled = new_label(http, target, admin, color=None)
    assert nulled["color"] == "#1f93ff"


def test_label_title_of_64_is_accepted(target, http, admin):
    title = ("L" + sfx() * 7)[:64]
    label = create(http, target, admin, "labels", {"title": title})
    assert label["title"] == title.lower()


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"title": ""},
        {"title": None},
        {"title": 5},
        {"title": "has space"},
        {"title": "caf\u00e9"},
        {"title": "a.b"},
        {"title": "x" * 65},
        {"title": "TITLE", "color": "#abc"},
        {"title": "TITLE", "color": "red"},
        {"title": "TITLE", "color": "#GGGGGG"},
        {"title": "TITLE", "color": "1f93ff"},
        {"title": "TITLE", "color": "#1f93ff0"},
        {"title": "TITLE", "color": 5},
    ],
    ids=[
        "no-title",
        "empty",
        "null",
        "numeric",
        "space",
        "accent",
        "dot",
        "65",
        "short-color",
        "named-color",
        "non-hex",
        "no-hash",
        "long-color",
        "numeric-color",
    ],
)
def test_label_create_with_invalid_field_is_400(target, http, admin, body):
    body = {k: (f"t-{sfx()}" if v == "TITLE" else v) for k, v in body.items()}
    assert_error(
        http.post(admin_url(target, "labels"), json=body, headers=admin), 400, "bad_request"
    )


def test_label_title_taken_in_any_case_is_409(target, http, admin):
    label = new_label(http, target, admin)
    r = http.post(
        admin_url(target, "labels"), json={"title": label["title"].upper()}, headers=admin
    )
    assert_error(r, 409, "conflict")


def test_label_patch_lower_cases_title_and_null_color_keeps(target, http, admin):
    label = new_label(http, target, admin, color="#000000")
    s = sfx()
    r = http.patch(
        admin_url(target, f"labels/{label['id']}"),
        json={"title": f"NEW-{s}", "color": None},
        headers=admin,
    )
    assert r.status_code == 200
    assert (r.json()["title"], r.json()["color"]) == (f"new-{s}", "#000000")
    r = http.patch(
        admin_url(target, f"labels/{label['id']}"), json={"color": "#FFFFFF"}, headers=admin
    )
    assert r.json()["color"] == "#FFFFFF"
    r = http.patch(
        admin_url(target, f"labels/{label['id']}"), json={"color": "#FFF"}, headers=admin
    )
    assert_error(r, 400, "bad_request")


# --------------------------------------------------------------------------- contacts


def test_contact_create_defaults_nulls_and_keeps_unchecked_email(target, http, admin):
    plain = new_contact(http, target, admin)
    assert (plain["email"], plain["phone"], plain["externalId"]) == (None, None, None)
    ext = f"ext-{sfx()}"
    full = new_contact(http, target, admin, email="Not An Email", phone="+1 555", externalId=ext)
    assert (full["email"], full["phone"], full["externalId"]) == ("Not An Email", "+1 555", ext)
    # externalId is only unique when not null
    assert new_contact(http, target, admin, externalId=None)["externalId"] is None


def test_contact_size_limits(target, http, admin):
    ok = new_contact(
        http, target, admin, email="e" * 255, phone="p" * 64, externalId=sfx() * 6 + "abcd"
    )
    assert len(ok["externalId"]) == 64
    for field, value in [
        ("email", "e" * 256),
        ("phone", "p" * 65),
        ("externalId", "x" * 65),
        ("name", "n" * 256),
        ("name", ""),
        ("email", 5),
        ("phone", ["1"]),
        ("externalId", 7),
    ]:
        body = {"name": "Sized", field: value}
        r = http.post(admin_url(target, "contacts"), json=body, headers=admin)
        assert_error(r, 400, "bad_request")
    r = http.post(admin_url(target, "contacts"), json={"email": "x@y"}, headers=admin)
    assert_error(r, 400, "bad_request")


def test_contact_external_id_taken_is_409(target, http, admin):
    ext = f"ext-{sfx()}"
    new_contact(http, target, admin, externalId=ext)
    r = http.post(
        admin_url(target, "contacts"), json={"name": "Dup", "externalId": ext}, headers=admin
    )
    assert_error(r, 409, "conflict")
    other = new_contact(http, target, admin)
    r = http.patch(
        admin_url(target, f"contacts/{other['id']}"), json={"externalId": ext}, headers=admin
    )
    assert_error(r, 409, "conflict")


def test_contact_patch_null_clears_optional_fields(target, http, admin):
    c = new_contact(http, target, admin, email="a@b", phone="1", externalId=f"e-{sfx()}")
    r = http.patch(
        admin_url(target, f"contacts/{c['id']}"), json={"name": None, "phone": None}, headers=admin
    )
    assert r.status_code == 200
    assert (r.json()["name"], r.json()["email"], r.json()["phone"]) == (c["name"], "a@b", None)
    r = http.patch(
        admin_url(target, f"contacts/{c['id']}"),
        json={"email": None, "externalId": None},
        headers=admin,
    )
    assert {k: r.json()[k] for k in ("email", "phone", "externalId")} == {
        "email": None,
        "phone": None,
        "externalId": None,
    }


def test_contact_without_conversations_can_be_deleted(target, http, admin):
    c = new_contact(http, target, admin)
    r = http.delete(admin_url(target, f"contacts/{c['id']}"), headers=admin)
    assert r.status_code == 204 and r.content == b""
    assert_error(
        http.get(admin_url(target, f"contacts/{c['id']}"), headers=admin), 404, "not_found"
    )


def _q(http, target, admin, q):
    r = http.get(admin_url(target, "contacts"), params={"q": q, "perPage": 100}, headers=admin)
    assert r.status_code == 200, r.text
    return {c["id"] for c in r.json()["data"]}


def test_contacts_q_is_case_and_accent_insensitive_on_name_and_email(target, http, admin):
    s = sfx()
    by_name = new_contact(http, target, admin, name=f"Ren\u00e9e Dupr\u00e9 {s}")
    by_email = new_contact(http, target, admin, name="Other", email=f"MAIL-{s}@Example.com")
    assert _q(http, target, admin, f"renee dupre {s}") == {by_name["id"]}
    assert _q(http, target, admin, f"RENÉE DUPRÉ {s}") == {by_name["id"]}
    assert _q(http, target, admin, f"mail-{s}@EXAMPLE") == {by_email["id"]}
    assert _q(http, target, admin, s) == {by_name["id"], by_email["id"]}


def test_contacts_q_matches_percent_underscore_and_backslash_literally(target, http, admin):
    s = sfx()
    pct = new_contact(http, target, admin, name=f"a%b-{s}")
    new_contact(http, target, admin, name=f"axxb-{s}")
    under = new_contact(http, target, admin, name=f"c_d-{s}")
    new_contact(http, target, admin, name=f"cxd-{s}")
    back = new_contact(http, target, admin, name=f"e\\f-{s}")
    new_contact(http, target, admin, name=f"ef-{s}")
    bang = new_contact(http, target, admin, name=f"g!h-{s}")
    assert _q(http, target, admin, f"a%b-{s}") == {pct["id"]}
    assert _q(http, target, admin, f"c_d-{s}") == {under["id"]}
    assert _q(http, target, admin, f"e\\f-{s}") == {back["id"]}
    assert _q(http, target, admin, f"g!h-{s}") == {bang["id"]}
    assert _q(http, target, admin, f"%-{s}") == set()


def test_contacts_empty_q_is_no_filter(target, http, admin):
    new_contact(http, target, admin)
    all_ = http.get(admin_url(target, "contacts"), headers=admin).json()["meta"]["total"]
    r = http.get(admin_url(target, "contacts"), params={"q": ""}, headers=admin)
    assert r.json()["meta"]["total"] == all_


# --------------------------------------------------------------------------- generic CRUD


def _make(http, target, admin, kind):
    return {"users": new_user, "teams": new_team, "labels": new_label, "contacts": new_contact}[
        kind
    ](http, target, admin)


@pytest.mark.parametrize("kind", KINDS)
def test_delete_answers_204_then_the_resource_is_gone(target, http, admin, kind):
    item = _make(http, target, admin, kind)
    url = admin_url(target, f"{kind}/{item['id']}")
    r = http.delete(url, headers=admin)
    assert r.status_code == 204 and r.content == b""
    assert_error(http.get(url, headers=admin), 404, "not_found")
    assert_error(http.delete(url, headers=admin), 404, "not_found")
    assert_error(http.patch(url, json={}, headers=admin), 404, "not_found")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "bad_id", ["abc", "1abc", "-1", "0", "1.0", "999999999", "99999999999999999999"]
)
def test_unknown_or_malformed_path_id_is_404(target, http, admin, kind, bad_id):
    url = admin_url(target, f"{kind}/{bad_id}")
    assert_error(http.get(url, headers=admin), 404, "not_found")
    assert_error(http.patch(url, json={}, headers=admin), 404, "not_found")
    assert_error(http.delete(url, headers=admin), 404, "not_found")


@pytest.mark.parametrize("kind", KINDS)
def test_get_by_id_tolerates_one_trailing_slash(target, http, admin, kind):
    item = _make(http, target, admin, kind)
    r = http.get(admin_url(target, f"{kind}/{item['id']}/"), headers=admin)
    assert r.status_code == 200 and r.json() == item
    assert set(item) == KEYS[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_list_pages_in_id_order_with_meta(target, http, admin, kind):
    mine = [_make(http, target, admin, kind) for _ in range(3)]
    url = admin_url(target, kind)
    r = http.get(url, headers=admin)
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"data", "meta"}
    total = body["meta"]["total"]
    assert body["meta"] == {"page": 1, "perPage": 25, "total": total}
    assert total >= 3
    ids = [x["id"] for x in body["data"]]
    assert ids == sorted(ids) and len(ids) == min(25, total)
    for i, item in enumerate(mine):
        r = http.get(url, params={"page": total - 2 + i, "perPage": 1}, headers=admin)
        assert r.json() == {
            "data": [item],
            "meta": {"page": total - 2 + i, "perPage": 1, "total": total},
        }
    r = http.get(url, params={"page": total + 1, "perPage": 1}, headers=admin)
    assert r.json() == {"data": [], "meta": {"page": total + 1, "perPage": 1, "total": total}}
    r = http.get(url, params={"perPage": 100, "unknown": "x"}, headers=admin)
    assert r.json()["meta"] == {"page": 1, "perPage": 100, "total": total}


@pytest.mark.parametrize("kind", [*KINDS, "conversations"])
@pytest.mark.parametrize(
    "params",
    [
        {"page": "0"},
        {"page": "-1"},
        {"page": "abc"},
        {"page": "1.5"},
        {"page": ""},
        {"perPage": "0"},
        {"perPage": "101"},
        {"perPage": "abc"},
        {"perPage": "-1"},
        {"perPage": ""},
    ],
    ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()),
)
def test_list_with_bad_page_or_per_page_is_400(target, http, admin, kind, params):
    assert_error(
        http.get(admin_url(target, kind), params=params, headers=admin), 400, "bad_request"
    )


def test_users_filter_by_role_and_team(target, http, admin):
    team = new_team(http, target, admin)
    a = new_user(http, target, admin, teamId=team["id"])
    b = new_user(http, target, admin, teamId=team["id"], role="admin")
    new_user(http, target, admin)
    url = admin_url(target, "users")
    r = http.get(url, params={"teamId": team["id"]}, headers=admin)
    assert r.json() == {"data": [a, b], "meta": {"page": 1, "perPage": 25, "total": 2}}
    r = http.get(url, params={"teamId": team["id"], "role": "admin"}, headers=admin)
    assert r.json()["data"] == [b]
    r = http.get(url, params={"teamId": team["id"], "role": "agent"}, headers=admin)
    assert r.json()["data"] == [a]
    r = http.get(url, params={"role": "admin", "perPage": 100}, headers=admin)
    assert all(u["role"] == "admin" for u in r.json()["data"])
    r = http.get(url, params={"teamId": 999999999}, headers=admin)
    assert r.json() == {"data": [], "meta": {"page": 1, "perPage": 25, "total": 0}}


@pytest.mark.parametrize(
    "params",
    [
        {"role": "customer"},
        {"role": ""},
        {"role": "ADMIN"},
        {"teamId": "abc"},
        {"teamId": "0"},
        {"teamId": "-1"},
        {"teamId": ""},
    ],
    ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()),
)
def test_users_bad_filter_is_400(target, http, admin, params):
    assert_error(
        http.get(admin_url(target, "users"), params=params, headers=admin), 400, "bad_request"
    )
