"""Errors as RFC 9457 problem details (``application/problem+json``).

A ``UserError`` says what was wrong and what to do (status from ``http_status``);
anything else is a bug: a bare 500 with no detail, logged server-side only. Nothing
sent back echoes a submitted value (passwords, tokens, identifiers).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from labvault.api.instants import rule_of
from labvault.errors import InvalidRecord, UserError

PROBLEM = "application/problem+json"
log = logging.getLogger("labvault.api")


def problem(status: int, code: str, title: str, detail: str = "",
            headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"type": f"/problems/{code}", "title": title, "status": status,
                            "code": code}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM,
                        headers={"Cache-Control": "no-store", **(headers or {})})


async def _user_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, UserError)
    extra: dict[str, Any] = {}
    if isinstance(exc, InvalidRecord):
        extra["errors"] = [{"field": e.field, "rule": e.rule} for e in exc.errors]
    details = getattr(exc, "details", None)      # typed errors' own facts (never input)
    if callable(details):
        extra.update(details())
    headers = {}
    retry = getattr(exc, "retry_after", None)
    if retry:
        headers["Retry-After"] = str(retry)
    if exc.http_status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return problem(exc.http_status, exc.code, exc.message, exc.hint, headers, **extra)


def field_path(loc: Sequence[int | str]) -> str:
    """A schema error's location in the services' style: ``results[1].observed_at``
    (pydantic says ``("body", "results", 1, "observed_at")``), so that a client reads one
    style of field name whichever check refused the request."""
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"field": field_path(e.get("loc", ())),
               "rule": rule_of(e) or str(e.get("msg", "invalid"))} for e in exc.errors()[:20]]
    return problem(422, "invalid-request", "the request does not match the API schema",
                   "see the OpenAPI document at /openapi.json", errors=errors)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not-found", 405: "method-not-allowed", 401: "unauthorized",
             403: "forbidden", 413: "too-large"}
    return problem(exc.status_code, codes.get(exc.status_code, "http-error"),
                   str(exc.detail) if exc.status_code != 404 else "not found",
                   headers=dict(exc.headers or {}))


async def _bug(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(500, "internal", "internal error",
                   "the error was logged; try again or contact the administrator")


def install(app: FastAPI) -> None:
    app.add_exception_handler(UserError, _user_error)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _bug)
