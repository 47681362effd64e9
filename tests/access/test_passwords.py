"""Passwords: CNIL 2022-100 rules, breached/common refusal, personal data refusal, Argon2id."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labvault.access import passwords as pw
from labvault.errors import InvalidField

GOOD = ["Xk9#mQ2$vL7pZr", "Brume-Falaise-Orties-1987", "Gq7wRt2pLx9mNb4Z",
        "le chat lit sept livres sous la pluie"]
WEAK_RULES = ["short1!A", "alllowercaseletters", "NoDigitsButLong!!!", "12345678901234",
              "Abcdefghijk1!"[:11], "onlyletters AND words"]
BREACHED = ["P@ssw0rd2024!", "Password1234!", "Azertyuiop123!", "Motdepasse123!",
            "Qwertyuiop1234", "Iloveyou12345!"]


@pytest.mark.parametrize("password", GOOD)
def test_good_passwords_pass(password: str) -> None:
    pw.check_password(password, ["Jeanne Martin", "jeanne.martin@example.fr"])


@pytest.mark.parametrize("password", WEAK_RULES)
def test_rules_refuse(password: str) -> None:
    with pytest.raises(InvalidField) as exc:
        pw.check_password(password)
    assert password not in str(exc.value)          # never echoed


@pytest.mark.parametrize("password", BREACHED)
def test_breached_or_common_refused(password: str) -> None:
    with pytest.raises(InvalidField):
        pw.check_password(password)


@pytest.mark.parametrize("password", ["Martin-2024-Lille!", "JeanneMartin#2024", "J3anne!Martin99x"])
def test_own_name_or_email_refused(password: str) -> None:
    with pytest.raises(InvalidField) as exc:
        pw.check_password(password, ["Jeanne Martin", "jeanne.martin@example.fr"])
    assert "name or e-mail" in exc.value.rule


def test_too_long_refused() -> None:
    with pytest.raises(InvalidField):
        pw.check_password("Aa1!" + "x9Qz" * 40)


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=0, max_size=40))
def test_every_accepted_password_meets_a_cnil_rule(password: str) -> None:
    try:
        pw.check_password(password)
    except InvalidField:
        return
    classes = pw._classes(password)
    assert ((len(password) >= 12 and {"upper", "lower", "digit", "special"} <= classes)
            or (len(password) >= 14 and {"upper", "lower", "digit"} <= classes)
            or pw.is_passphrase(password))


@pytest.mark.real_argon2
def test_argon2id_parameters_and_rehash() -> None:
    h = pw.hash_password("Xk9#mQ2$vL7pZr")
    assert h.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert pw.verify_password(h, "Xk9#mQ2$vL7pZr")
    assert not pw.verify_password(h, "Xk9#mQ2$vL7pZ")
    assert not pw.needs_rehash(h)
    old = pw.hasher(time_cost=1, memory_kib=8192).hash("Xk9#mQ2$vL7pZr")
    assert pw.verify_password(old, "Xk9#mQ2$vL7pZr") and pw.needs_rehash(old)
