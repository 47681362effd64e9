"""What each column of a leaked file holds, decided by its content (headers only help).

Each detector returns the share of a column's non-empty sample values it recognises;
a header that names the meaning (French or English) adds a bonus, a meaningless header
adds nothing. The best-scoring meaning wins if its confidence is at least
``MIN_CONFIDENCE``; otherwise the column is ``unknown``.

Meanings and the data category they expose (DESIGN §4):

identity: nir, last_name, first_name, birth_date, sex · contact: email, phone, address,
postcode, city · coverage: insurer, member_id · clinical: blood_group, clinical_note,
prescriber, rpps · account: password, password_hash, login · ``sealed``: ciphertext
(labvault envelopes or other high-entropy blobs) — present but unintelligible.
"""

from __future__ import annotations

import base64
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from functools import lru_cache

from stdnum.fr import nir as stdnum_nir

from labvault.crypto.blind_index import fold_name

MIN_CONFIDENCE = 0.5
SAMPLE_ROWS = 2000

CATEGORY_OF: dict[str, str] = {
    "nir": "identity", "last_name": "identity", "first_name": "identity",
    "birth_date": "identity", "sex": "identity",
    "email": "contact", "phone": "contact", "address": "contact", "postcode": "contact",
    "city": "contact",
    "insurer": "coverage", "member_id": "coverage",
    "blood_group": "clinical", "clinical_note": "clinical", "prescriber": "clinical",
    "rpps": "clinical",
    "password": "account", "password_hash": "account", "login": "account",
}
SENSITIVE = frozenset({"clinical_note"})   # free-text health notes (HIV, cancer...) - Art. 9

HEADER_WORDS: dict[str, tuple[str, ...]] = {
    "nir": ("nir", "secu", "sécu", "ssn", "social", "insee", "numss", "num_ss", "ins"),
    "last_name": ("nom", "last", "surname", "family", "birth_name", "naissance_nom", "lname"),
    "first_name": ("prenom", "prénom", "first", "given", "fname", "firstname"),
    "birth_date": ("naiss", "birth", "dob", "ddn", "born", "date_n"),
    "sex": ("sexe", "sex", "gender", "genre"),
    "email": ("mail", "courriel"),
    "phone": ("tel", "tél", "phone", "mobile", "portable", "gsm"),
    "address": ("adresse", "address", "rue", "street", "voie", "addr"),
    "postcode": ("cp", "postal", "zip", "code_postal", "postcode"),
    "city": ("ville", "city", "commune", "town"),
    "insurer": ("mutuelle", "caisse", "insurer", "amo", "amc", "assur", "regime", "régime"),
    "member_id": ("adherent", "adhérent", "member", "contrat"),
    "blood_group": ("groupe", "blood", "sanguin", "abo", "rhesus"),
    "clinical_note": ("note", "comment", "observ", "diag", "clinique", "clinical", "remarque",
                      "antecedent", "antécédent", "traitement"),
    "prescriber": ("prescri", "medecin", "médecin", "doctor", "docteur"),
    "rpps": ("rpps",),
    "password": ("password", "passwd", "mdp", "mot_de_passe", "motdepasse", "pwd", "pass"),
    "password_hash": ("hash", "password", "mdp", "pwd"),
    "login": ("login", "username", "identifiant", "user"),
}

_EMAIL = re.compile(r"^[^@\s,;]{1,64}@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
_PHONE_FR = re.compile(r"^(?:\+33\s?|0033\s?|\(0\)|0)[1-9](?:[\s.\-]?\d{2}){4}$")
_POSTCODE = re.compile(r"^(?:0[1-9]|[1-8]\d|9[0-8]|2[AB])\d{3}$")
_BLOOD = re.compile(r"^(?:A|B|AB|O|0)\s*(?:[+-]|RH?\s*[+-]|POS|NEG)$", re.I)
_STREET = re.compile(r"\b(rue|avenue|av\.?|bd|boulevard|chemin|place|all[ée]e|impasse|route|"
                     r"quai|cours|r[ée]sidence|lotissement|square|chauss[ée]e|faubourg|"
                     r"street|road)\b", re.I)
_HASH = re.compile(r"^(?:\$(?:2[abxy]?|argon2(?:id|i|d)|pbkdf2[-\w]*|scrypt|[156])\$\S+|"
                   r"[0-9a-fA-F]{32}|[0-9a-fA-F]{40}|[0-9a-fA-F]{64}|[0-9a-fA-F]{128}|"
                   r"\{(?:SSHA|SHA|MD5)\}\S+)$")
_B64 = re.compile(r"^[A-Za-z0-9+/_-]{24,}={0,2}$")
_INSURER = re.compile(r"\b(cpam|msa|mgen|mutuelle|harmonie|malakoff|ag2r|groupama|axa|"
                      r"allianz|swiss ?life|mutualit[ée]|r[ée]gime|cnmss|mnh|macif|maif|"
                      r"pro ?btp|humanis|apicil|cmu|css|ame|mines|ssi|rsi)\b", re.I)
_CLINICAL = re.compile(r"\b(vih|hiv|s[ée]ropositi|cancer|tumeur|carcinome|lymphome|leuc[ée]mie|"
                       r"m[ée]tasta|chimio|grossesse|enceinte|sa\b|diab[èe]t|h[ée]patite|"
                       r"traitement|trait[ée]|mucoviscidose|dr[ée]panocytose|g[ée]n[ée]tique|"
                       r"trisomie|insuline|antir[ée]troviral|anticoagul|ivg|syphilis|"
                       r"chlamydia|d[ée]pression|psychiatr|sclérose|alzheimer|bilan|suivi|"
                       r"ant[ée]c[ée]dent|allergie|dialyse|greffe|biopsie)", re.I)
_DR = re.compile(r"^(?:dr|docteur|pr)\.?\s", re.I)
_DATE_FORMATS = (
    (re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})(?:[T ].*)?$"), "ymd"),
    (re.compile(r"^(\d{1,2})[/.\-](\d{1,2})[/.\-](\d{4})$"), "dmy"),
    (re.compile(r"^(\d{4})/(\d{1,2})/(\d{1,2})$"), "ymd"),
    (re.compile(r"^(\d{4})(\d{2})(\d{2})$"), "ymd"),
    (re.compile(r"^(\d{1,2})[/.\-](\d{1,2})[/.\-](\d{2})$"), "dmy2"),
)
TODAY = date.today()


@dataclass(frozen=True, slots=True)
class Column:
    index: int
    header: str | None
    detected: str
    confidence: float

    @property
    def category(self) -> str | None:
        return CATEGORY_OF.get(self.detected)

    def as_json(self) -> dict[str, object]:
        return {"index": self.index, "header": self.header, "detected": self.detected,
                "confidence": round(self.confidence, 3)}


# -- value parsers (shared with matching) -------------------------------------------------------
def parse_date(value: str) -> date | None:
    v = value.strip()
    for rx, order in _DATE_FORMATS:
        m = rx.match(v)
        if not m:
            continue
        a, b, c = (int(x) for x in m.groups())
        if order == "ymd":
            y, mo, d = a, b, c
        elif order == "dmy":
            d, mo, y = a, b, c
        else:
            d, mo, y = a, b, c + (1900 if c > TODAY.year % 100 else 2000)
        try:
            out = date(y, mo, d)
        except ValueError:
            return None
        if out.year >= 1880 and out <= TODAY:
            return out
        return None
    return None


# A NIR as python-stdnum accepts it once cleaned: 15 ASCII digits, or 2A/2B (Corsica)
# in the department's place.
_NIR_SHAPE = re.compile(r"[0-9]{5}(?:[0-9]{2}|2A|2B)[0-9]{8}")
# Without its key (old systems keep the 13 digits and the key apart): sex 1 or 2 (not the
# rarer 3, 4, 7, 8: drug codes CIP13 start with 3400, other EAN-13 with 3-9), birth month
# 01-12, 20-42 or 50-99 (INSEE), a department — what a random 13-digit number rarely is,
# so a column of other ids is not taken for NIRs.
_NIR13_SHAPE = re.compile(r"[12][0-9]{2}(?:0[1-9]|1[0-2]|[2-3][0-9]|4[0-2]|[5-9][0-9])"
                          r"(?:[0-9]{2}|2A|2B)[0-9]{6}")
_NIR_SEPARATORS = re.compile(r"[\s.\-]")


def normalise_nir(value: str) -> str | None:
    """A NIR in any usual writing -> its 15 characters (key checked), else None. A NIR
    written without its key is completed with it (the key is computed, not secret): a
    leak of 13-digit NIRs exposes NIRs and matches like any other."""
    v = _NIR_SEPARATORS.sub("", value).upper()
    if len(v) == 13 and _NIR13_SHAPE.fullmatch(v):
        v += stdnum_nir.calc_check_digits(v)
        return v if stdnum_nir.is_valid(v) else None
    if len(v) != 15 or not _NIR_SHAPE.fullmatch(v):
        return None
    # python-stdnum's own key computation on a value already in its compact form
    # (``is_valid`` would clean it again, ~4x the cost on a 500,000-row file);
    # a test checks this agrees with ``is_valid`` on valid, mistyped and odd input.
    return v if stdnum_nir.calc_check_digits(v) == v[13:] else None


def normalise_phone(value: str) -> str | None:
    """French numbers in any usual writing -> E.164 (+33XXXXXXXXX), else None."""
    v = re.sub(r"[\s.\-()/]", "", value)
    if v.startswith("+33"):
        rest = v[3:]
    elif v.startswith("0033"):
        rest = v[4:]
    elif v.startswith("33") and len(v) == 11:
        rest = v[2:]
    elif v.startswith("0") and len(v) == 10:
        rest = v[1:]
    elif len(v) == 9 and v[0] in "67":
        rest = v
    else:
        return None
    if rest.startswith("0"):
        rest = rest[1:]
    if len(rest) != 9 or not rest.isdigit() or rest[0] == "0":
        return None
    return "+33" + rest


def normalise_email(value: str) -> str | None:
    v = value.strip()
    if not _EMAIL.match(v):
        return None
    import unicodedata
    return unicodedata.normalize("NFKC", v).lower()


@lru_cache(maxsize=1)
def name_lists() -> tuple[frozenset[str], frozenset[str]]:
    """(first names, last names) folded, from Faker's fr_FR pools (synthetic data's source)
    plus the synthetic pools; see docs/breach.md for production lists (INSEE)."""
    from faker.providers.person.fr_FR import Provider

    firsts = {fold_name(n) for n in (*Provider.first_names_male, *Provider.first_names_female)}
    lasts = {fold_name(n) for n in Provider.last_names}
    from labvault.synthetic import pools
    p = pools(0)
    firsts |= {fold_name(n) for n in (*p.first_f, *p.first_m)}
    lasts |= {fold_name(n) for n in p.last}
    both = firsts & lasts
    return frozenset(firsts - both), frozenset(lasts - both)


# -- detectors ----------------------------------------------------------------------------------
def _is_sealed(v: str) -> bool:
    if v.startswith("lv1:") or (v.startswith("\\x") and len(v) > 40):
        return True
    if len(v) < 24 or not _B64.match(v) or _HASH.match(v):
        return False
    try:
        raw = base64.b64decode(v + "=" * (-len(v) % 4), altchars=b"-_" if "-" in v or "_" in v
                               else None)
    except ValueError:
        return False
    return len(raw) >= 16 and _entropy(raw) > 3.5


def _entropy(b: bytes) -> float:
    c = Counter(b)
    n = len(b)
    return -sum(k / n * math.log2(k / n) for k in c.values())


def _first_word(v: str) -> str:
    return fold_name(re.split(r"[\s,/]+", v.strip())[0]) if v.strip() else ""


Detector = Callable[[str], bool]


def _detectors() -> dict[str, Detector]:
    firsts, lasts = name_lists()
    return {
        "nir": lambda v: normalise_nir(v) is not None,
        "email": lambda v: bool(_EMAIL.match(v.strip())),
        "phone": lambda v: (normalise_phone(v) is not None and not v.strip().isdigit())
        or bool(_PHONE_FR.match(v.strip())),
        "birth_date": lambda v: parse_date(v) is not None,
        "postcode": lambda v: bool(_POSTCODE.match(v.strip())),
        "address": lambda v: bool(_STREET.search(v)) and bool(re.search(r"\d", v)),
        "blood_group": lambda v: bool(_BLOOD.match(v.strip())),
        "insurer": lambda v: bool(_INSURER.search(v)),
        "password_hash": lambda v: bool(_HASH.match(v.strip())),
        "sealed": _is_sealed,
        "clinical_note": lambda v: len(v) >= 12 and " " in v.strip() and bool(_CLINICAL.search(v)),
        "prescriber": lambda v: bool(_DR.match(v.strip())),
        "rpps": lambda v: bool(re.fullmatch(r"10\d{9}", v.strip())),
        "sex": lambda v: v.strip().upper() in ("M", "F", "H", "1", "2", "HOMME", "FEMME",
                                               "MASCULIN", "FEMININ", "FÉMININ", "MALE", "FEMALE"),
        "first_name": lambda v: _first_word(v) in firsts,
        "last_name": lambda v: fold_name(v) in lasts,
    }


def _header_bonus(meaning: str, header: str | None) -> float:
    if not header:
        return 0.0
    h = header.strip().lower().replace(" ", "_").replace("-", "_")
    words = HEADER_WORDS.get(meaning, ())
    if meaning == "last_name" and re.fullmatch(r"(nom|name|last_?name|surname|nom_?naissance|"
                                               r"nom_?de_?naissance|nom_?usage)", h):
        return 0.25
    if meaning == "first_name" and ("prenom" in h or "prénom" in h):
        return 0.25
    if meaning == "last_name" and ("prenom" in h or "prénom" in h or "first" in h):
        return -0.3
    return 0.2 if any(w in h for w in words) else 0.0


def detect(header: Sequence[str] | None, sample: Sequence[Sequence[str]]) -> list[Column]:
    """One ``Column`` per column of the sample (the widest row decides how many)."""
    width = max([len(r) for r in sample] + [len(header) if header else 0])
    det = _detectors()
    out: list[Column] = []
    for i in range(width):
        values = [r[i].strip() for r in sample if i < len(r) and r[i].strip()]
        h = header[i] if header and i < len(header) else None
        if not values:
            out.append(Column(i, h, "empty", 1.0))
            continue
        distinct = len(set(values))
        scores: dict[str, float] = {}
        for meaning, fn in det.items():
            hits = sum(1 for v in values if fn(v))
            share = hits / len(values)
            if share == 0 and not (meaning in ("password", "login") and h):
                continue
            scores[meaning] = min(1.0, share + (_header_bonus(meaning, h) if share > 0.2 else 0))
        hl = (h or "").lower()
        # Clear passwords have no shape: the header says it, content confirms no hash shape.
        if h and any(w in hl for w in HEADER_WORDS["password"]) \
                and scores.get("password_hash", 0) < 0.5 and scores.get("sealed", 0) < 0.5:
            scores["password"] = 0.9 if distinct > 1 else 0.6
        if h and any(w == hl or hl.startswith(w) for w in HEADER_WORDS["login"]) \
                and "email" not in scores:
            scores["login"] = 0.7
        # A birth date column among other dates: prefer plausible birth dates by header
        if "birth_date" in scores and h and any(w in hl for w in ("creat", "maj", "modif",
                                                                   "updat", "prelev",
                                                                   "prélèv", "date_r")):
            scores["birth_date"] -= 0.4
        # Postcodes are 5 digits: so are many ids; require few distinct-per-row values
        if "postcode" in scores and distinct > max(200, len(values) * 0.5) \
                and _header_bonus("postcode", h) == 0:
            scores["postcode"] *= 0.5
        if "sex" in scores and distinct > 6:
            scores["sex"] = 0
        if not scores:
            out.append(Column(i, h, "unknown", 0.0))
            continue
        best = max(scores, key=lambda k: (scores[k], -_PRIORITY.get(k, 99)))
        conf = scores[best]
        out.append(Column(i, h, best if conf >= MIN_CONFIDENCE else "unknown", conf))
    _resolve_names(out, sample, det)
    return out


_PRIORITY = {"nir": 0, "email": 1, "phone": 2, "birth_date": 3, "password_hash": 4,
             "sealed": 5, "blood_group": 6, "postcode": 7, "rpps": 8}


def _resolve_names(cols: list[Column], sample: Sequence[Sequence[str]],
                   det: dict[str, Detector]) -> None:
    """If two columns both look like last (or first) names, the one with the most
    first-name hits is the first name, and vice versa."""
    names = [c for c in cols if c.detected in ("first_name", "last_name")]
    if len(names) < 2:
        return
    def share(c: Column, meaning: str) -> float:
        vals = [r[c.index] for r in sample if c.index < len(r) and r[c.index].strip()]
        return sum(1 for v in vals if det[meaning](v)) / max(1, len(vals))
    firsts = sorted(names, key=lambda c: share(c, "first_name") - share(c, "last_name"))
    first_col, last_col = firsts[-1], firsts[0]
    for c in names:
        idx = cols.index(c)
        if c is first_col and c.detected != "first_name":
            cols[idx] = Column(c.index, c.header, "first_name", c.confidence)
        elif c is last_col and c.detected != "last_name":
            cols[idx] = Column(c.index, c.header, "last_name", c.confidence)
