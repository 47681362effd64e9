"""The reception desk on the console (docs/web.md, "Reception desk"): a patient who walks in
is registered ("Nouveau patient"), then the prescription and the tube collected at the desk
are recorded from the patient's page ("Nouvelle demande"); the number to write on the tube
is shown, and the bench and the biologist find the order in their worklists. Every error
is said in French next to its field, the form comes back filled in, nothing is stored; the
roles the policy refuses get the console's refusal; another laboratory's patient answers
like an id that does not exist."""

from __future__ import annotations

import re
from html import unescape
from typing import Any

import pytest
from fastapi.testclient import TestClient

from labvault.web.desk import rule_fr
from tests.access.conftest import World, patient_json
from tests.foundation.test_plaintext_scan import Scanner, encoded
from tests.web.helpers import ORDER_FORM, csrf_in, form_login, registration_form

NEW = "/console/nouveau-patient"
ACCESSION = re.compile(r"A\d{6}-[0-9A-HJKMNP-TV-Z]{5}")


def _text(r: Any) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", r.text)).split())


def _console(browser: TestClient, w: World, role: str) -> None:
    browser.cookies.clear()
    assert form_login(browser, w, w.a.emails[role]).status_code == 303


def _post(browser: TestClient, page: str, url: str, data: dict[str, Any]) -> Any:
    """Send a console form as a browser does: with the CSRF token of the page it is on."""
    form = browser.get(page)
    assert form.status_code == 200, form.text
    return browser.post(url, data={**data, "csrf": csrf_in(form.text)})


def _error_of(page: str, field: str) -> str:
    """The error said next to a form input."""
    m = re.search(rf'<p class="field-error" id="err-{field}">(.*?)</p>', page, re.S)
    assert m, f"no error next to {field}"
    return unescape(m.group(1))


def _orders(w: World, patient_id: str) -> list[Any]:
    return w.lv.lab.list_orders(w.actor(w.a.emails["biologist"]), w.a.tenant_id,
                                patient_id=patient_id, specimens=True)


def test_reception_registers_a_patient_and_records_an_order_with_its_tube(
        web: World, browser: TestClient) -> None:
    a, lv = web.a, web.lv
    person = patient_json(801, seed=41)
    _console(browser, web, "reception")
    home = browser.get("/console")
    assert 'href="/console/nouveau-patient"' in home.text       # the menu offers it
    done = _post(browser, NEW, NEW, registration_form(person))
    assert done.status_code == 200, _text(done)
    assert "Patient inscrit" in _text(done)
    patient_id = re.search(r'href="/console/patients/(pt_[0-9a-z]+)/demande"', done.text)
    assert patient_id is not None
    pid = patient_id.group(1)
    # stored through the service: found by its NIR, with what the form said
    bio = web.actor(a.emails["biologist"])
    assert lv.patients.find(bio, a.tenant_id, nir=person["nir"]) == [pid]
    record = lv.patients.show(bio, pid)
    assert record["birth_name"] == person["birth_name"]
    assert record["first_names"] == person["first_names"]
    assert record["email"] == person["email"].lower()
    assert record["coverage"]["amo"] == person["coverage"]["amo"]
    assert record["prescriber"]["rpps"] == person["prescriber"]["rpps"]
    # the patient's page offers the order form; the desk records the prescription and tube
    page = browser.get(f"/console/patients/{pid}")
    assert f'href="/console/patients/{pid}/demande"' in page.text
    form = browser.get(f"/console/patients/{pid}/demande")
    assert "Hémoglobine" in form.text and "Potassium" in form.text    # French names
    assert "<legend>Sang total</legend>" in form.text                 # grouped by tube
    assert 'for="prescriber_rpps"' in form.text                       # labelled inputs
    sent = browser.post(f"/console/patients/{pid}/demande",
                        data={**ORDER_FORM, "csrf": csrf_in(form.text)})
    assert sent.status_code == 200, _text(sent)
    text = _text(sent)
    number = ACCESSION.search(text)
    assert number, text
    assert "Demande enregistrée" in text and "Hémoglobine" in text and "urgente" in text
    assert person["birth_name"].upper() in text
    (o,) = _orders(web, pid)
    assert o.status.value == "received" and o.priority.value == "urgent"
    assert list(o.request.tests) == ["718-7", "2823-3"]
    assert o.request.prescriber is not None and o.request.prescriber.rpps == "10003456786"
    assert o.request.clinical_notes == "sous anticoagulant"
    (spec,) = o.specimens
    assert spec.specimen.accession_number == number.group(0)
    assert spec.specimen.type == "BLD"
    assert spec.specimen.collected_at.isoformat() == "2026-03-01T08:30:00+01:00"  # Paris
    # the bench and the biologist find it, by its tube number
    for role in ("technician", "biologist"):
        _console(browser, web, role)
        bench = _text(browser.get("/console/technique"))
        assert f"Prélèvement n° {number.group(0)}" in bench, role


def test_a_pre_printed_label_and_an_order_without_tube(web: World, browser: TestClient) -> None:
    a = web.a
    pid = a.patients[2]
    _console(browser, web, "biologist")          # the policy lets biologists do it too
    page = f"/console/patients/{pid}/demande"
    r = _post(browser, page, page, {**ORDER_FORM, "accession_number": "ETQ-0042"})
    assert r.status_code == 200 and "ETQ-0042" in _text(r)
    r = _post(browser, page, page, {k: v for k, v in ORDER_FORM.items() if k != "collected"})
    assert r.status_code == 200
    assert "Aucun prélèvement n'est encore enregistré" in _text(r)
    numbers = sorted((o.status.value, [s.specimen.accession_number for s in o.specimens])
                     for o in _orders(web, pid))
    assert ("received", ["ETQ-0042"]) in numbers and ("registered", []) in numbers


def test_registration_errors_are_said_in_french_and_store_nothing(
        web: World, browser: TestClient) -> None:
    a, lv = web.a, web.lv
    bio = web.actor(a.emails["biologist"])
    _console(browser, web, "reception")
    person = patient_json(802, seed=41)
    nir = person["nir"]
    bad_key = nir[:13] + f"{(int(nir[13:]) % 97) + 1:02d}"
    r = _post(browser, NEW, NEW, {**registration_form(person), "nir": bad_key,
                                  "birth_name": "", "phone": "12"})
    assert r.status_code == 422
    assert "ne correspond pas" in _error_of(r.text, "nir")
    assert "obligatoire" in _error_of(r.text, "birth_name")
    assert "numéro" in _error_of(r.text, "phone")
    assert "Rien n'a été enregistré" in _text(r)
    assert "is required" not in r.text and "control key" not in r.text       # no English
    # the form comes back filled in (what was typed, to correct it)
    assert f'value="{person["first_names"][0]}' in r.text
    assert f'value="{bad_key}"' in r.text
    assert lv.patients.find(bio, a.tenant_id, email=person["email"]) == []
    # a NIR too short (python-stdnum calls it a format error): its length is said
    r = _post(browser, NEW, NEW, {**registration_form(person), "nir": "123"})
    assert r.status_code == 422 and "15 caractères" in _error_of(r.text, "nir")
    # a NIR that does not agree with the sex
    wrong_sex = {**registration_form(person), "sex": "M" if person["sex"] == "F" else "F"}
    r = _post(browser, NEW, NEW, wrong_sex)
    assert r.status_code == 422 and "premier chiffre" in _error_of(r.text, "nir")
    # the same person registered twice (a double click at the desk): refused, one record
    known = a.patient_data[0]
    r = _post(browser, NEW, NEW, registration_form(known))
    assert r.status_code == 422
    assert "un autre patient du laboratoire a déjà ce NIR" in _error_of(r.text, "nir")
    assert lv.patients.find(bio, a.tenant_id, nir=known["nir"]) == [a.patients[0]]
    assert lv.patients.find(bio, a.tenant_id, email=person["email"]) == []


def _with_key(digits13: str) -> str:
    """A 15-character NIR/INS: 13 digits and their key (97 - n mod 97)."""
    return f"{digits13}{97 - int(digits13) % 97:02d}"


def _bad_key(nir: str) -> str:
    return nir[:13] + f"{(int(nir[13:]) % 97) + 1:02d}"


def _stored_bytes(w: World) -> bytes:
    """Every value of every table of the database, as stored (blobs as their bytes)."""
    from sqlalchemy import select

    from labvault.store.schema import metadata
    out = bytearray()
    with w.lv.begin() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)):
                for value in row:
                    out += (bytes(value) if isinstance(value, bytes | memoryview)
                            else str(value).encode()) + b"\0"
    return bytes(out)


def test_registration_with_birth_place_ins_and_blood_group(web: World,
                                                           browser: TestClient) -> None:
    """The three optional fields of the domain's record the form did not offer: stored as
    typed (normalised by the domain), shown back on the patient's page, sealed: none of
    them is anywhere in the database in clear."""
    a, lv = web.a, web.lv
    person = {**patient_json(803, seed=41), "birth_place_insee": "2a004", "blood_group": "AB-"}
    ins = _with_key("1840575056007")
    _console(browser, web, "reception")
    form = browser.get(NEW)
    assert 'for="birth_place_insee">Commune de naissance (code INSEE)' in form.text
    assert 'for="ins">INS (matricule INS)' in form.text
    assert [*re.findall(r'<option value="([^"]*)"', form.text.split('name="blood_group"')[1]
                        .split("</select>")[0])] == ["", "A+", "A-", "B+", "B-", "AB+", "AB-",
                                                     "O+", "O-"]
    done = _post(browser, NEW, NEW, {**registration_form(person), "ins": ins})
    assert done.status_code == 200, _text(done)
    (pid,) = lv.patients.find(web.actor(a.emails["biologist"]), a.tenant_id, nir=person["nir"])
    record = lv.patients.show(web.actor(a.emails["biologist"]), pid)
    assert (record["birth_place_insee"], record["ins"], record["blood_group"]) == (
        "2A004", ins, "AB-")
    # found by its INS too (the blind index of NIRs holds it)
    assert lv.patients.find(web.actor(a.emails["reception"]), a.tenant_id, nir=ins) == [pid]
    _console(browser, web, "biologist")
    shown = _text(browser.get(f"/console/patients/{pid}"))
    assert "2A004" in shown and ins in shown and "AB-" in shown
    leaks = Scanner(encoded({ins, '"2A004"', '"AB-"', f'"ins":"{ins}"'})).hits(
        _stored_bytes(web))
    assert not leaks


def test_birth_place_ins_and_blood_group_errors_in_french(web: World,
                                                         browser: TestClient) -> None:
    a, lv = web.a, web.lv
    person = patient_json(804, seed=41)
    _console(browser, web, "reception")
    r = _post(browser, NEW, NEW, {**registration_form(person), "birth_place_insee": "7505",
                                  "ins": _bad_key(_with_key("1840575056007")),
                                  "blood_group": "C+"})
    assert r.status_code == 422
    assert "code INSEE de la commune" in _error_of(r.text, "birth_place_insee")
    assert "ne correspond pas" in _error_of(r.text, "ins")
    assert "groupe sanguin dans la liste" in _error_of(r.text, "blood_group")
    assert "must be" not in r.text and "control key" not in r.text
    assert 'value="7505"' in r.text                          # the form refilled
    assert lv.patients.find(web.actor(a.emails["biologist"]), a.tenant_id,
                            nir=person["nir"]) == []


def _edit(pid: str) -> str:
    return f"/console/patients/{pid}/modifier"


def _writes(w: World, pid: str) -> list[Any]:
    """The audit log's write decisions about the patient."""
    from labvault.audit.entry import AuditEntry
    from labvault.services.audit import audit_of
    from labvault.store import repositories_audit as arepo
    audit_of(w.lv)                  # queued entries written
    with w.lv.begin() as conn:
        rows = arepo.entries_for_patient(conn, w.a.tenant_id, pid)
    return [e for e in map(AuditEntry.from_row, rows) if e.action == "write"]


def _inputs(page: str) -> dict[str, str]:
    """The form's inputs and their values (a select: its selected option)."""
    out = {m.group(1): unescape(m.group(2)) for m in re.finditer(
        r'<input id="[^"]+" name="([^"]+)" type="[^"]+" maxlength="\d+" value="([^"]*)"', page)}
    seen = re.search(r'<input type="hidden" name="seen" value="([^"]*)">', page)
    if seen:                            # "Modifier": the record's version as shown
        out["seen"] = unescape(seen.group(1))
    for name, body in re.findall(r'<select id="[^"]+" name="([^"]+)".*?>(.*?)</select>', page,
                                 re.S):
        sel = re.search(r'<option value="([^"]*)" selected>', body)
        out[name] = sel.group(1) if sel else ""
    return out


def test_reception_changes_a_records_address_and_phone(web: World,
                                                       browser: TestClient) -> None:
    """A patient moved and changed phone: from the patient's page, "Modifier" shows the
    record as the desk may read it (no clinical section for reception); only what changed
    is saved, the rest of the record (clinical data included) is kept; the write's audit
    entry names the fields changed, not their values, which are nowhere in clear."""
    a, lv = web.a, web.lv
    pid, person = a.patients[1], a.patient_data[1]
    bio = web.actor(a.emails["biologist"])
    before = lv.patients.show(bio, pid)
    _console(browser, web, "reception")
    page = browser.get(f"/console/patients/{pid}")
    assert f'<a href="{_edit(pid)}">Modifier</a>' in page.text
    form = browser.get(_edit(pid))
    assert form.status_code == 200
    values = _inputs(form.text)
    assert values["birth_name"] == before["birth_name"]
    assert values["first_names"] == ", ".join(before["first_names"])
    assert values["birth_date"] == before["birth_date"] and values["sex"] == before["sex"]
    assert values["nir"] == before["nir"] and values["city"] == before["address"]["city"]
    assert re.fullmatch(r"0\d( \d\d){4}", values["phone"])       # as people write it
    assert values["amo"] == before["coverage"]["amo"]
    assert "blood_group" not in values and "doctor_name" not in values    # not read: not shown
    new = {"address_line": "12, rue des Tanneurs", "postal_code": "59800", "city": "Lille",
           "phone": "07 61 23 45 98"}
    r = browser.post(_edit(pid), data={**values, **new, "csrf": csrf_in(form.text)})
    assert r.status_code == 303 and r.headers["location"] == f"/console/patients/{pid}"
    after = lv.patients.show(bio, pid)
    assert after["address"] == {"line": "12, rue des Tanneurs", "postal_code": "59800",
                                "city": "Lille", "country": before["address"]["country"]}
    assert after["phone"] == "+33761234598"
    kept = {k: val for k, val in after.items() if k not in ("address", "phone", "updated_at")}
    assert kept == {k: val for k, val in before.items()
                    if k not in ("address", "phone", "updated_at")}   # blood group, doctor...
    # the new phone finds the patient, the old one no longer does (indexes rebuilt)
    assert lv.patients.find(bio, a.tenant_id, phone="07 61 23 45 98") == [pid]
    assert lv.patients.find(bio, a.tenant_id, phone=person["phone"]) == []
    shown = _text(browser.get(f"/console/patients/{pid}"))
    assert "12, rue des Tanneurs, 59800 Lille" in shown and "07 61 23 45 98" in shown
    (write,) = _writes(web, pid)
    assert write.detail == {"changed": ["address", "phone"]}
    assert write.categories == ("contact",) and write.outcome == "allowed"
    leaks = Scanner(encoded({"rue des Tanneurs", "+33761234598", "0761234598",
                             "07 61 23 45 98"})).hits(_stored_bytes(web))
    assert not leaks


def test_a_biologist_changes_the_blood_group_and_empties_fields(web: World,
                                                                browser: TestClient) -> None:
    """The biologist reads every category: the blood group and usual doctor are offered
    too. An input emptied removes the field where the domain lets it (e-mail, NIR: a
    child registered under a parent's NIR); nothing changed: nothing written."""
    a, lv = web.a, web.lv
    pid = a.patients[2]
    bio = web.actor(a.emails["biologist"])
    _console(browser, web, "biologist")
    form = browser.get(_edit(pid))
    values = _inputs(form.text)
    assert values["blood_group"] == lv.patients.show(bio, pid)["blood_group"]
    r = browser.post(_edit(pid), data={**values, "csrf": csrf_in(form.text)})
    assert r.status_code == 303 and _writes(web, pid) == []       # nothing changed
    group = "B-" if values["blood_group"] != "B-" else "A+"
    r = browser.post(_edit(pid), data={**values, "blood_group": group, "email": "", "nir": "",
                                       "csrf": csrf_in(form.text)})
    assert r.status_code == 303
    after = lv.patients.show(bio, pid)
    assert after["blood_group"] == group and "email" not in after and "nir" not in after
    assert after["prescriber"]["name"] == values["doctor_name"]
    assert lv.patients.find(bio, a.tenant_id, nir=a.patient_data[2]["nir"]) == []
    (write,) = _writes(web, pid)
    assert write.detail == {"changed": ["blood_group", "email", "nir"]}
    assert write.categories == ("clinical", "contact", "identity")


def test_a_change_needs_reading_what_it_changes(web: World) -> None:
    """Reception writes a prescriber or blood group at registration without reading the
    clinical category; changing one means merging into what is stored: refused (and not
    offered on its "Modifier" page), nothing written."""
    from labvault.errors import AccessDenied
    a, lv = web.a, web.lv
    pid = a.patients[2]
    bio = web.actor(a.emails["biologist"])
    before = lv.patients.show(bio, pid)
    with pytest.raises(AccessDenied):
        lv.patients.amend(web.actor(a.emails["reception"]), pid, {"blood_group": "O-"})
    assert lv.patients.show(bio, pid) == before and _writes(web, pid) == []


def test_edit_errors_are_said_in_french_and_keep_the_form(web: World,
                                                         browser: TestClient) -> None:
    a, lv = web.a, web.lv
    pid = a.patients[1]
    bio = web.actor(a.emails["biologist"])
    before = lv.patients.show(bio, pid)
    _console(browser, web, "reception")
    form = browser.get(_edit(pid))
    values = _inputs(form.text)
    r = browser.post(_edit(pid), data={**values, "phone": "12", "city": "Roubaix",
                                       "birth_name": "", "csrf": csrf_in(form.text)})
    assert r.status_code == 422
    assert "numéro" in _error_of(r.text, "phone")
    assert "obligatoire" in _error_of(r.text, "birth_name")
    assert "Rien n'a été enregistré" in _text(r) and "is not" not in r.text
    typed = _inputs(r.text)
    assert typed["phone"] == "12" and typed["city"] == "Roubaix" and typed["birth_name"] == ""
    # a birth date the NIR does not agree with (digits 2 to 5: year and month of birth)
    r = browser.post(_edit(pid), data={**values, "birth_date": "1901-01-01",
                                       "csrf": csrf_in(form.text)})
    assert r.status_code == 422 and "ne correspondent pas" in _error_of(r.text, "nir")
    assert lv.patients.show(bio, pid) == before and _writes(web, pid) == []
    # a form without its CSRF token (a forged post): refused, nothing changed
    r = browser.post(_edit(pid), data={**values, "city": "Roubaix"})
    assert r.status_code == 403 and lv.patients.show(bio, pid) == before


def test_edit_refused_to_roles_without_patient_write_and_for_another_lab(
        web: World, browser: TestClient) -> None:
    a, b, lv = web.a, web.b, web.lv
    pid = a.patients[0]
    bio = web.actor(a.emails["biologist"])
    before = lv.patients.show(bio, pid)
    _console(browser, web, "reception")
    values = _inputs(browser.get(_edit(pid)).text)
    for role in ("technician", "lab_admin", "dpo"):
        _console(browser, web, role)
        if role == "technician":
            page = browser.get(f"/console/patients/{pid}")
            assert page.status_code == 200 and _edit(pid) not in page.text
        r = browser.get(_edit(pid))
        assert r.status_code == 403, role
        assert "votre fonction ne permet pas de modifier un dossier patient" in _text(r)
        token = csrf_in(browser.get("/console").text)
        r = browser.post(_edit(pid), data={**values, "city": "Roubaix", "csrf": token})
        assert r.status_code == 403, role
    assert lv.patients.show(bio, pid) == before
    # reception of laboratory A, laboratory B's patient: the page of an absent id
    _console(browser, web, "reception")
    other = browser.get(_edit(b.patients[0]))
    absent = browser.get(_edit("pt_00000000000000000000000000"))
    assert other.status_code == absent.status_code == 404
    assert _text(other) == _text(absent)
    token = csrf_in(browser.get("/console").text)
    bio_b = web.actor(b.emails["biologist"])
    theirs = lv.patients.show(bio_b, b.patients[0])
    r = browser.post(_edit(b.patients[0]), data={**values, "city": "Roubaix", "csrf": token})
    assert r.status_code == 404 and lv.patients.show(bio_b, b.patients[0]) == theirs


def test_order_errors_are_said_in_french_and_store_nothing(web: World,
                                                           browser: TestClient) -> None:
    a = web.a
    pid = a.patients[1]
    before = len(_orders(web, pid))
    _console(browser, web, "reception")
    page = f"/console/patients/{pid}/demande"
    r = _post(browser, page, page, {**ORDER_FORM, "tests": ["718-7", "1234-5"],
                                    "prescriber_rpps": "10003456780",
                                    "collected_at": "2099-01-01T08:00"})
    assert r.status_code == 422
    assert "analyse inconnue du catalogue" in _error_of(r.text, "tests")
    assert "vérifiez les 11 chiffres" in _error_of(r.text, "prescriber_rpps")
    assert "pas dans le futur" in _error_of(r.text, "collected_at")
    assert 'value="718-7" checked' in r.text                  # the form refilled
    assert 'value="10003456780"' in r.text
    r = _post(browser, page, page, {**ORDER_FORM, "tests": [], "prescriber_name": "",
                                    "specimen_type": "XYZ"})
    assert r.status_code == 422
    assert "au moins une analyse" in _error_of(r.text, "tests")
    assert "obligatoire" in _error_of(r.text, "prescriber_name")
    assert "type de prélèvement" in _error_of(r.text, "specimen_type")
    assert "must be" not in r.text and "is not" not in r.text
    assert len(_orders(web, pid)) == before
    # a form without its CSRF token (a forged post): refused, nothing stored
    r = browser.post(page, data=ORDER_FORM)
    assert r.status_code == 403 and len(_orders(web, pid)) == before


def test_roles_the_policy_refuses_and_another_laboratorys_patient(
        web: World, browser: TestClient) -> None:
    a, b = web.a, web.b
    for role in ("technician", "lab_admin", "dpo"):
        _console(browser, web, role)
        assert 'href="/console/nouveau-patient"' not in browser.get("/console").text
        for url in (NEW, f"/console/patients/{a.patients[0]}/demande"):
            r = browser.get(url)
            assert r.status_code == 403, (role, url)
            assert "votre fonction ne permet pas" in _text(r)
    _console(browser, web, "technician")
    page = browser.get(f"/console/patients/{a.patients[0]}")
    assert page.status_code == 200
    assert f'/console/patients/{a.patients[0]}/demande"' not in page.text
    before = len(_orders(web, a.patients[0]))
    r = browser.post(f"/console/patients/{a.patients[0]}/demande",
                     data={**ORDER_FORM, "csrf": csrf_in(page.text)})
    assert r.status_code == 403 and len(_orders(web, a.patients[0])) == before
    # reception of laboratory A, laboratory B's patient: the page of an absent id
    _console(browser, web, "reception")
    other = browser.get(f"/console/patients/{b.patients[0]}/demande")
    absent = browser.get("/console/patients/pt_00000000000000000000000000/demande")
    assert other.status_code == absent.status_code == 404
    assert _text(other) == _text(absent)
    assert "ce patient n'existe pas dans votre laboratoire" in _text(other)
    form = browser.get(f"/console/patients/{a.patients[0]}/demande")
    r = browser.post(f"/console/patients/{b.patients[0]}/demande",
                     data={**ORDER_FORM, "csrf": csrf_in(form.text)})
    assert r.status_code == 404
    bio_b = web.actor(b.emails["biologist"])
    assert web.lv.lab.list_orders(bio_b, b.tenant_id, patient_id=b.patients[0]) == []


def test_every_rule_has_french_words() -> None:
    """The services' field rules the desk's forms can meet, each in French (none echoed
    in English), including the ones whose text carries a value."""
    for rule in ("is required", "first digit 1 does not match sex F",
                 "not a valid NIR (The number has an invalid length.)",
                 "not a valid NIR (The number has an invalid format.)",
                 "is not a valid e-mail address (The email address is not valid.)",
                 "is longer than 100 characters", "something new"):
        said = rule_fr(rule)
        assert not re.search(r"\b(is|not|the|must|does)\b", said), (rule, said)


def test_the_analysers_results_for_the_desks_tube_find_its_order(web: World,
                                                                 browser: TestClient) -> None:
    """The tube number written at the desk was kept on the specimen only; an analyser's
    ORU^R01 quoting it (OBR-3, the barcode it read) found no order and made a second one.
    The tube's number is now the order's filler number: the results go to the desk's order."""
    from labvault.domain.actors import Actor
    from labvault.interop.hl7.handler import Hl7Handler
    a, lv = web.a, web.lv
    pid = a.patients[1]
    _console(browser, web, "reception")
    page = f"/console/patients/{pid}/demande"
    before = {o.order_id for o in _orders(web, pid)}
    r = _post(browser, page, page, {**ORDER_FORM, "accession_number": "ETQ-0077"})
    assert r.status_code == 200
    (order,) = [o for o in _orders(web, pid) if o.order_id not in before]
    nir = lv.patients.show(Actor.operator(), pid)["nir"]
    oru = "\r".join([
        "MSH|^~\\&|ANALYZER|LABO|LABVAULT|LABO|20260301093000||ORU^R01^ORU_R01|DESK-1|P|2.5",
        f"PID|1||{nir}^^^ASIP-SANTE-NIR&1.2.250.1.213.1.4.8&ISO^NH",
        "OBR|1||ETQ-0077|58410-2^CBC^LN|||20260301083000",
        "OBX|1|NM|718-7^Hemoglobin^LN||13.2|g/dL|||||F",
        "OBX|2|NM|2823-3^Potassium^LN||4.4|mmol/L|||||F"]) + "\r"
    ack = Hl7Handler(lv, Actor.system("mllp"), a.tenant_id).handle(oru.encode())[1]
    assert b"MSA|AA" in ack, ack
    (after,) = [o for o in _orders(web, pid) if o.order_id not in before]   # no new order
    assert after.order_id == order.order_id and after.status.value == "preliminary"


def test_a_form_opened_before_someone_elses_change_writes_nothing(
        web: World, browser: TestClient) -> None:
    """Reception opens "Modifier"; meanwhile a biologist saves a new phone number. The
    desk's form still holds the old number: saving it as it stands would put the old
    number back. Nothing is written (409), the page shows the record as it is now and
    says why; once reloaded, the desk's change goes through."""
    a, lv = web.a, web.lv
    pid = a.patients[1]
    bio = web.actor(a.emails["biologist"])
    _console(browser, web, "reception")
    form = browser.get(_edit(pid))
    values = _inputs(form.text)
    assert values["seen"] == lv.patients.show(bio, pid)["updated_at"]
    assert lv.patients.amend(bio, pid, {"phone": "06 44 55 66 77"}) == ["phone"]
    r = browser.post(_edit(pid), data={**values, "city": "Roubaix",
                                       "csrf": csrf_in(form.text)})
    assert r.status_code == 409
    assert "modifié par quelqu'un d'autre" in unescape(r.text)
    now = lv.patients.show(bio, pid)
    assert now["phone"] == "+33644556677" and now["address"]["city"] != "Roubaix"
    again = _inputs(r.text)                              # the record as it is now
    assert again["phone"] == "06 44 55 66 77" and again["seen"] == now["updated_at"]
    r = browser.post(_edit(pid), data={**again, "city": "Roubaix", "csrf": csrf_in(r.text)})
    assert r.status_code == 303
    after = lv.patients.show(bio, pid)
    assert after["address"]["city"] == "Roubaix" and after["phone"] == "+33644556677"


def test_a_tube_number_typed_twice_is_refused_next_to_it(web: World, browser: TestClient,
                                                         monkeypatch: Any) -> None:
    """A pre-printed label typed for a second order made two orders with one filler
    number, which an analyser's results could not tell apart: refused on the tube number's
    field, the form kept, nothing stored. A number labvault drew that is another order's
    is drawn again, unseen."""
    from labvault.domain import lab as L
    pid = web.a.patients[2]
    _console(browser, web, "reception")
    page = f"/console/patients/{pid}/demande"
    assert _post(browser, page, page, {**ORDER_FORM, "accession_number": "ETQ-0101"}
                 ).status_code == 200
    before = len(_orders(web, pid))
    r = _post(browser, page, page, {**ORDER_FORM, "accession_number": "ETQ-0101"})
    assert r.status_code == 422
    said = _error_of(r.text, "accession_number")
    assert "le n° ETQ-0101 est déjà celui d'une autre demande" in said
    assert "prenez l'étiquette suivante" in said
    assert "Rien n'a été enregistré" in _text(r)
    assert 'value="ETQ-0101"' in r.text and 'value="718-7" checked' in r.text   # kept
    assert 'value="10003456786"' in r.text and "sous anticoagulant" in r.text
    assert len(_orders(web, pid)) == before
    drawn = iter(["ETQ-0101", "A260301-NEW01"])
    monkeypatch.setattr(L, "new_accession_number", lambda day: next(drawn))
    r = _post(browser, page, page, ORDER_FORM)
    assert r.status_code == 200 and "A260301-NEW01" in _text(r)
    assert len(_orders(web, pid)) == before + 1


RECEPTION_FORM = {"specimen_type": "SER", "collected_at": "2026-03-01T09:15",
                  "accession_number": "ETQ-0300"}


def test_a_specimen_received_later_at_the_desk(web: World, browser: TestClient) -> None:
    """An order recorded without its tube (the patient comes back) is listed on the
    patient's page as awaiting it; "Enregistrer le prélèvement" receives it: the order is
    received, the tube's number its filler number, then back to the patient's page. A
    form posted twice adds no second tube."""
    from labvault.domain.actors import Actor
    from labvault.services.audit import audit_of
    from tests.web.helpers import order
    a, lv = web.a, web.lv
    pid = a.patients[2]
    waiting = order(web, a, pid, step="registered")
    url = f"/console/demandes/{waiting.order_id}/reception"
    _console(browser, web, "reception")
    page = browser.get(f"/console/patients/{pid}")
    assert "Demandes en attente de prélèvement" in page.text and f'href="{url}"' in page.text
    form = browser.get(url)
    assert form.status_code == 200, _text(form)
    assert "Hémoglobine" in _text(form) and "Dr Hélène Lefèvre" in _text(form)
    assert 'for="accession_number"' in form.text and 'name="collected_at"' in form.text
    r = browser.post(url, data={**RECEPTION_FORM, "csrf": csrf_in(form.text)},
                     follow_redirects=False)
    assert r.status_code == 303, _text(r)
    assert r.headers["location"] == f"/console/patients/{pid}#{waiting.order_id}"
    got = lv.lab.get_order(web.actor(a.emails["biologist"]), waiting.order_id)
    assert got.status.value == "received" and got.request.filler_number == "ETQ-0300"
    (spec,) = got.specimens
    assert spec.specimen.type == "SER" and spec.specimen.accession_number == "ETQ-0300"
    assert spec.specimen.collected_at.isoformat() == "2026-03-01T09:15:00+01:00"   # Paris
    assert f'href="{url}"' not in browser.get(f"/console/patients/{pid}").text
    rows = audit_of(lv).access_log(Actor.operator(), pid)
    assert any(r["resource"] == "specimen" and r["action"] == "write" for r in rows)
    # the same form sent again (a double click): said, and no second tube
    again = browser.post(url, data={**RECEPTION_FORM, "csrf": csrf_in(form.text)})
    assert again.status_code == 409 and "déjà enregistré par vous" in _text(again)
    assert len(lv.lab.get_order(web.actor(a.emails["biologist"]),
                                waiting.order_id).specimens) == 1
    # the roles that read reports find the link on the order's report card
    other = order(web, a, pid, step="registered")
    _console(browser, web, "technician")
    assert f'href="/console/demandes/{other.order_id}/reception"' in browser.get(
        f"/console/patients/{pid}").text


def test_reception_errors_are_said_next_to_their_field(web: World,
                                                       browser: TestClient) -> None:
    from tests.web.helpers import order
    a = web.a
    pid = a.patients[2]
    taken = order(web, a, pid, step="registered")
    waiting = order(web, a, pid, step="registered")
    web.lv.lab.receive_specimen(web.actor(a.emails["biologist"]), taken.order_id,
                                {"type": "BLD", "collected_at": "2026-03-01T08:00:00+01:00",
                                 "accession_number": "ETQ-0301"}, tube_is_filler=True)
    url = f"/console/demandes/{waiting.order_id}/reception"
    _console(browser, web, "reception")
    r = _post(browser, url, url, {**RECEPTION_FORM, "accession_number": "ETQ-0301"})
    assert r.status_code == 422
    assert "le n° ETQ-0301 est déjà celui d'une autre demande" in _error_of(
        r.text, "accession_number")
    assert 'value="ETQ-0301"' in r.text and 'value="2026-03-01T09:15"' in r.text   # kept
    assert 'value="SER" selected' in r.text
    r = _post(browser, url, url, {**RECEPTION_FORM, "collected_at": "2099-01-01T08:00",
                                  "specimen_type": "", "accession_number": ""})
    assert r.status_code == 422
    assert "pas dans le futur" in _error_of(r.text, "collected_at")
    assert "type de prélèvement" in _error_of(r.text, "specimen_type")
    assert "est obligatoire" in _error_of(r.text, "accession_number")
    r = _post(browser, url, url, {**RECEPTION_FORM, "collected_at": "demain matin"})
    assert r.status_code == 422 and "heure de Paris" in _error_of(r.text, "collected_at")
    assert "must be" not in r.text and "is not" not in r.text
    got = web.lv.lab.get_order(web.actor(a.emails["biologist"]), waiting.order_id)
    assert got.status.value == "registered" and got.specimens == []
    assert got.request.filler_number is None


def test_reception_roles_and_another_laboratorys_order(web: World,
                                                       browser: TestClient) -> None:
    from tests.web.helpers import order
    a, b = web.a, web.b
    waiting = order(web, a, a.patients[2], step="registered")
    url = f"/console/demandes/{waiting.order_id}/reception"
    for role in ("lab_admin", "dpo"):
        _console(browser, web, role)
        r = browser.get(url)
        assert r.status_code == 403, role
        assert "votre fonction ne permet pas d'enregistrer un prélèvement" in _text(r)
    _console(browser, web, "lab_admin")
    r = browser.post(url, data=RECEPTION_FORM)
    assert r.status_code == 403
    # reception of laboratory A, laboratory B's order: the page of an absent id
    _console(browser, web, "reception")
    theirs = order(web, b, b.patients[0], step="registered")
    other = browser.get(f"/console/demandes/{theirs.order_id}/reception")
    absent = browser.get("/console/demandes/ord_00000000000000000000000000/reception")
    assert other.status_code == absent.status_code == 404
    assert _text(other) == _text(absent)
    assert "cette demande n'existe pas dans votre laboratoire" in _text(other)
    form = browser.get(url)
    r = browser.post(f"/console/demandes/{theirs.order_id}/reception",
                     data={**RECEPTION_FORM, "csrf": csrf_in(form.text)})
    assert r.status_code == 404
    bio_b = web.actor(b.emails["biologist"])
    assert web.lv.lab.get_order(bio_b, theirs.order_id).status.value == "registered"
    # a received order's page says so (409), with who received it and when
    done = order(web, a, a.patients[2], step="received")
    r = browser.get(f"/console/demandes/{done.order_id}/reception")
    assert r.status_code == 409 and "déjà enregistré" in _text(r)
