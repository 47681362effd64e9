"""Identifiers: systems (URIs/OIDs) and labvault ids <-> FHIR logical ids.

labvault ids are ``<prefix>_<26 base32 chars>``; FHIR ids allow ``[A-Za-z0-9.-]`` only,
so the FHIR id is the same string with ``-`` for ``_`` (reversible: the base32
alphabet has no ``-``).
"""

from __future__ import annotations

import re

# Identifier systems (docs/fhir.md).
NIR_SYSTEM = "urn:oid:1.2.250.1.213.1.4.8"      # NIR / INS-NIR: social security number
INS_NIA_SYSTEM = "urn:oid:1.2.250.1.213.1.4.9"  # INS-NIA: provisional number (INS != NIR)
RPPS_SYSTEM = "urn:oid:1.2.250.1.71.4.2.1"      # RPPS: registry of health professionals
EXTERNAL_ID_SYSTEM = "urn:labvault:external-id"  # the laboratory's own (legacy) patient id
ACCESSION_SYSTEM = "urn:labvault:accession-number"
PLACER_SYSTEM = "urn:labvault:placer-order-number"
FILLER_SYSTEM = "urn:labvault:filler-order-number"
LOINC_SYSTEM = "http://loinc.org"
UCUM_SYSTEM = "http://unitsofmeasure.org"
BIRTH_PLACE_URL = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"
INSEE_CODE_URL = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-address-insee-code"
INSEE_COMMUNE_SYSTEM = "urn:oid:1.2.250.1.213.2.12"   # TRE_R13 CommuneOM (INSEE codes)
ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_LV_FHIR_ID = re.compile(r"([a-z]{1,8})-([0-9a-hjkmnp-tv-z]{26})")


def to_fhir(internal_id: str) -> str:
    return internal_id.replace("_", "-")


def from_fhir(fhir_id: str, prefix: str) -> str | None:
    """The labvault id for a FHIR id with this prefix, or None if it cannot be one."""
    m = _LV_FHIR_ID.fullmatch(fhir_id)
    if not m or m.group(1) != prefix:
        return None
    return f"{m.group(1)}_{m.group(2)}"


def is_fhir_id(value: str) -> bool:
    return bool(_FHIR_ID.fullmatch(value))
