"""modules.common.http: the JSON answer's bytes and the dry-run hook of ContractApp."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from starlette.responses import Response

from modules.common.config import Settings
from modules.common.dryrun import DRY_RUN, flag_dry_run
from modules.common.http import (
    JSON_CONTENT_TYPE,
    ApiRequest,
    ContractApp,
    JsonResponse,
    Route,
    json_response,
)


@pytest.mark.parametrize("status", [200, 201, 204, 304, 404, 101])
def test_json_response_has_starlettes_bytes_for_every_status(status):
    body = b'{"sessionId":"s-1","n":[1,2,3]}'
    ours = JsonResponse(body, status)
    theirs = Response(body, status_code=status, media_type=JSON_CONTENT_TYPE)
    assert (ours.status_code, ours.raw_headers, ours.body) == (
        theirs.status_code, theirs.raw_headers, theirs.body,
    )  # fmt: skip
    assert ours.background is None and ours.media_type == theirs.media_type


def test_json_response_with_headers_keeps_them_first():
    r = json_response({"a": 1}, 201, headers={"Location": "/x"})
    assert r.raw_headers == [
        (b"location", b"/x"),
        (b"content-length", b"7"),
        (b"content-type", JSON_CONTENT_TYPE.encode()),
    ]


def _call(app: ContractApp, headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    scope = {
        "type": "http", "method": "GET", "path": "/api/flag", "raw_path": b"/api/flag",
        "query_string": b"", "headers": headers,
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    return sent


def _app(dry_run: Callable[..., Any] | None) -> ContractApp:
    async def flag(req: ApiRequest) -> Response:
        return json_response({"dry": DRY_RUN.get()})

    return ContractApp(
        service="t", settings=Settings.from_env({}), routes=[Route("GET", "/api/flag", flag)],
        dry_run=dry_run,
    )  # fmt: skip


MARKED = [(b"x-gateway-shadow", b"dry-run")]


def test_a_marked_request_runs_in_the_dry_run_and_the_flag_is_undone_after_the_answer():
    seen: list[str] = []

    async def hook(scope: Any) -> Callable[[], None]:
        undo = await flag_dry_run(scope)
        seen.append("enter")
        return lambda: (seen.append("undo"), undo())  # type: ignore[func-returns-value]

    app = _app(hook)
    assert app.shadow_dry_run is True
    sent = _call(app, MARKED)
    assert sent[1]["body"] == b'{"dry":true}' and seen == ["enter", "undo"]
    assert _call(app, [(b"x-gateway-shadow", b"copy")])[1]["body"] == b'{"dry":false}'
    assert seen == ["enter", "undo"]  # no marker, no hook


def test_an_app_without_a_dry_run_neither_honours_nor_declares_it():
    app = _app(None)
    assert app.shadow_dry_run is False
    assert _call(app, MARKED)[1]["body"] == b'{"dry":false}'
