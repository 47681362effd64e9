"""FHIR R4 at ``/fhir/R4`` (docs/fhir.md): CapabilityStatement, read, search, create,
update, transaction Bundles. Same bearer authentication as the REST API
(``CurrentActor``); every answer is ``application/fhir+json``; every error an
OperationOutcome with a 4xx status, never a stack trace.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from labvault.api.deps import CurrentActor, blocking
from labvault.errors import UserError
from labvault.interop.fhir.outcome import FhirError, from_user_error, operation_outcome
from labvault.interop.fhir.server import FhirServer, dumps
from labvault.interop.fhir.validate import modifier_extension
from labvault.interop.fhir.versions import etag

FHIR_JSON = "application/fhir+json"
log = logging.getLogger("labvault.fhir")


def fhir_response(body: Mapping[str, Any], status: int = 200,
                  headers: Mapping[str, str] | None = None) -> Response:
    return Response(dumps(body), status_code=status, media_type=FHIR_JSON,
                    headers=dict(headers or {}))


def versioned_response(resource: Mapping[str, Any], status: int = 200,
                       headers: Mapping[str, str] | None = None) -> Response:
    """A resource with its ``ETag`` (``W/"<meta.versionId>"``, http.html#versioning): what
    an update sends back in ``If-Match``."""
    tag = etag(resource)
    return fhir_response(resource, status, {**(headers or {}), **({"ETag": tag} if tag else {})})


def outcome_response(status: int, oo: Mapping[str, Any]) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="labvault"'} if status == 401 else None
    return fhir_response(oo, status, headers)


class FhirRoute(APIRoute):
    """Turns every error raised by a FHIR route (its dependencies included: a missing
    token is a 401) into an OperationOutcome."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                negotiate(request)
                return await original(request)
            except UserError as exc:
                status, oo = from_user_error(exc)
                if status == 405:    # RFC 9110 §15.5.6: a 405 names what is allowed
                    allow = ", ".join(allowed_methods(request))
                    return fhir_response(oo, 405, {"Allow": allow} if allow else None)
                return outcome_response(status, oo)
            except RecursionError:
                # validation and mapping recurse per level of the body: a few KB of nesting
                # is the client's doing, a 400 (and one log line, not a traceback each)
                log.warning("FHIR request nested too deeply: %s %s", request.method,
                            request.url.path)
                return outcome_response(400, operation_outcome(
                    "too-costly", "the body nests too deeply (no FHIR resource needs that)"))
            except RequestValidationError:
                return outcome_response(400, operation_outcome("invalid", "malformed request"))
            except HTTPException as exc:
                return outcome_response(exc.status_code, operation_outcome(
                    "processing", str(exc.detail)))
            except Exception:
                log.exception("FHIR request failed")
                return outcome_response(500, operation_outcome(
                    "exception", "internal error; the incident is logged"))

        return handler


router = APIRouter(prefix="/fhir/R4", tags=["fhir"], route_class=FhirRoute)

# What this door serves (JSON only): `_format` values and Accept media ranges that take it.
JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json"})
JSON_ACCEPTS = JSON_FORMATS | {"*/*", "application/*"}


def negotiate(request: Request) -> None:
    """http.html#mime-type: ``_format`` overrides ``Accept``; a format this server does not
    produce (XML, Turtle...) is a 406, on every interaction, not a JSON answer instead."""
    formats = request.query_params.getlist("_format")
    if formats:
        fmt = formats[-1].split(";", 1)[0].strip().lower()
        if fmt not in JSON_FORMATS:
            raise FhirError(406, "not-supported", f"_format={formats[-1]!r}: only JSON is "
                            "served (_format=json or application/fhir+json)", ["_format"])
        return
    accept = request.headers.get("accept")
    if accept and not any(r.split(";", 1)[0].strip().lower() in JSON_ACCEPTS
                          for r in accept.split(",")):
        raise FhirError(406, "not-supported", f"Accept: {accept!r}: only {FHIR_JSON} is served")


def server(request: Request) -> FhirServer:
    srv: FhirServer | None = getattr(request.app.state, "fhir", None)
    if srv is None:
        srv = request.app.state.fhir = FhirServer(request.app.state.lv)
    return srv


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/fhir/R4"


async def read_json(request: Request) -> object:
    """The request's JSON body. Its size is capped before any route runs
    (``LABVAULT_MAX_REQUEST_BYTES``, api/security.py: a 413 OperationOutcome here)."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype not in (FHIR_JSON, "application/json"):
        raise FhirError(415, "not-supported", f"send {FHIR_JSON} (got {ctype or 'nothing'})")
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise FhirError(400, "structure", "the body is not valid JSON") from None
    if b'"modifierExtension"' in raw and isinstance(body, dict):
        # extensibility.html#modifierExtension: a resource carrying a modifier extension
        # the system does not know must not be processed (labvault knows none). Looked
        # for in the raw bytes first: the walk costs ~20 µs a resource, paid only here.
        found = modifier_extension(body)
        if found is not None:
            raise FhirError(422, "not-supported", "modifier extensions are not understood "
                            "here: the resource would be stored with a different meaning",
                            [f"{body.get('resourceType') or 'resource'}{found}"])
    return body


@router.get("/metadata")
@router.head("/metadata", include_in_schema=False)   # HEAD: GET without the body
async def metadata(request: Request, actor: CurrentActor) -> Response:
    return fhir_response(server(request).capability(base_url(request)))


@router.post("")
@router.post("/", include_in_schema=False)
async def transaction(request: Request, actor: CurrentActor) -> Response:
    body = await read_json(request)
    srv = server(request)
    result = await blocking(srv.lv, srv.transaction, actor, body, base_url(request))
    return fhir_response(result)


@router.get("/{rtype}")
@router.head("/{rtype}", include_in_schema=False)   # HEAD: GET without the body
async def search(rtype: str, request: Request, actor: CurrentActor) -> Response:
    srv = server(request)
    items = list(request.query_params.multi_items())
    return fhir_response(await blocking(srv.lv, srv.search, actor, rtype, items,
                                                 base_url(request)))


@router.post("/{rtype}/_search")
async def search_post(rtype: str, request: Request, actor: CurrentActor) -> Response:
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype not in ("", "application/x-www-form-urlencoded"):
        # search.html#Introduction: the parameters of a POST search are a form
        raise FhirError(415, "not-supported", "a POST search takes its parameters as "
                        f"application/x-www-form-urlencoded (got {ctype})")
    srv = server(request)
    form = await request.form()
    items = [*request.query_params.multi_items(),
             *((k, v) for k, v in form.multi_items() if isinstance(v, str))]
    return fhir_response(await blocking(srv.lv, srv.search, actor, rtype, items,
                                                 base_url(request)))


@router.get("/{rtype}/{fhir_id}")
@router.head("/{rtype}/{fhir_id}", include_in_schema=False)   # HEAD: GET without the body
async def read(rtype: str, fhir_id: str, request: Request, actor: CurrentActor) -> Response:
    srv = server(request)
    resource, changed = await blocking(srv.lv, srv.read_if_changed, actor, rtype, fhir_id,
                                                request.headers.get("if-none-match"))
    if not changed:
        # If-None-Match names the current version: 304, no body, the same ETag
        # (RFC 9110 §15.4.5); the read was made and audited all the same
        tag = etag(resource)
        return Response(status_code=304, headers={"ETag": tag} if tag else None)
    return versioned_response(resource)


@router.post("/{rtype}")
async def create(rtype: str, request: Request, actor: CurrentActor) -> Response:
    body = await read_json(request)
    srv = server(request)
    conditions = {name: request.headers[name.lower()] for name in ("If-None-Exist",
                                                                  "If-None-Match")
                  if name.lower() in request.headers}
    query = [(k, v) for k, v in request.query_params.multi_items() if k != "_format"]
    if query:
        # ``POST Patient?identifier=…``: the condition in the URL, as fhirpy's
        # ``create(**search)`` / ``get_or_create`` send it -- read as If-None-Exist, never
        # dropped (the client asked for no duplicate)
        if "If-None-Exist" in conditions:
            raise FhirError(400, "not-supported", "a create takes one condition: send it as "
                            "If-None-Exist or in the URL, not both", ["If-None-Exist"])
        conditions["If-None-Exist"] = urlencode(query)
    new_id, resource, created = await blocking(srv.lv, srv.create, actor, rtype, body,
                                               conditions)
    # no vread (readHistory false in the CapabilityStatement): no _history URL that would 404
    location = f"{base_url(request)}/{rtype}/{new_id}"
    # http.html#ccreate: a condition that names one resource creates nothing, 200 with it
    return versioned_response(resource, 201 if created else 200, {"Location": location})


@router.put("/{rtype}/{fhir_id}")
async def update(rtype: str, fhir_id: str, request: Request, actor: CurrentActor) -> Response:
    if "if-unmodified-since" in request.headers:
        # a write's precondition by time: dropped, the update would go through whatever
        # changed; the version is the exact form of it (If-Match)
        raise FhirError(400, "not-supported", "If-Unmodified-Since is not supported: send "
                        'If-Match: W/"<versionId>" (the ETag of your read)',
                        ["If-Unmodified-Since"])
    body = await read_json(request)
    srv = server(request)
    return versioned_response(await blocking(
        srv.lv, srv.update, actor, rtype, fhir_id, body, request.headers.get("if-match"),
        request.headers.get("if-none-match")))


@router.api_route("/{rest:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE",
                                            "OPTIONS"], include_in_schema=False)
async def unsupported(rest: str, request: Request, actor: CurrentActor) -> Response:
    if request.method in ("PATCH", "DELETE", "OPTIONS") and allowed_methods(request):
        raise FhirError(405, "not-supported", f"{request.method} is not offered here "
                        "(see /fhir/R4/metadata)")
    raise FhirError(404, "not-found", f"no FHIR endpoint at {rest!r} (see /fhir/R4/metadata)")


def allowed_methods(request: Request) -> list[str]:
    """The methods this door answers at the request's path, from the handlers' own
    interactions (empty: no FHIR endpoint there)."""
    rest = request.url.path.removeprefix(router.prefix).strip("/")
    parts = rest.split("/") if rest else []
    if not parts:
        return ["POST"]                                # transaction Bundles
    if parts == ["metadata"]:
        return ["GET", "HEAD"]
    h = server(request).handlers.get(parts[0])
    if h is None or len(parts) > 2:
        return []
    offered = getattr(h, "interactions", ("read", "search-type", "create", "update"))
    if len(parts) == 1:
        return [*(["GET", "HEAD"] if "search-type" in offered else []),
                *(["POST"] if "create" in offered else [])]
    if parts[1] == "_search":
        return ["POST"]
    return [*(["GET", "HEAD"] if "read" in offered else []),
            *(["PUT"] if "update" in offered else [])]
