"""chat-admin's HTTP surface (legacy-api.md §5): thin handlers over :class:`Store`.

Each handler runs the §1 checks in order: the route matched (404) → caller (401) → role
(403: customers never, agents only ``GET``) → body (413, 400) → query and body rules
(400) → the store's referenced ids (400), addressed row (404) and conflicts (409).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import Response

from modules.admin import validate as v
from modules.admin import wire
from modules.admin.store import Store
from modules.common.auth import User
from modules.common.errors import forbidden
from modules.common.http import ApiRequest, Route, empty_response, json_response

__all__ = ["routes"]

BASE = "/api/admin"

_COLUMNS = {
    "users": v.user_columns,
    "teams": v.team_columns,
    "labels": v.label_columns,
    "contacts": v.contact_columns,
}


def can_read(req: ApiRequest) -> User:
    user = req.user()
    if user.role == "customer":
        raise forbidden("customers may not use chat-admin")
    return user


def can_write(req: ApiRequest) -> User:
    user = can_read(req)
    if user.role != "admin":
        raise forbidden("only admins may change data")
    return user


def _list_body(data: list[object], page: int, per_page: int, total: int) -> Response:
    return json_response(
        {"data": data, "meta": {"page": page, "perPage": per_page, "total": total}}
    )


def _kind_routes(kind: str, store: Callable[[], Store]) -> list[Route]:
    to_wire = wire.WIRE[kind]
    columns = _COLUMNS[kind]

    async def list_(req: ApiRequest) -> Response:
        can_read(req)
        page, per_page = v.page_params(req.query)
        role = team_id = q = None
        if kind == "users":
            role = v.enum_query(req.query, "role", v.USER_ROLES)
            team_id = v.query_int(req.query, "teamId")
        elif kind == "contacts":
            q = req.query("q")
        rows, total = await store().list_rows(
            kind, page=page, per_page=per_page, role=role, team_id=team_id, q=q
        )
        return _list_body([to_wire(r) for r in rows], page, per_page, total)

    async def create(req: ApiRequest) -> Response:
        can_write(req)
        cols = columns(await req.json_object(), create=True)
        return json_response(to_wire(await store().create_row(kind, cols)), status=201)

    async def get(req: ApiRequest) -> Response:
        can_read(req)
        return json_response(to_wire(await store().get_row(kind, v.path_id(req.params["id"]))))

    async def patch(req: ApiRequest) -> Response:
        can_write(req)
        cols = columns(await req.json_object(), create=False)
        row = await store().update_row(kind, v.path_id(req.params["id"]), cols)
        return json_response(to_wire(row))

    async def delete(req: ApiRequest) -> Response:
        can_write(req)
        await store().delete_row(kind, v.path_id(req.params["id"]))
        return empty_response(204)

    base = f"{BASE}/{kind}"
    return [
        Route("GET", base, list_),
        Route("POST", base, create),
        Route("GET", base + "/{id}", get),
        Route("PATCH", base + "/{id}", patch),
        Route("DELETE", base + "/{id}", delete),
    ]


def _conversation_routes(store: Callable[[], Store]) -> list[Route]:
    async def list_(req: ApiRequest) -> Response:
        can_read(req)
        page, per_page = v.page_params(req.query)
        status = v.enum_query(req.query, "status", v.STATUSES)
        assignee_id = v.query_int(req.query, "assigneeId")
        team_id = v.query_int(req.query, "teamId")
        label = req.query("label")
        data, total = await store().list_conversations(
            page=page,
            per_page=per_page,
            status=status,
            assignee_id=assignee_id,
            team_id=team_id,
            label=v.lower(label) if label else None,
        )
        return _list_body(list(data), page, per_page, total)

    async def get(req: ApiRequest) -> Response:
        can_read(req)
        return json_response(await store().get_conversation(v.path_id(req.params["id"])))

    async def patch(req: ApiRequest) -> Response:
        can_write(req)
        cols = v.conversation_columns(await req.json_object())
        conv_id = v.path_id(req.params["id"])
        return json_response(await store().update_conversation(conv_id, cols))

    async def add_label(req: ApiRequest) -> Response:
        can_write(req)
        title = v.label_title(await req.json_object(), required=True)
        assert title is not None
        conv_id = v.path_id(req.params["id"])
        return json_response(await store().add_label(conv_id, title))

    async def remove_label(req: ApiRequest) -> Response:
        can_write(req)
        title = v.lower(req.params["title"])
        conv_id = v.path_id(req.params["id"])
        return json_response(await store().remove_label(conv_id, title))

    async def messages(req: ApiRequest) -> Response:
        can_read(req)
        limit = v.query_int(req.query, "limit", hi=200, default=50)
        assert limit is not None
        conv_id = v.path_id(req.params["id"])
        data = await store().list_messages(conv_id, limit=limit, before=req.query("before"))
        return json_response({"data": data})

    base = f"{BASE}/conversations"
    return [
        Route("GET", base, list_),
        Route("GET", base + "/{id}", get),
        Route("PATCH", base + "/{id}", patch),
        Route("POST", base + "/{id}/labels", add_label),
        Route("DELETE", base + "/{id}/labels/{title}", remove_label),
        Route("GET", base + "/{id}/messages", messages),
    ]


def routes(store: Callable[[], Store]) -> list[Route]:
    """Every chat-admin route; ``store()`` is the store of the running lifespan."""

    async def stats(req: ApiRequest) -> Response:
        can_read(req)
        return json_response(await store().stats())

    out: list[Route] = []
    for kind in _COLUMNS:
        out += _kind_routes(kind, store)
    out += _conversation_routes(store)
    out.append(Route("GET", f"{BASE}/stats", stats))
    return out
