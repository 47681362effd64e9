"""Security headers and request size limit, as a plain ASGI middleware (cheap per request).

- CSP ``default-src 'none'`` on the API (``/docs`` may load the Swagger UI assets),
  ``frame-ancestors 'none'``, ``X-Content-Type-Options: nosniff``, ``Referrer-Policy``;
- HSTS only when the request came over TLS;
- ``Cache-Control: no-store`` on every API response (patient data is never cached);
- bodies larger than ``max_body`` are refused with 413 before reaching a router.
No CORS middleware is installed: cross-origin browser calls are refused by default.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_CSP = b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
DOCS_CSP = (b"default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            b"style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; img-src 'self' data: "
            b"https://fastapi.tiangolo.com; frame-ancestors 'none'")
# Web pages (labvault.web): one same-origin stylesheet, forms posting to this origin, no script.
WEB_CSP = (b"default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
           b"frame-ancestors 'none'; base-uri 'none'")
# The enrolment page alone runs one same-origin script (static/enrol.js: the link's token
# is in the URL fragment, which only a script can read).
ENROL_CSP = (b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
             b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
WEB_PREFIXES = ("/login", "/logout", "/enrol", "/mfa", "/portail", "/console", "/static/")
COMMON = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]
HSTS = (b"strict-transport-security", b"max-age=63072000; includeSubDomains")


class _TooLarge(HTTPException):
    """Raised from ``receive``: FastAPI re-raises HTTP exceptions as they are (-> 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body too large (at most {limit} bytes)")


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, max_body: int = 1_048_576) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        tls = scope.get("scheme") == "https"
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_body
                except ValueError:
                    too_big = True
                if too_big:
                    await self._refuse(send, tls, path)
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _TooLarge(self.max_body)
            return message

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k != b"cache-control" or not path.startswith("/api/")]
                headers.extend(COMMON)
                csp = (DOCS_CSP if path in ("/docs", "/redoc") else
                       ENROL_CSP if path == "/enrol" else
                       WEB_CSP if path == "/" or path.startswith(WEB_PREFIXES) else API_CSP)
                headers.append((b"content-security-policy", csp))
                if path.startswith("/api/"):
                    headers.append((b"cache-control", b"no-store"))
                    headers.append((b"pragma", b"no-cache"))
                if tls:
                    headers.append(HSTS)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except _TooLarge:
            if not started:
                await self._refuse(send, tls, path)

    async def _refuse(self, send: Send, tls: bool, path: str) -> None:
        detail = (f"send at most {self.max_body} bytes (LABVAULT_MAX_REQUEST_BYTES)")
        body: dict[str, Any]
        if path.startswith("/fhir/"):   # a FHIR client reads every error as an OperationOutcome
            ctype = b"application/fhir+json"
            body = {"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "too-costly", "diagnostics": detail}]}
        else:
            ctype = b"application/problem+json"
            body = {"type": "/problems/too-large", "title": "request body too large",
                    "status": 413, "code": "too-large", "detail": detail}
        raw = json.dumps(body).encode()
        headers = [(b"content-type", ctype),
                   (b"content-length", str(len(raw)).encode()),
                   (b"cache-control", b"no-store"), *COMMON,
                   (b"content-security-policy", API_CSP)]
        if tls:
            headers.append(HSTS)
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": raw})
