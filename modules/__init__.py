"""The in-process Python modules and their registry.

A module is an ASGI app with its own lifespan, made by a factory the gateway calls with a
:class:`ModuleContext`. The gateway then calls the app with the scope it would have
proxied (path, query, headers incl. ``Authorization``, ``X-Request-Id``, ``X-Forwarded-*``)::

    from modules import ModuleContext, get_factory

    app = get_factory("session")(ModuleContext(dispatcher=None, env=os.environ))

Built-in modules are imported lazily, on first :func:`get_factory`, so that a gateway
routing nothing to a module never imports it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from starlette.types import ASGIApp

__all__ = [
    "BUILTIN",
    "DispatchResponse",
    "Dispatcher",
    "ModuleContext",
    "ModuleFactory",
    "UnknownModule",
    "get_factory",
    "names",
    "register",
]


@dataclass(frozen=True)
class DispatchResponse:
    """A complete answer to a :meth:`Dispatcher.request` call."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


class Dispatcher(Protocol):
    """Module-to-module calls through the gateway's split (the gateway implements it).

    A module that needs another service calls it here instead of importing it, so that
    the call lands on whichever side (legacy or module) the route currently points to.
    """

    async def request(
        self, method: str, path: str, *, headers: list[tuple[str, str]], body: bytes = b""
    ) -> DispatchResponse: ...


@dataclass(frozen=True)
class ModuleContext:
    """What a module factory gets: the dispatcher and the settings source."""

    dispatcher: Dispatcher | None = None
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)


ModuleFactory = Callable[[ModuleContext], ASGIApp]

#: Built-in modules: name -> "package.module:factory", imported on first use.
BUILTIN: dict[str, str] = {
    "session": "modules.session:create_app",
    "ai": "modules.ai:create_app",
    "admin": "modules.admin:create_app",
    "websocket": "modules.websocket:create_app",
}

_registered: dict[str, ModuleFactory] = {}


def _extra() -> dict[str, str]:
    """``CHATGW_EXTRA_MODULES="name=package.module:factory,..."``: modules a process adds
    without code (plugins; the gateway tests register their sample modules this way)."""
    out: dict[str, str] = {}
    for item in os.environ.get("CHATGW_EXTRA_MODULES", "").split(","):
        name, sep, target = item.strip().partition("=")
        if sep and name.strip() and ":" in target:
            out[name.strip()] = target.strip()
    return out


class UnknownModule(LookupError):
    """No module is registered or built in under that name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown module {name!r}; known modules: {', '.join(names())}")
        self.name = name


def register(name: str, factory: ModuleFactory) -> None:
    """Register (or replace) a module factory under ``name`` (tests, plugins)."""
    _registered[name] = factory


def get_factory(name: str) -> ModuleFactory:
    """The factory of module ``name``; built-ins are imported here, on first use.

    Raises :class:`UnknownModule` (a ``LookupError``) for a name nobody knows.
    """
    if name in _registered:
        return _registered[name]
    target = BUILTIN.get(name) or _extra().get(name)
    if target is None:
        raise UnknownModule(name)
    module_name, _, attr = target.partition(":")
    factory: ModuleFactory = getattr(importlib.import_module(module_name), attr)
    _registered[name] = factory
    return factory


def names() -> list[str]:
    """Every module name that :func:`get_factory` accepts, sorted."""
    return sorted({*BUILTIN, *_registered, *_extra()})
