"""chat-admin in process: users, teams, labels, contacts, conversations and stats
(legacy-api.md §5, §6 "chat-admin") over the production MySQL tables, unchanged.

Settings (``ModuleContext.env``): ``JWT_SECRET_KEY``, and ``DATABASE_URL`` in the
migration guide's form ``mysql+asyncmy://user:password@host:3306/chat`` (URL-escape the
password; ``mysql+aiomysql://`` is accepted too). Without ``DATABASE_URL`` the module runs
on SQLite, ``sqlite+aiosqlite:///./chat-gateway.db`` in the working directory (a file, so
that data survives restarts; ``sqlite+aiosqlite://`` gives a private in-memory database).
On MySQL the tables must exist (the legacy services create them); on SQLite they are
created at startup. See ``README.md`` beside this file for what SQLite does differently.

Driver: asyncmy, by measurement (``bench/mysql_drivers.py``: MariaDB 10.11 on localhost,
2-core shared machine, the module's own Store queries, drivers interleaved, 5 rounds;
2 000 primary-key reads and 200 list pages of 100 rows + COUNT)::

    case             asyncmy q/s  aiomysql q/s   client CPU µs/query (asyncmy / aiomysql)
    get                      723           609   1 233 / 1 575
    get, 20 tasks          1 209           854     898 / 1 137
    list                     370           203   2 648 / 5 218
    list, 20 tasks           499           218   2 345 / 4 505

asyncmy (Cython protocol) costs 20-50 % less client CPU per query and wins every case;
``mysql+aiomysql://`` stays accepted.

Example::

    from modules import ModuleContext
    from modules.admin import create_app

    app = create_app(ModuleContext(env={"DATABASE_URL": "mysql+asyncmy://chat:s%40fe@db/chat",
                                        "JWT_SECRET_KEY": "…"}))

    # routes.yaml
    # - path: /api/admin/
    #   legacy: http://chat-admin:8005
    #   module: admin
    #   new_percent: 10
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.types import ASGIApp

from modules import ModuleContext
from modules.admin.db import DEFAULT_URL, create_engine, normalise_url, prepare
from modules.admin.routes import routes
from modules.admin.store import Store
from modules.common.config import Settings
from modules.common.dryrun import flag_dry_run
from modules.common.http import ContractApp

__all__ = ["create_app"]


def create_app(ctx: ModuleContext) -> ASGIApp:
    """The chat-admin ASGI app; its lifespan opens and disposes the database engine."""
    settings = Settings.from_env(ctx.env)
    url = normalise_url(settings.database_url or DEFAULT_URL)  # a bad URL fails here, early
    state: dict[str, Store] = {}

    def store() -> Store:
        return state["store"]

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        engine = create_engine(url)
        try:
            await prepare(engine)
            state["store"] = Store(engine)
            yield
        finally:
            state.pop("store", None)
            await engine.dispose()

    # Shadow copies marked dry-run run in rolled-back transactions (Store._write).
    return ContractApp(
        service="chat-admin",
        settings=settings,
        routes=routes(store),
        lifespan=lifespan,
        dry_run=flag_dry_run,
    )
