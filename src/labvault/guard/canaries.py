"""Honeytoken patients: plausible French identities whose NIR can belong to nobody.

The NIR (numéro d'inscription au répertoire) is ``S YY MM DD CCC OOO KK``: sex, year
and month of birth, *department* and commune of birth, order number, control key
(97 - n mod 97). Department codes in a real NIR are 01-95, 2A/2B (Corsica), 97x/98x
(overseas), 99 (born abroad) and 91-96 for people born in Algeria, Morocco or Tunisia
before independence (INSEE, Service-Public.fr F33078). **00 has never designated a
department** and INSEE attributes no NIR with it, so a NIR whose digits 6-7 are ``00``
cannot collide with a real person's — yet it has a valid control key, a birth
year/month consistent with the record, and passes every validator labvault (and
python-stdnum) applies. We do not use the birth-month ranges 20-42 / 50-99: INSEE
does assign those to real people whose civil-status record lacks a month.

Contact values are unique and traceable: an e-mail on the reserved ``example.*``
domains (RFC 2606) carrying a random token, and a French mobile number drawn at random
(checked unused in the lab before planting).
"""

from __future__ import annotations

import random
import secrets
from datetime import date
from typing import Any

from stdnum.fr import nir as stdnum_nir

from labvault.synthetic import EMAIL_DOMAINS, PLACES, ascii_fold, people

CANARY_DEPARTMENT = "00"


def canary_nir(sex: str, birth: date, rng: random.Random) -> str:
    body = (f"{1 if sex == 'M' else 2}{birth.year % 100:02d}{birth.month:02d}"
            f"{CANARY_DEPARTMENT}{rng.randint(1, 999):03d}{rng.randint(1, 999):03d}")
    return body + stdnum_nir.calc_check_digits(body)


def is_canary_nir(nir: str) -> bool:
    """True for a NIR in the honeytoken range (department 00)."""
    compact = "".join(c for c in nir if not c.isspace())
    return len(compact) == 15 and compact[5:7] == CANARY_DEPARTMENT


def _mobile(rng: random.Random) -> str:
    """A random French mobile number that phonenumbers deems valid (allocated range)."""
    from labvault.domain import validation as v
    from labvault.errors import InvalidField
    while True:
        candidate = f"+33{rng.choice('67')}{rng.randrange(10**8):08d}"
        try:
            return v.phone(candidate)
        except InvalidField:
            continue


def canary_person(rng: random.Random | None = None) -> dict[str, Any]:
    """One honeytoken patient in the import format (same shape as ``synthetic.people``)."""
    rng = rng or random.Random(secrets.randbits(64))  # noqa: S311 - plausibility, seeded secretly
    # Pool 0 (the demo's) is built once per process; the person is drawn at a random index.
    p = next(people(1, seed=0, start=rng.randrange(10**7),
                    prefix="LIS"))
    birth = date.fromisoformat(p["birth_date"])
    p["nir"] = canary_nir(p["sex"], birth, rng)
    p["birth_place_insee"] = rng.choice(PLACES)[0]
    first = p["first_names"][0]
    local = ascii_fold(f"{first}.{p['used_name'] or p['birth_name']}").lower()
    local = local.replace(" ", "").replace("'", "")
    p["email"] = f"{local}.{rng.randrange(10**5, 10**7)}@{rng.choice(EMAIL_DOMAINS)}"
    p["phone"] = _mobile(rng)
    p["external_id"] = f"LIS-{rng.randrange(100)}-{rng.randrange(10**8):08d}"
    return {k: v for k, v in p.items() if v is not None}
