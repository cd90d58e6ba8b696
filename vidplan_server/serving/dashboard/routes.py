"""HTTP routes of the dashboard, on the server's FastAPI app (live) or on a small app of its own (replay).

==============================  =====  =====================================================================
route                           token  what
==============================  =====  =====================================================================
``GET /dashboard``              no     the page (static HTML; holds no data)
``GET /dashboard/static/...``   no     its script and style sheet, shipped in the package
``GET /dashboard/api/config``   no     ``{"mode": "live" | "replay", "auth": bool}``: whether to ask for a token
``GET /dashboard/api/events``   yes    server-sent events (:mod:`.events`); ``?watch=SESSION`` picks the session
                                       whose plans and heatmaps it carries
``GET /dashboard/api/replay``   no     replay mode only: the plan log being replayed (JSON lines)
==============================  =====  =====================================================================

Auth: with a token the event stream needs ``authorization: Bearer <token>``, the API's own header, which the
page sends from ``fetch`` (it reads the stream itself rather than through ``EventSource``, which cannot send
headers); the token is typed into the page once and kept in the tab's ``sessionStorage``, never put in a URL.
The page, script and style sheet are public: they carry no robot's data. Routes stay out of the OpenAPI schema
(they are not the planning API). Read-only: no route changes anything on the server.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, StreamingResponse
from starlette.staticfiles import StaticFiles

from vidplan_server.serving.dashboard.config import DashboardConfig
from vidplan_server.serving.dashboard.monitor import DashboardMonitor
from vidplan_server.serving.errors import Unauthenticated, bearer_token_matches

STATIC = Path(__file__).parent / "static"
#: The page may load only its own script, style and the data URLs of the heatmaps, and talk only to its server.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _clean(value):
    """JSON has no NaN or infinity: such floats become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def sse(event: dict) -> str:
    """One server-sent event (``data:`` line) carrying ``event`` as JSON."""
    try:
        text = json.dumps(event, separators=(",", ":"), allow_nan=False)
    except ValueError:
        text = json.dumps(_clean(event), separators=(",", ":"), allow_nan=False)
    return f"data: {text}\n\n"


def add_page(app: FastAPI, mode: str, auth: bool) -> None:
    """The page, its static files and its config route."""
    app.mount("/dashboard/static", StaticFiles(directory=STATIC), name="dashboard-static")

    @app.get("/dashboard", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=PAGE_HEADERS)

    @app.get("/dashboard/", include_in_schema=False)
    async def page_slash() -> RedirectResponse:
        return RedirectResponse("/dashboard")

    @app.get("/dashboard/api/config", include_in_schema=False)
    async def config() -> JSONResponse:
        return JSONResponse({"mode": mode, "auth": auth}, headers={"Cache-Control": "no-store"})


def mount_live(
    app: FastAPI, service, config: DashboardConfig = DashboardConfig(), token: str | None = None
) -> DashboardMonitor:
    """The live dashboard on the server's app: page, config and the event stream of ``service``'s monitor."""
    monitor = DashboardMonitor.of(service, config, auth=token is not None)
    add_page(app, "live", token is not None)

    @app.get("/dashboard/api/events", include_in_schema=False)
    async def events(request: Request, watch: str | None = None) -> StreamingResponse:
        if token is not None and not bearer_token_matches(request.headers.get("authorization"), token):
            service.log.warning(
                ("http", "dashboard-unauthenticated"), "refused a dashboard stream without a valid token"
            )
            raise Unauthenticated("missing or wrong bearer token", field="authorization")
        if watch is not None and (len(watch) > 256 or not watch.isprintable()):
            watch = None  # not a session the board could hold
        sub = monitor.subscribe(watch)

        async def stream() -> AsyncIterator[str]:
            try:
                async for event in monitor.events(sub):
                    yield sse(event)
            finally:
                monitor.unsubscribe(sub)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )

    return monitor


def replay_app(log_path: Path) -> FastAPI:
    """The replay server of ``vidplan dashboard --replay``: the page and the plan log, nothing else."""
    app = FastAPI(title="VidPlan dashboard (replay)", openapi_url=None, docs_url=None, redoc_url=None)
    add_page(app, "replay", auth=False)

    @app.get("/dashboard/api/replay", include_in_schema=False)
    async def replay() -> FileResponse:
        return FileResponse(log_path, media_type="application/x-ndjson", headers={"Cache-Control": "no-store"})

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/dashboard")

    return app
