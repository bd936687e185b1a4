"""The DashScope text-generation client (shared/contract/dashscope.md), as legacy calls it.

One pooled ``httpx.AsyncClient`` per module lifespan (``trust_env=False``, no redirects
followed, no retries: a generation the provider may have received is never sent twice).
Every failure becomes :class:`ProviderError`, mapped to 502 ``upstream_error`` in one
place (the module); the ``stage`` says where it happened (``connect``, ``status``,
``body``, ``timeout``, ``stream``) for logs and metrics::

    async with DashScopeClient(settings) as client:
        result = await client.chat(messages)            # ChatResult(reply, usage)
        stream = await client.open_stream(messages)     # 200 event stream, or ProviderError
        async for piece in stream.pieces(): ...         # text pieces; raises ProviderError
        stream.usage                                    # after the last piece
"""

from __future__ import annotations

import asyncio
import codecs
import math
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

from modules.common.config import Settings
from modules.common.jsfmt import JSONError, js_dumps, js_loads

GENERATION_PATH = "/api/v1/services/aigc/text-generation/generation"


class ProviderError(Exception):
    """The provider failed, timed out or answered garbage (-> 502 ``upstream_error``)."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.message = message


def token_counts(usage: Any) -> dict[str, Any]:
    """``{"inputTokens", "outputTokens"}`` from the provider's ``usage`` (missing -> 0)."""

    def n(v: Any) -> Any:
        ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        return v if ok else 0

    if not isinstance(usage, dict):
        return {"inputTokens": 0, "outputTokens": 0}
    return {
        "inputTokens": n(usage.get("input_tokens")),
        "outputTokens": n(usage.get("output_tokens")),
    }


@dataclass(frozen=True)
class ChatResult:
    reply: str
    usage: dict[str, Any]


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str


_LINE = re.compile(r"\r\n|\r|\n")


class SseParser:
    """Incremental ``text/event-stream`` parser (comments and ``id:`` ignored)."""

    def __init__(self) -> None:
        self._buf = ""
        self._event = ""
        self._data: str | None = None

    def feed(self, text: str) -> list[SseEvent]:
        self._buf += text
        out: list[SseEvent] = []
        start = 0
        for m in _LINE.finditer(self._buf):
            # A lone "\r" at the very end may be the first half of "\r\n": wait for more.
            if m.group() == "\r" and m.start() == len(self._buf) - 1:
                break
            self._line(self._buf[start : m.start()], out)
            start = m.end()
        self._buf = self._buf[start:]
        return out

    def _line(self, line: str, out: list[SseEvent]) -> None:
        if line == "":
            if self._data is not None:
                out.append(SseEvent(self._event or "message", self._data))
            self._event, self._data = "", None
            return
        if line.startswith(":"):
            return
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event = value
        elif field == "data":
            self._data = value if self._data is None else f"{self._data}\n{value}"


class ProviderStream:
    """A started provider event stream (status 200, ``text/event-stream``)."""

    def __init__(self, response: httpx.Response, idle_timeout: float) -> None:
        self._response = response
        self._idle = idle_timeout
        self.usage: dict[str, Any] = {"inputTokens": 0, "outputTokens": 0}

    async def pieces(self) -> AsyncIterator[str]:
        """Non-empty text pieces until ``finish_reason: "stop"``; :class:`ProviderError`
        on an error event, an unparsable event, a close before stop or an idle timeout."""
        parser = SseParser()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        chunks = self._response.aiter_raw()
        while True:
            try:
                async with asyncio.timeout(self._idle):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                # As in the SSE spec, an event not ended by a blank line is dropped at EOF.
                raise ProviderError(
                    "stream", "provider closed the stream before finishing"
                ) from None
            except TimeoutError:
                raise ProviderError("timeout", "provider timed out") from None
            except httpx.HTTPError as exc:
                raise ProviderError("stream", f"provider stream failed: {exc}") from exc
            for ev in parser.feed(decoder.decode(chunk)):
                if ev.event == "error":
                    raise ProviderError("stream", "provider reported an error mid-stream")
                try:
                    data = js_loads(ev.data)
                except JSONError:
                    data = None
                if not isinstance(data, dict):
                    raise ProviderError("stream", "provider sent an unparsable event")
                output = data.get("output")
                choices = output.get("choices") if isinstance(output, dict) else None
                choice = choices[0] if isinstance(choices, list) and choices else None
                message = choice.get("message") if isinstance(choice, dict) else None
                piece = message.get("content") if isinstance(message, dict) else None
                if isinstance(piece, str) and piece:
                    yield piece
                if isinstance(choice, dict) and choice.get("finish_reason") == "stop":
                    self.usage = token_counts(data.get("usage"))
                    return

    async def aclose(self) -> None:
        await self._response.aclose()


class DashScopeClient:
    """Pooled client of the provider; use as an async context manager (the lifespan)."""

    def __init__(self, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None):
        self.settings = settings
        self.timeout = settings.dashscope_timeout_ms / 1000
        self._client = httpx.AsyncClient(
            base_url=settings.dashscope_base_url,
            trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(self.timeout),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
            transport=transport,
        )

    async def __aenter__(self) -> DashScopeClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    def _request(self, messages: list[dict[str, str]], *, stream: bool) -> httpx.Request:
        parameters: dict[str, Any] = {"result_format": "message"}
        headers = {
            "Authorization": f"Bearer {self.settings.dashscope_api_key or ''}",
            "Content-Type": "application/json",
        }
        if stream:
            parameters["incremental_output"] = True
            headers["X-DashScope-SSE"] = "enable"
        body = {
            "model": self.settings.dashscope_model,
            "input": {"messages": messages},
            "parameters": parameters,
        }
        return self._client.build_request(
            "POST", GENERATION_PATH, headers=headers, content=js_dumps(body)
        )

    async def chat(self, messages: list[dict[str, str]]) -> ChatResult:
        """One generation; the whole call (connect to last byte) is bounded by the timeout."""
        try:
            async with asyncio.timeout(self.timeout):
                resp = await self._client.send(self._request(messages, stream=False))
        except TimeoutError:
            raise ProviderError("timeout", "provider timed out") from None
        except httpx.TimeoutException:
            raise ProviderError("timeout", "provider timed out") from None
        except httpx.HTTPError as exc:
            raise ProviderError("connect", f"provider unreachable: {exc}") from exc
        if resp.status_code != 200:
            raise ProviderError("status", f"provider answered {resp.status_code}")
        try:
            data = js_loads(resp.content)
        except JSONError:
            raise ProviderError("body", "provider answer is not JSON") from None
        output = data.get("output") if isinstance(data, dict) else None
        choices = output.get("choices") if isinstance(output, dict) else None
        choice = choices[0] if isinstance(choices, list) and choices else None
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise ProviderError("body", "provider answer has no output.choices[0].message.content")
        return ChatResult(reply=content, usage=token_counts(data.get("usage")))

    async def open_stream(self, messages: list[dict[str, str]]) -> ProviderStream:
        """Send a streaming generation; returns once the provider answered 200 with an
        event stream (bounded by the timeout), else raises :class:`ProviderError`."""
        try:
            async with asyncio.timeout(self.timeout):
                resp = await self._client.send(self._request(messages, stream=True), stream=True)
        except (TimeoutError, httpx.TimeoutException):
            raise ProviderError("timeout", "provider timed out") from None
        except httpx.HTTPError as exc:
            raise ProviderError("connect", f"provider unreachable: {exc}") from exc
        ctype = resp.headers.get("content-type", "").lower()
        if resp.status_code != 200 or not ctype.startswith("text/event-stream"):
            await resp.aclose()
            if resp.status_code != 200:
                raise ProviderError("status", f"provider answered {resp.status_code}")
            raise ProviderError("status", "provider did not answer an event stream")
        return ProviderStream(resp, self.timeout)
