"""Identity vigilance: does a description of a person sent by another system name the
patient a laboratory already holds?

An identifier (NIR, INS, the laboratory's external id) finding a registered patient is
not enough to attach an order to that record: a NIR typed for the wrong person, or a
prescriber's software that mixed two patients up, would put one person's results under
another's identity -- the worst error a laboratory can make (INS rules: an identity is
the identifier *and* its traits). So the traits sent are compared with the record's:
birth name, first given name, birth date, sex, folded as the blind indexes fold names
(case, accents, spaces and punctuation do not count; ``Le Bœuf-d'Arç`` is
``LEBOEUFDARC``), and the identifiers both sides carry. Any difference: the caller
checks the identity; nothing is attached.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

from labvault.crypto import blind_index as bi
from labvault.domain.patient import PatientRecord

# The traits compared, in the order they are reported (the import shape's words, the
# first given name standing for ``first_names[0]``).
TRAITS = ("birth_name", "first_name", "birth_date", "sex")
IDENTIFIERS = ("nir", "ins", "external_id")
# Their words in an error a door answers (the values are never said)
TRAIT_WORDS = {"birth_name": "birth name", "first_name": "first name",
               "birth_date": "birth date", "sex": "sex", "nir": "NIR", "ins": "INS",
               "external_id": "external id"}


def _day(value: object) -> str | None:
    if isinstance(value, date):
        return value.isoformat()
    return str(value)[:10] if value else None


def _first(names: object) -> str | None:
    if isinstance(names, (list, tuple)) and names:
        return str(names[0])
    return None


def unreadable_traits(stored: Mapping[str, Any]) -> list[str]:
    """The traits missing from ``stored`` (a view the reader's access narrowed): an
    identity that cannot be compared is not taken as the same one."""
    values = {"birth_name": stored.get("birth_name"), "first_name": _first(stored.get("first_names")),
              "birth_date": stored.get("birth_date"), "sex": stored.get("sex")}
    return [t for t in TRAITS if not values[t]]


def differing(stored: Mapping[str, Any], sent: PatientRecord) -> list[str]:
    """The traits and identifiers of ``sent`` that differ from the record ``stored`` (as
    ``PatientService.show`` gives it), in ``TRAITS`` then ``IDENTIFIERS`` order. An
    external id sent that is one of the record's former ids (a duplicate merged into it)
    agrees with it. An identifier only one side carries is not a difference (a prescriber may not know the
    laboratory's external id; a record may have been registered before its NIR was
    known): the traits decide then."""
    out = differing_traits(stored, {"birth_name": sent.birth_name,
                                    "first_name": sent.first_names[0],
                                    "birth_date": sent.birth_date, "sex": sent.sex})
    for name in IDENTIFIERS:
        mine, theirs = stored.get(name), getattr(sent, name)
        if mine and theirs and _identifier(name, str(mine)) != _identifier(name, theirs):
            # a merged duplicate's external id (a former id of the record) is the record's
            if name == "external_id" and _identifier(name, theirs) in {
                    _identifier(name, str(f)) for f in stored.get("former_ids") or ()}:
                continue
            out.append(name)
    return out


def differing_traits(stored: Mapping[str, Any], sent: Mapping[str, object]) -> list[str]:
    """The traits ``sent`` holds (``TRAITS``' words: ``first_name`` is the first given
    name) that differ from the record ``stored``, in ``TRAITS`` order; a trait ``sent``
    does not hold is not compared (an HL7 result message sends no name worth comparing).
    Names are folded as the blind indexes fold them; a birth date sent as a year, or a
    year and month (``1980``, ``1980-05``), is compared to that precision. A trait the
    record does not show (absent, or narrowed away by the reader's access) differs: an
    identity that cannot be compared is not taken as the same one."""
    out = []
    for trait in TRAITS:
        if trait not in sent:
            continue
        theirs = sent[trait]
        if trait in ("birth_name", "first_name"):
            mine = stored.get("birth_name") if trait == "birth_name" else _first(
                stored.get("first_names"))
            same = mine is not None and bi.fold_name(str(mine)) == bi.fold_name(str(theirs))
        elif trait == "birth_date":
            day, sent_day = _day(stored.get("birth_date")), _day(theirs)
            same = day is not None and sent_day is not None and day.startswith(sent_day)
        else:
            same = stored.get(trait) == theirs
        if not same:
            out.append(trait)
    return out


def _identifier(name: str, value: str) -> str:
    return value.strip() if name == "external_id" else bi.normalise_nir(value)
