"""Resource versions: ``meta.versionId``, the ``ETag`` and ``If-Match`` (R4 http.html#versioning,
#concurrency).

The core keeps no version counter per record: results count their corrections
(``revision``), and every row has the time of its last change (``updated_at``), which
every door's writes move (console, HL7, CLI and FHIR alike, through the same services).
A resource's version is a digest of those **change markers** of the rows it is built
from -- ids, statuses, times and revisions, clear columns only: never a sealed value, so
that an ETag in a proxy's log tells nothing a stolen database would not. No counter is
added that only this door would move.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from labvault.interop.fhir.outcome import FhirError

# an entity-tag (RFC 9110 §8.8.3), weak or strong: W/"…" or "…"
_ETAG = re.compile(r'\s*(?:W/)?"([^"]*)"\s*')


def _marker(value: object) -> object:
    """A change marker as the same text whichever store gave it back (SQLite hands back
    naive UTC datetimes, PostgreSQL aware ones)."""
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat()
    if isinstance(value, (list, tuple)):
        return [_marker(v) for v in value]
    return value


def version_id(*markers: object) -> str:
    """The version of a resource built from rows with these change markers: 16 hex digits
    (64 bits; FHIR ``id`` allows 64 characters)."""
    raw = json.dumps([_marker(m) for m in markers], separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def versioned(resource: dict[str, Any], *markers: object) -> dict[str, Any]:
    """``resource`` with its ``meta.versionId`` (its type and id are markers too)."""
    meta = resource.setdefault("meta", {})
    meta["versionId"] = version_id(resource["resourceType"], resource["id"], *markers)
    return resource


def etag(resource: Mapping[str, Any]) -> str | None:
    """The ``ETag`` header of a versioned resource: ``W/"<versionId>"`` (http.html#versioning)."""
    version = (resource.get("meta") or {}).get("versionId")
    return f'W/"{version}"' if version else None


def accepted(value: str, where: list[str] | None = None,
             header: str = "If-Match") -> frozenset[str] | None:
    """The versions an ``If-Match`` value (or a transaction entry's ``request.ifMatch``, or
    an ``If-None-Match``: ``header``) names: ``W/"<versionId>"`` (or ``"<versionId>"``),
    several separated by commas; None for ``*`` (any current version). Anything else is a
    400: read as "no condition", a typo would silently drop the protection the client
    asked for (or, for If-None-Match, make every read a full one)."""
    if value.strip() == "*":
        return None
    versions = []
    for part in value.split(","):
        mt = _ETAG.fullmatch(part)
        if mt is None or not mt.group(1):
            raise FhirError(400, "invalid", f"{header} {value!r} is not an entity tag: send "
                            'W/"<versionId>" (the ETag of the read, or its meta.versionId '
                            'in W/"…")', where)
        versions.append(mt.group(1))
    return frozenset(versions)


def is_current(named: frozenset[str] | None, resource: Mapping[str, Any]) -> bool:
    """Whether ``resource`` is at one of the ``named`` versions (None: ``*``, any)."""
    version = (resource.get("meta") or {}).get("versionId")
    return named is None or version in named


def check(wanted: frozenset[str] | None, now: Mapping[str, Any],
          where: list[str] | None = None) -> None:
    """412 when the resource is no longer at a version the client accepts (it changed
    since the client read it): nothing is written, the client reads it again."""
    if is_current(wanted, now):
        return
    assert wanted is not None                   # (``*`` accepts any version)
    version = (now.get("meta") or {}).get("versionId")
    rtype, rid = now.get("resourceType"), now.get("id")
    raise FhirError(412, "conflict", f"{rtype}/{rid} has changed since it was read (If-Match "
                    f"{', '.join(sorted(wanted))}, now {version}): nothing was "
                    "changed; read it again, check the changes, and send the update with "
                    "the new ETag", where)


def check_none_match(excluded: frozenset[str] | None, now: Mapping[str, Any],
                     where: list[str] | None = None) -> None:
    """``If-None-Match`` on an update (RFC 9110 §13.1.2): 412 when the resource is at one of
    the ``excluded`` versions -- with ``*``, whenever it exists (every update's target
    does: an update never creates here, so ``If-None-Match: *`` never lets one through)."""
    if not is_current(excluded, now):
        return
    rtype, rid = now.get("resourceType"), now.get("id")
    said = "*" if excluded is None else ", ".join(sorted(excluded))
    raise FhirError(412, "conflict", f"{rtype}/{rid} exists at a version the update excludes "
                    f"(If-None-Match {said}): nothing was changed. An update here never "
                    "creates (the server assigns ids: POST the resource instead)", where)
