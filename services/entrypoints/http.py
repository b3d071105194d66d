"""One way to serve an ASGI app in a drip process: uvicorn, inside the process's own event
loop and supervisor (the API, the dashboard and /metrics; the gateways' webhooks)."""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI


async def serve_http(api: FastAPI, host: str, port: int) -> None:
    """Serve `api` on `host:port` until cancelled; signals stay the supervisor's."""
    server = uvicorn.Server(uvicorn.Config(api, host=host, port=port, log_level="warning",
                                           lifespan="off"))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    try:
        await server.serve()
    finally:
        server.should_exit = True
