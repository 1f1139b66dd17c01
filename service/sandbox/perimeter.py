"""The sandbox's perimeter: Host check, Content-Security-Policy, and which paths get no CORS at all.

Why: the sandbox binds loopback, but a web page elsewhere can still reach it through the browser:
- DNS rebinding: a hostile name resolving to 127.0.0.1 makes the browser treat the sandbox as that site's own
  origin; requests whose Host is not a loopback name or the public URL's host are refused (421);
- cross-origin reads: the authorization pages, the EHR screen and the inbox answer no CORS (only the FHIR API,
  the token endpoint and discovery documents do, as browser SMART apps need);
- injected script: every sandbox HTML page carries a Content-Security-Policy that allows only its own files.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
CORS_KEPT = ("/sandbox/fhir", "/sandbox/auth/token", "/sandbox/auth/jwks", "/sandbox/auth/.well-known",
             "/sandbox/.well-known")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; frame-src 'self'; frame-ancestors 'self'; object-src 'none'; base-uri 'none'")


def cors_exempt(path: str) -> bool:
    """True for sandbox paths that must answer no CORS (pages and the authorization endpoints)."""
    return path.startswith("/sandbox/") and not path.startswith(CORS_KEPT)


def _hostname(value: str) -> str:
    try:
        return (urlsplit(f"http://{value}").hostname or "").lower()
    except ValueError:
        return ""


class SandboxPerimeter:
    """Pure ASGI: refuse unexpected Host headers; add the CSP to sandbox HTML pages."""

    def __init__(self, app: ASGIApp, public_url: str) -> None:
        self.app = app
        self.allowed = LOOPBACK_NAMES | {(urlsplit(public_url).hostname or "").lower()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
        if _hostname(host) not in self.allowed:
            body = (b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"security",'
                    b'"diagnostics":"unexpected Host header: the sandbox answers only to its own address"}]}')
            await send({"type": "http.response.start", "status": 421,
                        "headers": [(b"content-type", b"application/fhir+json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        if not scope.get("path", "").startswith("/sandbox/"):
            await self.app(scope, receive, send)
            return

        async def with_csp(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or ())
                if any(k.lower() == b"content-type" and v.startswith(b"text/html") for k, v in headers):
                    headers.append((b"content-security-policy", CSP.encode()))
                    message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_csp)
