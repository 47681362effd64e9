"""labvault records <-> FHIR R4 resources (plain dicts; docs/fhir.md has the tables).

Outgoing resources are built as plain dicts from the typed records (fast; every shape
is validated against ``fhir.resources.R4B`` in the tests). Incoming resources have
already been validated against the R4B model at the door (``validate.py``); the
functions here turn them into the core's input shapes and say precisely which
element is not supported (``FhirError`` 422 with a FHIRPath expression).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from labvault.interop.fhir import ids
from labvault.interop.fhir.outcome import FhirError
from labvault.interop.fhir.versions import versioned

GENDER_TO_FHIR = {"F": "female", "M": "male", "U": "unknown"}
GENDER_FROM_FHIR = {"female": "F", "male": "M", "unknown": "U", "other": "U"}
COUNTRY_ALIASES = {"FRA": "FR", "FRANCE": "FR"}


def invalid(expression: str, diagnostics: str, status: int = 422) -> FhirError:
    return FhirError(status, "invalid", diagnostics, [expression])


def not_supported(expression: str, diagnostics: str) -> FhirError:
    return FhirError(422, "not-supported", diagnostics, [expression])


def reference_id(ref: object, rtype: str, prefix: str, expression: str) -> str:
    """The labvault id behind ``{"reference": "Patient/pt-..."}`` (urn:uuid references
    are rewritten before mapping by the transaction processor)."""
    if not isinstance(ref, Mapping) or not isinstance(ref.get("reference"), str):
        raise invalid(expression, f"must be a reference to a {rtype}")
    raw = ref["reference"]
    parts = raw.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == rtype:
        found = ids.from_fhir(parts[-1], prefix)
        if found:
            return found
    if len(parts) >= 4 and parts[-2] == "_history" and parts[-4] == rtype:
        found = ids.from_fhir(parts[-3], prefix)
        if found:
            return found
    raise invalid(expression, f"{raw!r} is not a reference to a {rtype} of this server")


def instant(value: object) -> str | None:
    """A stored timestamp as a FHIR instant (SQLite hands back naive UTC datetimes)."""
    if value is None:
        return None
    d = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if d.tzinfo is None:
        d = d.replace(tzinfo=UTC)
    return d.isoformat()


def _codings(cc: object) -> list[Mapping[str, Any]]:
    if not isinstance(cc, Mapping):
        return []
    return [c for c in cc.get("coding") or [] if isinstance(c, Mapping)]


# -- Patient ------------------------------------------------------------------------------
def patient_markers(p: Mapping[str, Any]) -> tuple[object, ...]:
    """What a Patient's (and its Coverages') version covers: the record's last change
    (``show`` or ``change_markers``)."""
    return (p.get("updated_at") or p.get("created_at"),)


def patient_to_fhir(p: Mapping[str, Any]) -> dict[str, Any]:
    """A patient as ``PatientService.show`` returns it -> FHIR Patient."""
    res: dict[str, Any] = {"resourceType": "Patient", "id": ids.to_fhir(p["id"])}
    if p.get("created_at"):
        res["meta"] = {"lastUpdated": instant(p.get("updated_at") or p["created_at"])}
    ident: list[dict[str, Any]] = []
    if p.get("nir"):
        ident.append({"use": "official", "system": ids.NIR_SYSTEM, "value": p["nir"]})
    if p.get("ins") and p.get("ins") != p.get("nir"):
        ident.append({"use": "official", "system": ids.INS_NIA_SYSTEM, "value": p["ins"]})
    if p.get("external_id"):
        ident.append({"use": "secondary", "system": ids.EXTERNAL_ID_SYSTEM,
                      "value": p["external_id"]})
    # the external ids of duplicates merged into this record (docs/fhir.md, "Identifiers")
    ident.extend({"use": "old", "system": ids.EXTERNAL_ID_SYSTEM, "value": former}
                 for former in p.get("former_ids") or ())
    if ident:
        res["identifier"] = ident
    if p.get("birth_place_insee"):
        res["extension"] = [{"url": ids.BIRTH_PLACE_URL, "valueAddress": {"extension": [
            {"url": ids.INSEE_CODE_URL, "valueCoding": {
                "system": ids.INSEE_COMMUNE_SYSTEM, "code": p["birth_place_insee"]}}]}}]
    names: list[dict[str, Any]] = []
    if p.get("birth_name"):
        names.append({"use": "official", "family": p["birth_name"],
                      "given": list(p.get("first_names") or [])})
    if p.get("used_name"):
        names.append({"use": "usual", "family": p["used_name"],
                      "given": list(p.get("first_names") or [])[:1]})
    if names:
        res["name"] = names
    telecom: list[dict[str, Any]] = []
    if p.get("phone"):
        telecom.append({"system": "phone", "value": p["phone"]})
    if p.get("email"):
        telecom.append({"system": "email", "value": p["email"]})
    if telecom:
        res["telecom"] = telecom
    if p.get("sex"):
        res["gender"] = GENDER_TO_FHIR.get(p["sex"], "unknown")
    if p.get("birth_date"):
        res["birthDate"] = p["birth_date"]
    addr = p.get("address")
    if addr:
        res["address"] = [{"use": "home", "line": [addr["line"]], "postalCode": addr["postal_code"],
                           "city": addr["city"], "country": addr.get("country") or "FR"}]
    return versioned(res, *patient_markers(p))


def official_name(r: Mapping[str, Any]) -> int | None:
    """Where, in ``Patient.name``, the birth name and first names are: the ``official``
    name, else the first without a use (or ``maiden``)."""
    names = list(r.get("name") or [])
    for uses in (("official",), (None, "maiden")):
        for i, n in enumerate(names):
            if n.get("use") in uses:
                return i
    return None


def patient_from_fhir(r: Mapping[str, Any]) -> dict[str, Any]:
    """FHIR Patient -> identity and contact fields of the import shape (docs/formats.md)."""
    out: dict[str, Any] = {}
    for i, ident in enumerate(r.get("identifier") or []):
        system, value = ident.get("system"), ident.get("value")
        where = f"Patient.identifier[{i}]"
        if not value:
            raise invalid(where, "identifier without a value")
        if system == ids.NIR_SYSTEM:
            out["nir"] = value
        elif system == ids.INS_NIA_SYSTEM:
            out["ins"] = value
        elif system == ids.EXTERNAL_ID_SYSTEM and ident.get("use") == "old":
            # a former id, as a read shows it: kept by merges only (a write may repeat them)
            out.setdefault("former_ids", []).append(value)
        elif system == ids.EXTERNAL_ID_SYSTEM:
            out["external_id"] = value
        else:
            raise not_supported(where + ".system",
                                f"identifier system {system!r} is not stored; use "
                                f"{ids.NIR_SYSTEM} (NIR), {ids.INS_NIA_SYSTEM} (INS-NIA) or "
                                f"{ids.EXTERNAL_ID_SYSTEM}")
    # Modifier elements change the meaning of the rest (R4 conformance-rules): labvault
    # keeps neither an inactive nor a deceased flag, so it refuses them rather than
    # storing a record that reads as active and alive.
    if r.get("active") is False:
        raise not_supported("Patient.active", "inactive patient records are not kept here; "
                            "send the patient without active = false")
    for key in ("deceasedBoolean", "deceasedDateTime"):
        if r.get(key) not in (None, False):
            raise not_supported(f"Patient.{key}", "a date or flag of death is not stored "
                                "here; send the patient without it")
    names = list(r.get("name") or [])
    at = official_name(r)
    if at is None:
        raise invalid("Patient.name", "an official name (birth name and first names) is required")
    official = names[at]
    out["birth_name"] = official.get("family")
    out["first_names"] = list(official.get("given") or [])
    usual = next((n for n in names if n.get("use") == "usual"), None)
    if usual is not None and usual.get("family"):
        out["used_name"] = usual["family"]
    gender = r.get("gender")
    if gender is not None:
        if gender not in GENDER_FROM_FHIR:
            raise invalid("Patient.gender", "must be male, female, other or unknown")
        out["sex"] = GENDER_FROM_FHIR[gender]
    else:
        out["sex"] = "U"
    out["birth_date"] = r.get("birthDate")
    for i, t in enumerate(r.get("telecom") or []):
        if t.get("system") == "phone" and "phone" not in out:
            out["phone"] = t.get("value")
        elif t.get("system") == "email" and "email" not in out:
            out["email"] = t.get("value")
        elif t.get("system") not in ("phone", "email"):
            raise not_supported(f"Patient.telecom[{i}].system", "only phone and email are stored")
    addresses = list(r.get("address") or [])
    if len(addresses) > 1:
        raise not_supported("Patient.address", "one address is stored")
    if addresses:
        a = addresses[0]
        country = (a.get("country") or "FR").upper()
        out["address"] = {"line": ", ".join(a.get("line") or []) or a.get("text"),
                          "postal_code": a.get("postalCode"), "city": a.get("city"),
                          "country": COUNTRY_ALIASES.get(country, country)}
    for i, ext in enumerate(r.get("extension") or []):
        if ext.get("url") != ids.BIRTH_PLACE_URL:
            raise not_supported(f"Patient.extension[{i}]", f"extension {ext.get('url')!r} is "
                                "not stored")
        insee = None
        for sub in (ext.get("valueAddress") or {}).get("extension") or []:
            if sub.get("url") == ids.INSEE_CODE_URL:
                insee = (sub.get("valueCoding") or {}).get("code")
        if not insee:
            raise invalid(f"Patient.extension[{i}].valueAddress",
                          "birth place needs its INSEE code extension "
                          f"({ids.INSEE_CODE_URL})")
        out["birth_place_insee"] = insee
    return out


IDENTITY_CONTACT = ("external_id", "birth_name", "used_name", "first_names", "birth_date", "sex",
                    "birth_place_insee", "nir", "ins", "address", "phone", "email")


# -- Practitioner -------------------------------------------------------------------------
def practitioner_markers(p: Mapping[str, Any]) -> tuple[object, ...]:
    """What a Practitioner's version covers: the directory entry's last change."""
    return (p.get("updated_at"),)


def practitioner_to_fhir(p: Mapping[str, Any]) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "Practitioner", "id": ids.to_fhir(p["id"])}
    if p.get("updated_at"):
        res["meta"] = {"lastUpdated": instant(p["updated_at"])}
    if p.get("rpps"):
        res["identifier"] = [{"system": ids.RPPS_SYSTEM, "value": p["rpps"]}]
    name: dict[str, Any] = {"text": p["name"]}
    if p.get("family"):
        name["family"] = p["family"]
    if p.get("given"):
        name["given"] = list(p["given"])
    res["name"] = [name]
    telecom = []
    if p.get("phone"):
        telecom.append({"system": "phone", "value": p["phone"]})
    if p.get("email"):
        telecom.append({"system": "email", "value": p["email"]})
    if telecom:
        res["telecom"] = telecom
    return versioned(res, *practitioner_markers(p))


def practitioner_from_fhir(r: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, ident in enumerate(r.get("identifier") or []):
        if ident.get("system") != ids.RPPS_SYSTEM:
            raise not_supported(f"Practitioner.identifier[{i}].system",
                                f"only the RPPS ({ids.RPPS_SYSTEM}) is stored")
        out["rpps"] = ident.get("value")
    names = list(r.get("name") or [])
    if not names:
        raise invalid("Practitioner.name", "a name is required")
    n = names[0]
    if n.get("family"):
        out["family"] = n["family"]
    if n.get("given"):
        out["given"] = list(n["given"])
    if n.get("text"):
        out["name"] = n["text"]
    elif n.get("prefix") or n.get("suffix"):
        # titles have no field of their own: kept in the display name, not dropped
        out["name"] = " ".join([*(n.get("prefix") or []), *(n.get("given") or []),
                                *([n["family"]] if n.get("family") else []),
                                *(n.get("suffix") or [])])
    if len(names) > 1:
        raise not_supported("Practitioner.name[1]", "one name is stored")
    for i, t in enumerate(r.get("telecom") or []):
        if t.get("system") == "phone":
            out["phone"] = t.get("value")
        elif t.get("system") == "email":
            out["email"] = t.get("value")
        else:
            raise not_supported(f"Practitioner.telecom[{i}].system",
                                "only phone and email are stored")
    return out


def requester(prescriber: Mapping[str, Any] | None,
              practitioner_id: str | None = None) -> dict[str, Any] | None:
    """A prescriber inside an order -> a logical reference (RPPS identifier)."""
    if not prescriber:
        return None
    ref: dict[str, Any] = {"type": "Practitioner", "display": prescriber["name"]}
    if practitioner_id:
        ref["reference"] = f"Practitioner/{ids.to_fhir(practitioner_id)}"
    if prescriber.get("rpps"):
        ref["identifier"] = {"system": ids.RPPS_SYSTEM, "value": prescriber["rpps"]}
    return ref


# -- Coverage (AMO / AMC) -----------------------------------------------------------------
COVERAGE_KINDS = {
    # kind -> (v3-ActCode code, display, text)
    "amo": ("PUBLICPOL", "public healthcare", "AMO"),   # assurance maladie obligatoire
    "amc": ("HIP", "health insurance plan policy", "AMC"),  # complémentaire santé
}
_KIND_BY_CODE = {c: k for k, (c, _, _) in COVERAGE_KINDS.items()}
_KIND_BY_TEXT = {t: k for k, (_, _, t) in COVERAGE_KINDS.items()}


def coverage_id(patient_id: str, kind: str) -> str:
    return f"{ids.to_fhir(patient_id)}-{kind}"


def coverage_from_id(fhir_id: str) -> tuple[str, str] | None:
    """``pt-...-amo`` -> (patient id, "amo")."""
    base, _, kind = fhir_id.rpartition("-")
    pid = ids.from_fhir(base, "pt")
    if pid is None or kind not in COVERAGE_KINDS:
        return None
    return pid, kind


def coverage_markers(updated_at: object) -> tuple[object, ...]:
    """What a Coverage's version covers: the patient record's last change (any category)."""
    return (updated_at,)


def coverages_to_fhir(patient_id: str, cov: Mapping[str, Any] | None,
                      updated_at: object = None) -> list[dict[str, Any]]:
    """The patient's coverage category -> 0, 1 or 2 Coverage resources; ``updated_at``:
    the patient record's last change (the version of its coverages)."""
    if not cov:
        return []
    out = []
    member_on = "amo" if cov.get("amo") else "amc"
    for kind, (code, display, text) in COVERAGE_KINDS.items():
        if not cov.get(kind):
            continue
        res: dict[str, Any] = {
            "resourceType": "Coverage", "id": coverage_id(patient_id, kind), "status": "active",
            "type": {"coding": [{"system": ids.ACT_CODE_SYSTEM, "code": code,
                                 "display": display}], "text": text},
            "beneficiary": {"reference": f"Patient/{ids.to_fhir(patient_id)}"},
            "payor": [{"display": cov[kind]}]}
        if cov.get("member_id") and kind == member_on:
            res["subscriberId"] = cov["member_id"]
        out.append(versioned(res, *coverage_markers(updated_at)))
    return out


def coverage_from_fhir(r: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """FHIR Coverage -> (patient id, "amo"|"amc", {"insurer", "member_id"})."""
    if r.get("status") != "active":
        raise not_supported("Coverage.status", "only active coverages are stored")
    kind = None
    t = r.get("type")
    for c in _codings(t):
        if c.get("system") == ids.ACT_CODE_SYSTEM and c.get("code") in _KIND_BY_CODE:
            kind = _KIND_BY_CODE[c["code"]]
    if kind is None and isinstance(t, Mapping):
        kind = _KIND_BY_TEXT.get(str(t.get("text") or "").upper())
    if kind is None:
        raise invalid("Coverage.type", f"must be {ids.ACT_CODE_SYSTEM}|PUBLICPOL (AMO) or "
                      "|HIP (AMC)")
    pid = reference_id(r.get("beneficiary"), "Patient", "pt", "Coverage.beneficiary")
    payors = list(r.get("payor") or [])
    insurer = payors[0].get("display") if payors else None
    if not insurer:
        raise invalid("Coverage.payor[0].display", "the insurer's name is required")
    return pid, kind, {"insurer": insurer, "member_id": r.get("subscriberId")}
