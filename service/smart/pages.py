"""Server-rendered pages (Jinja2, autoescaped) and the error answers of the app: pages for people, JSON
OperationOutcomes for the API. Every page is no-store, no-referrer, with a CSP allowing only our own files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi.responses import HTMLResponse, JSONResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from service.outcome import operation_outcome
from service.webfiles import static_path

HERE = Path(__file__).parent
TEMPLATES = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                        trim_blocks=True, lstrip_blocks=True)
STATIC_DIR = HERE / "static"
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "object-src 'none'; base-uri 'none'; form-action 'self'",
}


def no_store(response: Response) -> Response:
    for k, v in SECURITY_HEADERS.items():
        response.headers.setdefault(k, v)
    return response


def render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = TEMPLATES.get_template(name).render(**context)
    return no_store(HTMLResponse(html, status_code=status))  # type: ignore[return-value]


def error_page(status: int, title: str, message: str, *, relaunch: bool = False,
               details: list[str] | None = None) -> HTMLResponse:
    """A readable page for a person; says what to do next (usually: launch again from the EHR)."""
    return render("error.html", status=status, title=title, message=message, relaunch=relaunch,
                  details=details or [])


def outcome(status: int, message: str, *, code: str = "processing",
            issues: list[dict[str, Any]] | None = None, extra: dict[str, Any] | None = None,
            headers: dict[str, str] | None = None) -> JSONResponse:
    """An API error: OperationOutcome body (one issue per problem, with `expression` paths when known)."""
    body = operation_outcome(message, status=status, code=code)
    if issues:
        body["issue"] = issues
    if extra:
        body.update(extra)
    return no_store(JSONResponse(body, status_code=status, media_type="application/fhir+json",  # type: ignore
                                 headers=headers))


def json_for_script(data: Any) -> str:
    """JSON safe inside <script type="application/json"> (no `</script>` breakout)."""
    return (json.dumps(data, separators=(",", ":"))
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def static_file(name: str) -> Response:
    path = static_path(STATIC_DIR, name, frozenset(STATIC_TYPES))
    if path is None:
        return Response(status_code=404)
    return Response(path.read_bytes(), media_type=STATIC_TYPES[path.suffix],
                    headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})
