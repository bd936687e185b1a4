"""``chatgw`` served by uvicorn's own httptools protocol instead of the gateway's.

``python -m relay_gateway serve ...`` takes the CLI's arguments. Without
``gateway.http11.GatewayHttpProtocol`` nobody asks the gateway for a WebSocket tunnel, so
relayed WebSockets go through uvicorn's WebSocket protocol and the frame relay
(``gateway.proxy_ws``), as they do under any other ASGI server: the tests of that path run
against this.
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn

from gateway import server
from gateway.cli import main

_uvicorn_config = server.uvicorn_config


def uvicorn_config(app: Any, **kw: Any) -> uvicorn.Config:
    return _uvicorn_config(app, **{**kw, "http": "httptools"})


server.uvicorn_config = uvicorn_config

if __name__ == "__main__":
    sys.exit(main())
