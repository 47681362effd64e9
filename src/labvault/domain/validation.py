"""Field validation with the fields' own libraries. Each check raises ``InvalidField``
naming the field and the rule, and returns the normalised value to store."""

from __future__ import annotations

import re
from datetime import date

import email_validator
import phonenumbers
from stdnum import luhn
from stdnum.exceptions import ValidationError
from stdnum.fr import nir as stdnum_nir

from labvault.errors import InvalidField

SEXES = ("F", "M", "U")
BLOOD_GROUPS = ("A+", "A-", "B+", "B-", "AB+", "AB-", "O+", "O-")


def nir(value: object, field: str = "nir", sex: str | None = None,
        birth_date: date | None = None) -> str:
    """NIR (numéro d'inscription au répertoire, French social security number).

    15 characters incl. the 2-digit key (97 - n mod 97; Corsica 2A/2B handled by
    python-stdnum). When sex or birth date are known, the NIR must agree with them
    (digit 1 = sex 1/2, digits 2-5 = year and month of birth) — the commonest data
    entry error in legacy files.
    """
    if not isinstance(value, str) or not value.strip():
        raise InvalidField(field, "must be a 15-character NIR", "e.g. 1 84 12 76 451 089 46")
    compact = re.sub(r"[\s.\-]", "", value).upper()
    try:
        compact = stdnum_nir.validate(compact)
    except ValidationError as exc:
        rule = ("control key does not match" if "checksum" in type(exc).__name__.lower()
                or "check" in str(exc).lower() else f"not a valid NIR ({exc})")
        raise InvalidField(field, rule, "check the 15 characters against the carte Vitale") \
            from None
    if sex in ("F", "M") and compact[0] in "12" and compact[0] != ("1" if sex == "M" else "2"):
        raise InvalidField(field, f"first digit {compact[0]} does not match sex {sex}",
                           "1 is male, 2 is female; check the NIR and the sex")
    if birth_date is not None:
        month = int(compact[3:5])
        if compact[1:3] != f"{birth_date.year % 100:02d}" or (
                1 <= month <= 12 and month != birth_date.month):
            raise InvalidField(field, "year/month of birth in the NIR do not match birth_date",
                               "check the NIR and the birth date")
    return compact


def ins(value: object, field: str = "ins") -> str:
    """INS (identifiant national de santé): the NIR or NIA, same 15-character format."""
    return nir(value, field)


def phone(value: object, field: str = "phone") -> str:
    """Any French or international format -> E.164 (+33612345678)."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidField(field, "must be a phone number", "e.g. 06 12 34 56 78 or +33612345678")
    try:
        parsed = phonenumbers.parse(value, "FR")
    except phonenumbers.NumberParseException:
        raise InvalidField(field, "is not a phone number",
                           "e.g. 06 12 34 56 78 or +33612345678") from None
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidField(field, "is not a valid phone number for its country",
                           "check the number of digits and the prefix")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def email(value: object, field: str = "email") -> str:
    """Syntax only (no DNS: labvault must work offline); returns the normalised address."""
    if not isinstance(value, str):
        raise InvalidField(field, "must be an e-mail address", "e.g. jeanne.martin@example.fr")
    try:
        info = email_validator.validate_email(value.strip(), check_deliverability=False)
    except email_validator.EmailNotValidError as exc:
        raise InvalidField(field, f"is not a valid e-mail address ({exc})",
                           "e.g. jeanne.martin@example.fr") from None
    return str(info.normalized).lower()


def finess(value: object, field: str = "finess") -> str:
    """FINESS (fichier national des établissements sanitaires et sociaux): 9 characters,
    2-character department (2A/2B for Corsica) then digits, Luhn check digit."""
    if not isinstance(value, str) or not re.fullmatch(r"\d{9}|2[AB]\d{7}", value.strip().upper()):
        raise InvalidField(field, "must be 9 characters (digits, or 2A/2B then 7 digits)",
                           "copy it from the laboratory's FINESS record")
    v = value.strip().upper()
    digits = v.replace("2A", "20", 1).replace("2B", "20", 1) if v[:2] in ("2A", "2B") else v
    if not luhn.is_valid(digits):
        raise InvalidField(field, "check digit (Luhn) does not match",
                           "check the 9 characters of the FINESS number")
    return v


def rpps(value: object, field: str = "prescriber.rpps") -> str:
    """RPPS (répertoire partagé des professionnels de santé): 11 digits, Luhn key."""
    if not isinstance(value, str) or not re.fullmatch(r"\d{11}", value.strip()):
        raise InvalidField(field, "must be 11 digits", "copy it from the prescription")
    if not luhn.is_valid(value.strip()):
        raise InvalidField(field, "check digit (Luhn) does not match", "check the 11 digits")
    return value.strip()


def insee_commune(value: object, field: str = "birth_place_insee") -> str:
    """INSEE code of the birth commune: 2-digit department (2A/2B, 97x overseas) +
    3 digits; 99xxx for people born abroad (country code)."""
    if not isinstance(value, str) or not re.fullmatch(r"(\d{2}|2[AB])\d{3}", value.strip().upper()):
        raise InvalidField(field, "must be a 5-character INSEE commune code",
                           "e.g. 75056 (Paris), 2A004 (Ajaccio), 99134 (born in Spain)")
    return value.strip().upper()


def birth_date(value: object, field: str = "birth_date") -> date:
    if isinstance(value, date):
        d = value
    elif isinstance(value, str):
        try:
            d = date.fromisoformat(value.strip())
        except ValueError:
            raise InvalidField(field, "must be a date YYYY-MM-DD", "e.g. 1984-12-31") from None
    else:
        raise InvalidField(field, "must be a date YYYY-MM-DD", "e.g. 1984-12-31")
    if d > date.today():
        raise InvalidField(field, "is in the future", "check the year")
    if d.year < 1880:
        raise InvalidField(field, "is before 1880", "check the year")
    return d


def sex(value: object, field: str = "sex") -> str:
    if not isinstance(value, str) or value.strip().upper() not in SEXES:
        raise InvalidField(field, "must be F, M or U", "U when unknown")
    return value.strip().upper()


def blood_group(value: object, field: str = "blood_group") -> str:
    """ABO/Rh(D): A+, O-, AB+ ... ('A POS', 'O neg' accepted and normalised)."""
    if not isinstance(value, str):
        raise InvalidField(field, "must be an ABO/Rh group", "one of " + ", ".join(BLOOD_GROUPS))
    v = value.strip().upper().replace(" ", "").replace("POS", "+").replace("NEG", "-")
    v = v.replace("0", "O")
    if v not in BLOOD_GROUPS:
        raise InvalidField(field, "must be an ABO/Rh group", "one of " + ", ".join(BLOOD_GROUPS))
    return v


def name(value: object, field: str, required: bool = True, max_len: int = 100) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InvalidField(field, "is required", "")
        return None
    if not isinstance(value, str):
        raise InvalidField(field, "must be text", "")
    v = " ".join(value.split())
    if len(v) > max_len:
        raise InvalidField(field, f"is longer than {max_len} characters", "")
    if any(c.isdigit() or c in "<>{}[]\\;@" for c in v):
        raise InvalidField(field, "contains characters that are not part of a name",
                           "letters, spaces, hyphens and apostrophes only")
    return v


def text(value: object, field: str, max_len: int = 200, required: bool = False) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InvalidField(field, "is required", "")
        return None
    if not isinstance(value, str):
        raise InvalidField(field, "must be text", "")
    v = value.strip()
    if len(v) > max_len:
        raise InvalidField(field, f"is longer than {max_len} characters", "")
    return v
