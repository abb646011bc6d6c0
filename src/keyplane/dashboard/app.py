"""The dashboard's HTTP side: the page, a JSON snapshot, a server-sent event stream, controls.

Routes (all under the mount point, e.g. ``/dashboard``):

* ``GET /`` the page (static HTML and JS bundled in the package, no CDN: ECharts for the graph
  and the charts, see ``static/vendor/README.md``);
* ``GET /api/state`` the :meth:`~keyplane.dashboard.view.NetworkView.snapshot` as JSON;
* ``GET /api/stream`` server-sent events: a ``state`` event with the snapshot whenever it
  changed, at most every ``push_interval_s`` (EventSource reconnects on its own);
* ``POST /api/links/{link_id}/{action}`` with action ``cut``, ``restore`` or ``eve``
  (optional ``?fraction=``): the same :class:`~keyplane.physical.wire.LinkCommand` as
  ``keyplane link``. Only when controls are enabled, and only with the header
  ``X-Keyplane-Dashboard: 1``: a cross-site form cannot set it, so another page open in the
  operator's browser cannot cut links (a fetch with it needs a CORS preflight, never
  granted).

The dashboard listens where the process's operations endpoints listen (loopback by default):
it is an operator tool, not an application interface (docs/dashboard.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Annotated, Literal

from fastapi import FastAPI, Header, HTTPException, Query
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from keyplane.dashboard.view import NetworkView

__all__ = ["LinkControl", "create_dashboard_app"]

LinkControl = Callable[[str, str, float], Awaitable[str]]
"""``(link_id, action, fraction) -> state``: carries out a control (raises on failure)."""

CSRF_HEADER = "X-Keyplane-Dashboard"


def create_dashboard_app(view: NetworkView, control: LinkControl | None = None, *,
                         push_interval_s: float = 0.5,
                         stopping: asyncio.Event | None = None) -> FastAPI:
    """The dashboard as an ASGI app (mount it, or serve it alone).

    Args:
        view: the model the page shows.
        control: carries out link controls (None: the page shows no controls and the
            control route answers 403).
        push_interval_s: the most often the stream sends a new snapshot.
        stopping: once set, open event streams end (so a browser tab left open never
            holds up the server's shutdown).
    """
    stop = stopping or asyncio.Event()
    app = FastAPI(title="keyplane dashboard", docs_url=None, redoc_url=None,
                  openapi_url=None)
    static = resources.files("keyplane.dashboard") / "static"
    index = (static / "index.html").read_text(encoding="utf-8")
    app.mount("/static", StaticFiles(packages=[("keyplane.dashboard", "static")]),
              name="static")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(index.replace("__CONTROLS__", "true" if control else "false"))

    @app.get("/api/state")
    async def state() -> JSONResponse:
        return JSONResponse(view.snapshot())

    @app.get("/api/stream")
    async def stream() -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            sent = -1
            while not stop.is_set():
                if view.version != sent:
                    sent = view.version
                    yield f"event: state\ndata: {json.dumps(view.snapshot())}\n\n"
                else:
                    yield ": keep-alive\n\n"
                # the push period (a rate limit), cut short when the dashboard stops
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), push_interval_s)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    @app.post("/api/links/{link_id}/{action}")
    async def link_action(link_id: str, action: Literal["cut", "restore", "eve"],
                          fraction: Annotated[float, Query(ge=0.0, le=1.0)] = 1.0,
                          marker: Annotated[str | None, Header(alias=CSRF_HEADER)] = None
                          ) -> JSONResponse:
        if control is None:
            raise HTTPException(403, "link controls are disabled on this dashboard")
        if marker != "1":
            raise HTTPException(403, f"the {CSRF_HEADER} header is required")
        if link_id not in {link.link_id for link in view.topology.links}:
            raise HTTPException(404, f"no link {link_id!r}")
        try:
            new_state = await control(link_id, action, fraction)
        except Exception as exc:
            raise HTTPException(502, f"the link did not carry out {action}: {exc}") from exc
        return JSONResponse({"link": link_id, "action": action, "state": new_state})

    return app
