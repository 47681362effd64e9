"""Synthetic FHIR transaction Bundles (tests, ``bench/fhir.py``, demos): one laboratory
visit = Patient + ServiceRequest + Specimen + 5 Observations + DiagnosticReport.

Built from ``labvault.synthetic.people`` (never a real person), written by hand as
FHIR JSON so that it exercises the door's mapping rather than reusing it.
"""

from __future__ import annotations

import random
from typing import Any

from labvault.interop.fhir import ids

# A blood count: (LOINC, UCUM unit, typical low, typical high)
BLOOD_COUNT = (("718-7", "g/dL", 12.0, 17.0), ("789-8", "10*12/L", 4.2, 5.9),
               ("6690-2", "10*9/L", 4.0, 10.0), ("777-3", "10*9/L", 150.0, 400.0),
               ("4544-3", "%", 37.0, 52.0))


def patient_resource(p: dict[str, Any]) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": ids.NIR_SYSTEM, "value": p["nir"]},
                       {"system": ids.EXTERNAL_ID_SYSTEM, "value": p["external_id"]}],
        "name": [{"use": "official", "family": p["birth_name"], "given": p["first_names"]}],
        "gender": {"F": "female", "M": "male"}.get(p["sex"], "unknown"),
        "birthDate": p["birth_date"],
        "address": [{"line": [p["address"]["line"]], "postalCode": p["address"]["postal_code"],
                     "city": p["address"]["city"], "country": p["address"].get("country", "FR")}],
        "telecom": [{"system": "phone", "value": p["phone"]},
                    {"system": "email", "value": p["email"]}],
        "extension": [{"url": ids.BIRTH_PLACE_URL, "valueAddress": {"extension": [{
            "url": ids.INSEE_CODE_URL,
            "valueCoding": {"system": ids.INSEE_COMMUNE_SYSTEM,
                            "code": p["birth_place_insee"]}}]}}],
    }
    if p.get("used_name"):
        res["name"].append({"use": "usual", "family": p["used_name"]})
    return res


def visit_bundle(p: dict[str, Any], n: int, rng: random.Random | None = None,
                 day: str = "2026-03-02") -> dict[str, Any]:
    """A transaction Bundle of 9 resources for person ``p``; ``n`` makes numbers unique."""
    rng = rng or random.Random(n)  # noqa: S311 - synthetic values, not secrets
    pat, sr, spc = (f"urn:uuid:00000000-0000-4000-8000-{n:08d}{k:04d}" for k in (1, 2, 3))
    doctor = p.get("prescriber") or {}
    requester: dict[str, Any] = {"display": doctor.get("name", "Dr Jean Martin")}
    if doctor.get("rpps"):
        requester["identifier"] = {"system": ids.RPPS_SYSTEM, "value": doctor["rpps"]}
    entries: list[dict[str, Any]] = [
        {"fullUrl": pat, "resource": patient_resource(p),
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": sr, "resource": {
            "resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "priority": "routine", "subject": {"reference": pat},
            "code": {"coding": [{"system": ids.LOINC_SYSTEM, "code": c}
                                for c, *_ in BLOOD_COUNT]},
            "identifier": [{"system": ids.PLACER_SYSTEM, "value": f"PLC-{n:010d}"}],
            "requester": requester, "authoredOn": f"{day}T07:45:00+01:00",
            "note": [{"text": "bilan annuel"}]},
         "request": {"method": "POST", "url": "ServiceRequest"}},
        {"fullUrl": spc, "resource": {
            "resourceType": "Specimen", "request": [{"reference": sr}],
            "subject": {"reference": pat},
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0487",
                                 "code": "BLD"}]},
            "accessionIdentifier": {"system": ids.ACCESSION_SYSTEM, "value": f"A{n:012d}"},
            "collection": {"collectedDateTime": f"{day}T08:10:00+01:00"}},
         "request": {"method": "POST", "url": "Specimen"}},
    ]
    obs_urls = []
    for k, (code, unit, low, high) in enumerate(BLOOD_COUNT):
        url = f"urn:uuid:00000000-0000-4000-8000-{n:08d}{10 + k:04d}"
        obs_urls.append(url)
        entries.append({"fullUrl": url, "resource": {
            "resourceType": "Observation", "status": "preliminary",
            "code": {"coding": [{"system": ids.LOINC_SYSTEM, "code": code}]},
            "subject": {"reference": pat}, "basedOn": [{"reference": sr}],
            "effectiveDateTime": f"{day}T09:30:00+01:00",
            "valueQuantity": {"value": round(rng.uniform(low, high), 1), "unit": unit,
                              "system": ids.UCUM_SYSTEM, "code": unit}},
            "request": {"method": "POST", "url": "Observation"}})
    entries.append({"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{n:08d}0099", "resource": {
        "resourceType": "DiagnosticReport", "status": "final",
        "code": {"coding": [{"system": ids.LOINC_SYSTEM, "code": "11502-2"}]},
        "subject": {"reference": pat}, "basedOn": [{"reference": sr}],
        "result": [{"reference": u} for u in obs_urls],
        "conclusion": "Numération sans particularité."},
        "request": {"method": "POST", "url": "DiagnosticReport"}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}
