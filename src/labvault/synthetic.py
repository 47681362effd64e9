"""Synthetic French patients for the demo, tests and benchmarks. Never a real person.

Faker ``fr_FR`` gives plausible names and streets; everything that must be internally
consistent is built here: the NIR agrees with sex, birth year/month and birth place
(Faker's ``ssn()`` does not), phones are valid French mobiles, e-mails use the
reserved example domains (RFC 2606), RPPS numbers carry a valid Luhn key.

Faker is slow per call, so pools are drawn once per seed and sampled with
``random.Random`` (500k people in seconds).
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from faker import Faker
from stdnum import luhn
from stdnum.fr import nir as stdnum_nir

# (INSEE commune code, postal code, city) — public reference data, not personal.
PLACES: tuple[tuple[str, str, str], ...] = (
    ("59350", "59000", "Lille"), ("59178", "59500", "Douai"), ("59606", "59300", "Valenciennes"),
    ("59183", "59140", "Dunkerque"), ("59512", "59100", "Roubaix"), ("59599", "59200", "Tourcoing"),
    ("62041", "62000", "Arras"), ("62193", "62100", "Calais"), ("62160", "62200", "Boulogne-sur-Mer"),
    ("62498", "62300", "Lens"), ("80021", "80000", "Amiens"), ("02691", "02100", "Saint-Quentin"),
    ("60057", "60000", "Beauvais"), ("75056", "75011", "Paris"), ("69123", "69003", "Lyon"),
    ("13055", "13001", "Marseille"), ("2A004", "20000", "Ajaccio"), ("2B033", "20200", "Bastia"),
    ("33063", "33000", "Bordeaux"), ("67482", "67000", "Strasbourg"),
)
ABROAD = (("99134", "Espagne"), ("99350", "Maroc"), ("99127", "Italie"), ("99131", "Belgique"))
AMO = ("CPAM de Lille-Douai", "CPAM du Hainaut", "CPAM de l'Artois", "CPAM de la Somme",
       "MSA Nord-Pas de Calais", "CPAM de Paris", "Régime des mines")
AMC = ("Harmonie Mutuelle", "MGEN", "Malakoff Humanis", "AG2R La Mondiale", "Mutuelle Just",
       "Groupama", None)
BLOOD = (("O+", 36), ("A+", 37), ("B+", 9), ("AB+", 3), ("O-", 6), ("A-", 7), ("B-", 1),
         ("AB-", 1))
EMAIL_DOMAINS = ("example.org", "example.com", "example.net")


def ascii_fold(s: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c))


def make_nir(sex: str, birth: date, insee: str, order: int) -> str:
    """NIR consistent with sex, birth year/month and birth place (key by python-stdnum)."""
    body = f"{1 if sex == 'M' else 2}{birth.year % 100:02d}{birth.month:02d}{insee}{order:03d}"
    return body + stdnum_nir.calc_check_digits(body)


def make_rpps(rng: random.Random) -> str:
    body = "10" + "".join(rng.choice("0123456789") for _ in range(8))
    return body + luhn.calc_check_digit(body)


def make_finess(rng: random.Random, dept: str = "59") -> str:
    body = dept + "".join(rng.choice("0123456789") for _ in range(6))
    return body + luhn.calc_check_digit(body)


@dataclass
class Pools:
    last: list[str]
    first_f: list[str]
    first_m: list[str]
    streets: list[str]
    doctors: list[tuple[str, str]]


_POOLS: dict[int, Pools] = {}


def pools(seed: int = 0) -> Pools:
    if seed not in _POOLS:
        fk = Faker("fr_FR")
        fk.seed_instance(seed)
        rng = random.Random(seed)
        last = sorted({fk.last_name() for _ in range(3000)})
        _POOLS[seed] = Pools(
            last=last,
            first_f=sorted({fk.first_name_female() for _ in range(1500)}),
            first_m=sorted({fk.first_name_male() for _ in range(1500)}),
            streets=sorted({fk.street_address() for _ in range(3000)}),
            doctors=[(f"Dr {fk.first_name()} {fk.last_name()}", make_rpps(rng)) for _ in range(300)],
        )
    return _POOLS[seed]


def people(n: int, seed: int = 0, start: int = 0, prefix: str = "LIS") -> Iterator[dict[str, Any]]:
    """``n`` import-format patients (docs/formats.md). Deterministic for a seed; person
    ``start + i`` is unique by its external id, e-mail and phone; the NIRs of one call
    are unique too (a laboratory refuses a second patient with a NIR it has: registration
    and import), those of separate calls (another ``start``) collide about once in 2,000
    people past the first 999 (3-digit birth order numbers)."""
    p = pools(seed)
    rng = random.Random(seed * 1_000_003 + start)
    today = date(2026, 1, 1)
    weights = [w for _, w in BLOOD]
    taken: set[str] = set()
    for i in range(start, start + n):
        sex = "F" if rng.random() < 0.52 else "M"
        birth = today - timedelta(days=rng.randint(0, 95 * 365))
        first = rng.choice(p.first_f if sex == "F" else p.first_m)
        second = rng.choice(p.first_f if sex == "F" else p.first_m) if rng.random() < 0.4 else None
        last = rng.choice(p.last)
        used = rng.choice(p.last) if sex == "F" and rng.random() < 0.3 else None
        if rng.random() < 0.05:
            insee, _country = rng.choice(ABROAD)
        else:
            insee = rng.choice(PLACES)[0]
        home = rng.choice(PLACES[:13])
        # Order number from the person's index: unique NIR per person within 1000 per place/month.
        nir = make_nir(sex, birth, insee, (i % 999) + 1)
        bump = 0
        while nir[:13] in taken and bump < 998:     # another person of this call has it
            bump += 1
            nir = make_nir(sex, birth, insee, (i + bump) % 999 + 1)
        taken.add(nir[:13])
        local = ascii_fold(f"{first}.{used or last}").lower().replace(" ", "").replace("'", "")
        doctor = rng.choice(p.doctors)
        amc = rng.choice(AMC)
        yield {
            "external_id": f"{prefix}-{seed}-{i:08d}",
            "birth_name": last,
            "used_name": used,
            "first_names": [first] + ([second] if second and second != first else []),
            "birth_date": birth.isoformat(),
            "sex": sex,
            "birth_place_insee": insee,
            "nir": nir,
            "address": {"line": rng.choice(p.streets), "postal_code": home[1], "city": home[2],
                        "country": "FR"},
            "phone": f"+336{i % 100_000_000:08d}" if rng.random() < 0.5
                     else f"06 {(i // 1_000_000) % 100:02d} {(i // 10_000) % 100:02d} "
                          f"{(i // 100) % 100:02d} {i % 100:02d}",
            "email": f"{local}.{i}@{rng.choice(EMAIL_DOMAINS)}",
            "coverage": {"amo": rng.choice(AMO), "amc": amc,
                         "member_id": f"{rng.randint(10**9, 10**10 - 1)}"},
            "blood_group": rng.choices([b for b, _ in BLOOD], weights)[0],
            "prescriber": {"name": doctor[0], "rpps": doctor[1]},
        }


def strip_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}
