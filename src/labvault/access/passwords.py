"""Passwords: Argon2id hashing with transparent rehash, and the CNIL 2022-100 rules.

Hashing follows the OWASP minimum for Argon2id (m = 19 MiB, t = 2, p = 1). A stored
hash made with other parameters still verifies, and ``needs_rehash`` tells the caller
to store a fresh hash (done at the next successful login).

Rules (CNIL deliberation 2022-100, case "password alone", ≥ 80 bits): at least 12
characters with upper case, lower case, digits and special characters; or at least 14
characters with upper case, lower case and digits; or a passphrase of at least 7
words. On top: no common or breached password (zxcvbn's offline frequency lists,
shipped with the package, plus its pattern estimator), and nothing built on the
user's own name or e-mail. No periodic forced change.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from labvault.errors import InvalidField

MEMORY_KIB = 19 * 1024
TIME_COST = 2
PARALLELISM = 1
MAX_LENGTH = 128          # bounds hashing and estimator cost (no DoS through huge inputs)
MIN_ZXCVBN_SCORE = 3

_hasher = PasswordHasher(time_cost=TIME_COST, memory_cost=MEMORY_KIB, parallelism=PARALLELISM,
                         hash_len=32, salt_len=16)


def hasher(time_cost: int = TIME_COST, memory_kib: int = MEMORY_KIB) -> PasswordHasher:
    """A hasher with other parameters (tests of rehash; never weaker than the default in use)."""
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=PARALLELISM,
                          hash_len=32, salt_len=16)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str, password: str) -> bool:
    if len(password) > MAX_LENGTH:
        return False
    try:
        return _hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    return _hasher.check_needs_rehash(stored)


_DUMMY: str | None = None


def dummy_verify(password: str) -> None:
    """Spend the same time as a real verification (unknown account: no timing oracle)."""
    global _DUMMY
    if _DUMMY is None:
        _DUMMY = _hasher.hash("labvault-dummy-password-never-used")
    verify_password(_DUMMY, password[:MAX_LENGTH])


# -- rules -------------------------------------------------------------------------------------
_WORDS = re.compile(r"[^\W\d_]{2,}", re.UNICODE)


def _classes(pw: str) -> set[str]:
    out = set()
    for ch in pw:
        if ch.isdigit():
            out.add("digit")
        elif ch.isalpha():
            out.add("upper" if ch.isupper() else "lower" if ch.islower() else "letter")
        else:
            out.add("special")
    return out


def _fold(s: str) -> str:
    s = unicodedata.normalize("NFKD", s)
    return "".join(c for c in s if not unicodedata.combining(c)).lower()


def is_passphrase(pw: str) -> bool:
    words = [w.lower() for w in _WORDS.findall(pw)]
    return len(words) >= 7 and len(set(words)) >= 5


@lru_cache(maxsize=1)
def _common() -> frozenset[str]:
    from zxcvbn.frequency_lists import FREQUENCY_LISTS
    return frozenset(FREQUENCY_LISTS["passwords"])


_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a",
                       "$": "s", "!": "i"})


def _personal_parts(user_inputs: Iterable[str]) -> list[str]:
    parts: list[str] = []
    for value in user_inputs:
        if not value:
            continue
        if "@" in value:           # an e-mail: its local part is personal, the domain is not
            value = value.rsplit("@", 1)[0]
        for piece in re.split(r"[\s@._\-+']+", _fold(value)):
            if len(piece) >= 3:
                parts.append(piece)
    return parts


def check_password(password: str, user_inputs: Iterable[str] = (), field: str = "password") -> None:
    """Raise ``InvalidField`` saying which rule ``password`` breaks."""
    hint = ("use at least 12 characters mixing upper case, lower case, digits and special "
            "characters, or 14+ characters of letters and digits, or a passphrase of 7 words")
    if not isinstance(password, str) or not password:
        raise InvalidField(field, "is required", hint)
    if len(password) > MAX_LENGTH:
        raise InvalidField(field, f"is longer than {MAX_LENGTH} characters", hint)
    classes = _classes(password)
    letters = {"upper", "lower"} <= classes
    ok = ((len(password) >= 12 and letters and {"digit", "special"} <= classes)
          or (len(password) >= 14 and letters and "digit" in classes)
          or is_passphrase(password))
    if not ok:
        raise InvalidField(field, "does not follow the password rules (CNIL 2022-100)", hint)
    folded = _fold(password)
    inputs = list(user_inputs)
    for part in _personal_parts(inputs):
        if part in folded or part in folded.translate(_LEET):
            raise InvalidField(field, "contains your name or e-mail address",
                               "choose a password that says nothing about you")
    core = re.sub(r"[\d\W_]+$", "", re.sub(r"^[\d\W_]+", "", folded))
    common = _common()
    if folded in common or core in common or core.translate(_LEET) in common:
        raise InvalidField(field, "is a common or breached password",
                           "choose a password that is not in published password lists")
    from zxcvbn import zxcvbn
    result = zxcvbn(password[:100], user_inputs=[i for i in inputs if i])
    if int(result["score"]) < MIN_ZXCVBN_SCORE and not is_passphrase(password):
        raise InvalidField(field, "is too easy to guess (common words, names or patterns)",
                           "avoid dictionary words with simple substitutions, dates and keyboard "
                           "patterns; a passphrase of 7 unrelated words works well")
