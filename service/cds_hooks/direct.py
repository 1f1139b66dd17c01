"""The hook call's direct route: `POST /cds-services/{id}` for our own services goes straight to its endpoint.

The hook is the hot path (every oncology encounter). FastAPI's exception middleware, router match, endpoint
wrapper and dependency solving cost ~0.1 ms a call and do nothing for this endpoint, which takes no
dependencies, raises no HTTPException and answers every error itself. This layer sits inside the ops
middleware and CORS (request ids, limits, security headers, metrics, the safety nets all still apply) and
hands the call to the same `call_service`; anything else (other methods, feedback, unknown ids) goes on to
FastAPI as before. The metrics still see the route's template, not the path. The endpoint must stay as it
is for this: no dependencies, no `HTTPException` (the app's exception handlers are not on this path), every
error answered as an OperationOutcome by the endpoint itself or by the ops middleware's safety net.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from .discovery import SERVICES
from .routes import call_service

PREFIX = "/cds-services/"
TEMPLATE = PREFIX + "{service_id}"


def hook_route(routes: list[Any]) -> Any:
    """The FastAPI route of the hook call (what the metrics label the call with)."""
    return next(r for r in routes if getattr(r, "path", None) == TEMPLATE and "POST" in getattr(r, "methods", ()))


class DirectHookRoute:
    def __init__(self, app: ASGIApp, route: Any) -> None:
        self.app = app
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            root = scope.get("root_path", "")
            if root and path.startswith(root + "/"):  # as Starlette's router strips a mount prefix
                path = path[len(root):]
            if path.startswith(PREFIX) and (service_id := path[len(PREFIX):]) in SERVICES:
                scope["route"] = self.route
                scope["endpoint"] = self.route.endpoint
                scope["path_params"] = {"service_id": service_id}
                response = await call_service(service_id, Request(scope, receive))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
