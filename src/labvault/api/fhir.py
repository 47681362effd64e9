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

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from labvault.api.deps import CurrentActor
from labvault.errors import UserError
from labvault.interop.fhir.outcome import FhirError, from_user_error, operation_outcome
from labvault.interop.fhir.server import FhirServer, dumps

FHIR_JSON = "application/fhir+json"
MAX_BODY = 16 * 1024 * 1024
log = logging.getLogger("labvault.fhir")


def fhir_response(body: Mapping[str, Any], status: int = 200,
                  headers: Mapping[str, str] | None = None) -> Response:
    return Response(dumps(body), status_code=status, media_type=FHIR_JSON,
                    headers=dict(headers or {}))


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
                return await original(request)
            except UserError as exc:
                return outcome_response(*from_user_error(exc))
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


def server(request: Request) -> FhirServer:
    srv: FhirServer | None = getattr(request.app.state, "fhir", None)
    if srv is None:
        srv = request.app.state.fhir = FhirServer(request.app.state.lv)
    return srv


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/fhir/R4"


async def read_json(request: Request) -> object:
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype not in (FHIR_JSON, "application/json"):
        raise FhirError(415, "not-supported", f"send {FHIR_JSON} (got {ctype or 'nothing'})")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY:
        raise FhirError(413, "too-costly", f"the body is larger than {MAX_BODY} bytes")
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise FhirError(413, "too-costly", f"the body is larger than {MAX_BODY} bytes")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise FhirError(400, "structure", "the body is not valid JSON") from None


@router.get("/metadata")
async def metadata(request: Request, actor: CurrentActor) -> Response:
    return fhir_response(server(request).capability(base_url(request)))


@router.post("")
@router.post("/", include_in_schema=False)
async def transaction(request: Request, actor: CurrentActor) -> Response:
    body = await read_json(request)
    srv = server(request)
    result = await run_in_threadpool(srv.transaction, actor, body, base_url(request))
    return fhir_response(result)


@router.get("/{rtype}")
async def search(rtype: str, request: Request, actor: CurrentActor) -> Response:
    srv = server(request)
    items = list(request.query_params.multi_items())
    return fhir_response(await run_in_threadpool(srv.search, actor, rtype, items,
                                                 base_url(request)))


@router.post("/{rtype}/_search")
async def search_post(rtype: str, request: Request, actor: CurrentActor) -> Response:
    srv = server(request)
    form = await request.form()
    items = [*request.query_params.multi_items(),
             *((k, v) for k, v in form.multi_items() if isinstance(v, str))]
    return fhir_response(await run_in_threadpool(srv.search, actor, rtype, items,
                                                 base_url(request)))


@router.get("/{rtype}/{fhir_id}")
async def read(rtype: str, fhir_id: str, request: Request, actor: CurrentActor) -> Response:
    srv = server(request)
    return fhir_response(await run_in_threadpool(srv.read, actor, rtype, fhir_id))


@router.post("/{rtype}")
async def create(rtype: str, request: Request, actor: CurrentActor) -> Response:
    body = await read_json(request)
    srv = server(request)
    new_id, resource = await run_in_threadpool(srv.create, actor, rtype, body)
    location = f"{base_url(request)}/{rtype}/{new_id}/_history/1"
    return fhir_response(resource, 201, {"Location": location})


@router.put("/{rtype}/{fhir_id}")
async def update(rtype: str, fhir_id: str, request: Request, actor: CurrentActor) -> Response:
    body = await read_json(request)
    srv = server(request)
    return fhir_response(await run_in_threadpool(srv.update, actor, rtype, fhir_id, body))


@router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                  include_in_schema=False)
async def unsupported(rest: str, request: Request, actor: CurrentActor) -> Response:
    if request.method in ("PATCH", "DELETE"):
        raise FhirError(405, "not-supported", f"{request.method} is not offered "
                        "(see /fhir/R4/metadata)")
    raise FhirError(404, "not-found", f"no FHIR endpoint at {rest!r} (see /fhir/R4/metadata)")
