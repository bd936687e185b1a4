"""End-to-end flows across chat-session, chat-core and chat-admin (§2, §4, §5).

A customer talks, the conversation and contact appear in chat-admin, an admin works the
conversation, and the next message lands in the same conversation.
"""

from __future__ import annotations

from chat_helpers import (
    admin_url,
    assert_message,
    create_session,
    get_conversation,
    join,
    new_label,
    new_team,
    new_user,
    recv,
    send,
    send_ok,
    tick,
    ws_open,
)
from contract_helpers import auth


def test_customer_conversation_is_listed_worked_and_reused_by_chat_admin(target, http, token, uid):
    customer = uid()
    cust_tok = token(sub=customer)
    admin = auth(token(sub=uid(), role="admin"))
    sid = create_session(http, target, cust_tok, customer)

    # 1. The first message through chat-core creates the contact and the conversation.
    first = send_ok(http, target, cust_tok, sid, "my order is late")
    assert first["reply"]["text"] == "You said: my order is late"
    r = http.get(admin_url(target, "contacts"), params={"q": customer}, headers=admin)
    contacts = r.json()["data"]
    assert len(contacts) == 1
    contact = contacts[0]
    assert (contact["name"], contact["externalId"], contact["email"], contact["phone"]) == (
        customer,
        customer,
        None,
        None,
    )
    listed = http.get(
        admin_url(target, "conversations"), params={"perPage": 100}, headers=admin
    ).json()["data"]
    mine = [c for c in listed if c["sessionId"] == sid]
    assert len(mine) == 1
    conv = mine[0]
    assert (conv["contactId"], conv["status"], conv["labels"]) == (contact["id"], "open", [])
    r = http.get(admin_url(target, f"conversations/{conv['id']}/messages"), headers=admin)
    assert r.json() == {"data": [first["message"], first["reply"]]}

    # 2. An admin assigns, labels and resolves it.
    team = new_team(http, target, admin)
    agent = new_user(http, target, admin, teamId=team["id"])
    label = new_label(http, target, admin)
    r = http.patch(
        admin_url(target, f"conversations/{conv['id']}"),
        json={"assigneeId": agent["id"], "teamId": team["id"], "status": "pending"},
        headers=admin,
    )
    assert r.status_code == 200
    r = http.post(
        admin_url(target, f"conversations/{conv['id']}/labels"),
        json={"title": label["title"]},
        headers=admin,
    )
    assert r.json()["labels"] == [label["title"]]
    r = http.patch(
        admin_url(target, f"conversations/{conv['id']}"), json={"status": "resolved"}, headers=admin
    )
    worked = r.json()
    assert (worked["status"], worked["assigneeId"], worked["teamId"], worked["labels"]) == (
        "resolved",
        agent["id"],
        team["id"],
        [label["title"]],
    )
    r = http.get(
        admin_url(target, "conversations"),
        params={"status": "resolved", "assigneeId": agent["id"]},
        headers=admin,
    )
    assert [c["id"] for c in r.json()["data"]] == [conv["id"]]

    # 3. The next message (over the WebSocket this time) reuses the conversation.
    tick()
    with ws_open(target, cust_tok) as ws:
        join(ws, sid)
        send(ws, {"type": "message", "sessionId": sid, "text": "still late", "clientMsgId": "f1"})
        ack = recv(ws)
        assert_message(
            ack["message"], session_id=sid, sender="customer", sender_id=customer, text="still late"
        )
        assert recv(ws) == {"type": "message", "message": ack["message"]}
        reply = recv(ws)["message"]
    again = get_conversation(http, target, admin, conv["id"])
    assert again == {**worked, "updatedAt": again["updatedAt"]}
    assert again["updatedAt"] > worked["updatedAt"]
    r = http.get(admin_url(target, f"conversations/{conv['id']}/messages"), headers=admin)
    assert r.json()["data"] == [first["message"], first["reply"], ack["message"], reply]
    r = http.get(admin_url(target, "contacts"), params={"q": customer}, headers=admin)
    assert r.json()["meta"]["total"] == 1


def test_second_session_of_a_customer_gets_its_own_conversation_with_the_same_contact(
    target, http, token, uid
):
    customer = uid()
    cust_tok = token(sub=customer)
    admin = auth(token(sub=uid(), role="admin"))
    s1 = create_session(http, target, cust_tok, customer)
    s2 = create_session(http, target, cust_tok, customer)
    send_ok(http, target, cust_tok, s1, "first session")
    send_ok(http, target, cust_tok, s2, "second session")
    listed = http.get(
        admin_url(target, "conversations"), params={"perPage": 100}, headers=admin
    ).json()["data"]
    convs = {c["sessionId"]: c for c in listed if c["sessionId"] in (s1, s2)}
    assert set(convs) == {s1, s2}
    assert convs[s1]["contactId"] == convs[s2]["contactId"]
    assert convs[s1]["id"] < convs[s2]["id"]
    # newest activity first
    order = [c["sessionId"] for c in listed if c["sessionId"] in (s1, s2)]
    assert order == [s2, s1]
