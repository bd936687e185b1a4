"""chat-core's call to ai-service (legacy-api.md §4, CONTRACT-NOTES "ai-service call").

``POST /api/ai/chat`` with ``{"sessionId", "message"}``, the caller's ``Authorization``
and ``content-type: application/json``. Inside the gateway the call goes through the
dispatcher, so the ai route's split applies and the user stays in one cohort (legacy
ai-service over HTTP, or ``modules/ai`` in process). Standalone (no dispatcher) it goes
over HTTP to ``AI_SERVICE_URL`` (default ``http://127.0.0.1:8003``) with one pooled
client. Either way ``AI_SERVICE_TIMEOUT_MS`` (default 40 000) covers the whole exchange,
and anything but a 200 JSON object with a string ``reply`` is ``upstream_error``::

    async with AiClient(dispatcher, url, timeout_ms=40000) as ai:
        reply = await ai.chat("Bearer …", session_id, "hello")
"""

from __future__ import annotations

import asyncio
from types import TracebackType

import httpx

from modules import Dispatcher
from modules.common.errors import ApiError, upstream_error
from modules.common.jsfmt import JSONError, js_dumps, js_loads

__all__ = ["DEFAULT_AI_SERVICE_URL", "DEFAULT_AI_TIMEOUT_MS", "AiClient"]

DEFAULT_AI_SERVICE_URL = "http://127.0.0.1:8003"
DEFAULT_AI_TIMEOUT_MS = 40000
_PATH = "/api/ai/chat"


class AiClient:
    """Asks ai-service for a reply (see the module docstring)."""

    def __init__(self, dispatcher: Dispatcher | None, url: str, *, timeout_ms: int) -> None:
        self.dispatcher = dispatcher
        self.url = url.rstrip("/") + _PATH
        self.timeout = timeout_ms / 1000
        self._http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> AiClient:
        if self.dispatcher is None:
            self._http = httpx.AsyncClient(
                trust_env=False,
                follow_redirects=False,
                timeout=self.timeout,
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def chat(self, authorization: str | None, session_id: str, text: str) -> str:
        """The reply text, or raise the 502 ``upstream_error`` :class:`ApiError`."""
        body = js_dumps({"sessionId": session_id, "message": text})
        headers = [("content-type", "application/json")]
        if authorization is not None:
            headers.insert(0, ("authorization", authorization))
        try:
            status, content = await asyncio.wait_for(self._post(headers, body), self.timeout)
        except ApiError:
            raise
        except TimeoutError:
            raise upstream_error("ai-service failed: timed out") from None
        except (httpx.HTTPError, OSError) as exc:
            raise upstream_error(f"ai-service failed: {type(exc).__name__}") from None
        if status != 200:
            raise upstream_error(f"ai-service failed: ai-service answered {status}")
        try:
            data = js_loads(content)
        except JSONError:
            raise upstream_error("ai-service failed: answer is not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("reply"), str):
            raise upstream_error("ai-service answered without a reply")
        return str(data["reply"])

    async def _post(self, headers: list[tuple[str, str]], body: bytes) -> tuple[int, bytes]:
        if self.dispatcher is not None:
            resp = await self.dispatcher.request("POST", _PATH, headers=headers, body=body)
            return resp.status, resp.body
        if self._http is None:
            raise RuntimeError("the AI client is not open")
        r = await self._http.post(self.url, headers=headers, content=body)
        return r.status_code, r.content
