"""Register (72 h clock, audit, sealed evidence) and notices (Art. 33(3) items, PDFs, CSV)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from labvault.breach import notices
from labvault.breach import synthdump as sd
from labvault.breach.severity import Circumstances, assess
from labvault.domain.actors import Actor
from labvault.errors import AccessDenied, NotFound, UserError
from labvault.services.app import Labvault
from labvault.services.gate import MemoryAudit
from tests.breach.conftest import Store

DPO = {"name": "Camille DPO", "email": "dpo@example.org", "phone": "+33 3 20 00 00 00"}


def test_register_clock_audit_and_access(lv: Labvault, operator: Actor) -> None:
    cid = lv.breach.open_case(operator, "Fuite", "2026-11-20T10:00:00+01:00", "desc")
    case = lv.breach.show(operator, cid)
    assert case["aware_at"] == "2026-11-20T09:00:00+00:00"
    assert case["deadline_at"] == "2026-11-23T09:00:00+00:00"
    assert case["overdue"] is True and case["hours_left"] < 0
    lv.breach.record(operator, cid, "measure", "serveur isolé")
    lv.breach.record(operator, cid, "decision", "notifier la CNIL")
    case = lv.breach.show(operator, cid)
    assert [m["text"] for m in case["measures"]] == ["serveur isolé"]
    assert len(case["decisions"]) == 1
    assert [c["case_id"] for c in lv.breach.list_cases(operator)] == [cid]
    audit = lv.gate.audit
    assert isinstance(audit, MemoryAudit)
    assert {e[1] for e in audit.events} >= {"breach.case_opened", "breach.measure_recorded"}
    assert all(a.resource == "breach" for a, _, _ in audit.entries)
    staff = Actor(kind="staff", id="acct_s", tenant_id=None, roles=frozenset({"reception"}))
    with pytest.raises(AccessDenied):
        lv.breach.show(staff, cid)
    with pytest.raises(NotFound):
        lv.breach.show(operator, "brc_nope")
    with pytest.raises(UserError):
        lv.breach.record(operator, cid, "triage", "x")


def test_evidence_is_sealed(lv: Labvault, operator: Actor, tmp_path: Path) -> None:
    p = tmp_path / "leak.csv"
    p.write_text("nom,email\nDupont,jeanne.dupont@example.org\n")
    cid = lv.breach.open_case(operator, "t", "2026-11-20T10:00:00Z")
    ev = lv.breach.add_evidence(operator, cid, p)
    import hashlib
    assert ev["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    stored = (lv.settings.data_dir / ev["stored"]).read_bytes()
    assert b"Dupont" not in stored and b"example.org" not in stored
    assert lv.breach.add_evidence(operator, cid, p)["evidence_id"] == ev["evidence_id"]


def test_notices_every_art33_item_and_valid_pdfs(lv: Labvault, operator: Actor, store: Store,
                                                 tmp_path: Path) -> None:
    dump = sd.make_dump(store.patients[:12], 3, seed=8)
    rows = dump.rows
    rows[0]["notes"] = "=cmd|' /C calc'!A0"
    rows[0]["nom"] = "=HYPERLINK(\"http://x\")"
    path = tmp_path / "d.csv"
    sd.write_csv(path, rows)
    cid = lv.breach.open_case(operator, "Fichier sur un forum", lv.now().isoformat())
    lv.breach.triage(operator, cid, [path])
    lv.breach.record(operator, cid, "measure", "mots de passe réinitialisés")
    out = lv.breach.notify(operator, cid, tmp_path / "out", DPO)
    n = json.loads(Path(out["cnil_json"]).read_text())
    assert notices.missing_art33_items(n) == []
    # field by field (Art. 33(3)(a)-(d))
    assert n["type"] == "initial" and n["nature"]["description"]
    assert n["persons_approx"] >= 10 and n["records_approx"] >= n["persons_approx"]
    assert {c["meaning"] for c in n["data_categories"]} >= {"nir", "clinical_note", "email"}
    assert n["data_subject_categories"]
    assert n["dpo"] == {"name": DPO["name"], "email": DPO["email"], "phone": DPO["phone"]}
    assert any("NIR" in c for c in n["consequences"])
    assert n["measures_taken"] == ["mots de passe réinitialisés"] and n["measures_proposed"]
    assert n["timeline"]["within_72h"] is True
    for key in ("cnil_pdf", "ars_pdf"):
        data = Path(out[key]).read_bytes()
        assert data.startswith(b"%PDF-") and b"%%EOF" in data[-64:]
    assert out["cnil_pdf_pages"] >= 1
    assert out["letters"] == n["persons_approx"]
    letters = sorted((tmp_path / "out" / "lettres").glob("*.pdf"))
    assert len(letters) == out["letters"] and letters[0].read_bytes().startswith(b"%PDF-")
    with open(out["mail_merge_csv"], encoding="utf-8-sig") as fh:
        cells = [c for r in csv.reader(fh, delimiter=";") for c in r]
    assert not any(c[:1] in ("=", "+", "-", "@") for c in cells)
    ars = json.loads((tmp_path / "out" / "ars-cert-sante.json").read_text())
    assert ars["structures"] and ars["health_data"]
    # a second notification is complementary
    again = lv.breach.notify(operator, cid, tmp_path / "out2", DPO, letters=False)
    assert again["type"] == "complementary"
    assert len(lv.breach.show(operator, cid)["notifications"]) == 2
    with pytest.raises(UserError):
        lv.breach.notify(operator, cid, tmp_path / "o3", {"name": "x"})


def test_severity_enisa_and_art34_3a() -> None:
    high = assess({"nir", "last_name", "birth_date", "clinical_note"}, 1000, 1000)
    assert high["score"] == 4 * 1 + 1.0 and high["level"] == "very high"
    assert high["notify_subjects"] and high["notify_authority"]
    sealed = assess({"sealed"}, 1000, 1000, sealed_columns=2)
    assert sealed["art34_3a"]["unintelligible"] and not sealed["notify_subjects"]
    assert sealed["ei"]["score"] == 0.25
    low = assess({"email"}, 10, 10, Circumstances(recipients="known", malicious=False))
    assert low["level"] == "low" and low["score"] == 1 * 0.75 + 0.25
    assert "ENISA" in low["rationale"]
    # French typography: decimal commas, a space before the semicolon
    assert "= 1 × 0,75 + 0,25 = 1 (niveau" in low["rationale"]
    nir = assess({"nir", "last_name", "birth_date"}, 10, 10)["rationale"]
    assert "DPC de base 1 ; NIR exposé" in nir and "; " not in nir.replace(" ; ", "")


def test_safe_cell() -> None:
    for bad in ("=1+1", "+33", "-2", "@SUM(A1)", "\t=x", "|cmd"):
        assert notices.safe_cell(bad).startswith("'")
    assert notices.safe_cell("Dupont") == "Dupont"


def test_notices_are_readable_by_their_owner_only(lv: Labvault, operator: Actor,
                                                  store: Store, tmp_path: Path) -> None:
    """QA report item 18: the Art. 34 letters (names, addresses) were written 0644 in a
    0755 directory while the mail-merge CSV was 0600."""
    import os
    import stat
    dump = sd.make_dump(store.patients[:12], 3, seed=8)
    path = tmp_path / "d.csv"
    sd.write_csv(path, dump.rows)
    cid = lv.breach.open_case(operator, "Fichier sur un forum", lv.now().isoformat())
    lv.breach.triage(operator, cid, [path])
    old = os.umask(0o022)                            # the usual umask
    try:
        out = lv.breach.notify(operator, cid, tmp_path / "out", DPO)
    finally:
        os.umask(old)
    assert out["letters"] >= 1
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"art34-publipostage.csv", "cnil-art33-initial.pdf",
                                       "cnil-art33-initial.json"}
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in files}
    assert set(modes.values()) == {0o600}, modes
    for d in (tmp_path / "out", tmp_path / "out" / "lettres"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


def _identity_csv(path: Path, patients: list[tuple[str, str, dict[str, object]]],
                  notes: bool) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter=";")
        w.writerow(["nom", "prenom", "date_naissance", "nir"] + (["notes"] if notes else []))
        for _, _, p in patients:
            w.writerow([p["birth_name"], p["first_names"][0], p["birth_date"], p["nir"]]  # type: ignore[index]
                       + (["Patient VIH+ sous traitement antirétroviral"] if notes else []))
    return path


def test_notify_covers_every_triage_of_the_case(lv: Labvault, operator: Actor, store: Store,
                                                tmp_path: Path) -> None:
    """QA (DPO, breach): a second file of the same leak, triaged days later in the same
    case, made the CNIL notification count only the last file's persons — the first file's
    patients (with their HIV notes) were neither counted nor written to."""
    first = _identity_csv(tmp_path / "a.csv", store.patients[:8], notes=True)
    second = _identity_csv(tmp_path / "b.csv", store.patients[8:12], notes=False)
    cid = lv.breach.open_case(operator, "Fichier sur un forum", lv.now().isoformat())
    lv.breach.triage(operator, cid, [first])
    lv.breach.triage(operator, cid, [second])
    lv.breach.triage(operator, cid, [first])             # the same file again: counted once
    out = lv.breach.notify(operator, cid, tmp_path / "out", DPO)
    n = json.loads(Path(out["cnil_json"]).read_text())
    assert n["persons_approx"] == 12 and n["records_approx"] == 12
    assert sum(c["persons"] for c in n["controllers"]) == 12
    assert "clinical_note" in {c["meaning"] for c in n["data_categories"]}
    assert n["subjects_informed"]["required"] and out["letters"] == 12
    assert "12 personnes et 12 enregistrements" in n["severity"]["rationale"]


def test_honeytokens_are_attributed_not_counted_nor_written_to(lv: Labvault, operator: Actor,
                                                               store: Store,
                                                               tmp_path: Path) -> None:
    """QA (DPO, breach): a honeytoken in the leak was counted as a person concerned (CNIL
    notification, severity) and got an Art. 34 letter, as if it were a patient."""
    t = store.tenants[0]
    canary = lv.guard.plant(operator, t, 1)[0]
    shown = lv.patients.show(operator, canary)
    leaked = [*[p for p in store.patients if p[0] == t][:5], (t, canary, shown)]
    path = _identity_csv(tmp_path / "d.csv", leaked, notes=True)
    cid = lv.breach.open_case(operator, "Fichier sur un forum", lv.now().isoformat())
    res = lv.breach.triage(operator, cid, [path])
    assert [(a["tenant_id"], a["patient_id"]) for a in res["attribution"]
            if a["kind"] == "honeytoken"] == [(t, canary)]
    assert res["per_tenant"][t]["patients"] == 5 and res["severity"]["persons"] == 5
    assert [m["honeytoken"] for m in res["matches"] if m["patient_id"] == canary] == [True]
    scope = [a for a in res["attribution"] if a["kind"] == "tenant_scope"]
    assert [s["patients"] for s in scope] == [5]
    out = lv.breach.notify(operator, cid, tmp_path / "out", DPO)
    assert json.loads(Path(out["cnil_json"]).read_text())["persons_approx"] == 5
    assert out["letters"] == 5
    assert not (tmp_path / "out" / "lettres" / f"{canary}.pdf").exists()
    with open(out["mail_merge_csv"], encoding="utf-8-sig") as fh:
        assert canary not in fh.read()


def test_notices_are_dated_in_paris_time_and_in_french() -> None:
    """QA (DPO, breach): the letters and notices printed UTC dates — a leak learnt at
    00:30 in Paris was 'learnt' the day before, a letter drafted at 00:30 was dated the
    day before; the ARS report said 'notification initial'."""
    from datetime import UTC, datetime
    case = {"case_id": "brc_1", "title": "Fichier", "aware_at": "2026-11-28T23:30:00+00:00",
            "deadline_at": "2026-12-01T23:30:00+00:00"}
    lab = {"name": "Laboratoire", "finess": "590000001"}
    letter = notices.letter(case=case, lab=lab, patient={"sex": "F", "birth_name": "Martin"},
                            meanings={"nir"}, measures=[], dpo=DPO,
                            today=datetime(2026, 11, 29, 23, 30, tzinfo=UTC))
    assert letter["aware_date"] == "29/11/2026" and letter["date"] == "30/11/2026"
    sev = assess({"nir", "last_name", "birth_date"}, 3, 3)
    cnil = notices.cnil_notification(
        case=case, kind="initial", labs=[lab], meanings={"nir"}, persons=3, records=3,
        severity=sev, dpo=DPO, measures_taken=[], measures_proposed=[],
        notified_at=datetime(2026, 11, 29, 8, 0, tzinfo=UTC), origin="o", delay_reasons=None)
    html = notices.render_html("cnil.html", n=cnil)
    assert "29/11/2026 à 00:30 (heure de Paris)" in html and "T23:30" not in html
    for kind, word in (("initial", "initiale"), ("complementary", "complémentaire")):
        ars = notices.ars_report(case=case, labs=[lab], meanings={"nir"}, persons=3, dpo=DPO,
                                 measures_taken=[], origin="o", cnil_kind=kind)
        assert ars["cnil_notification"].startswith(f"notification {word} ")
        assert "29/11/2026 à 00:30" in notices.render_html("ars.html", r=ars)


def test_severity_of_a_file_of_strangers_says_so() -> None:
    """QA (DPO, breach): a clear file in which no patient was found was assessed as
    'seules des valeurs chiffrées (inintelligibles)… Art. 34(3)(a)'."""
    nobody = assess(set(), 0, 0)
    assert not nobody["art34_3a"]["unintelligible"] and not nobody["notify_subjects"]
    assert "chiffrées" not in nobody["rationale"] and "34(3)(a)" not in nobody["rationale"]
    assert "Aucun patient de la plateforme" in nobody["rationale"]
    assert nobody["level"] == "low"
    sealed = assess(set(), 0, 0, sealed_columns=2)        # a stolen database: ciphertext
    assert sealed["art34_3a"]["unintelligible"] and "34(3)(a)" in sealed["rationale"]


def test_each_letter_lists_the_data_of_its_patients_file(lv: Labvault, operator: Actor,
                                                         store: Store, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """QA (DPO, breach): every letter listed what any file of the case exposed — a patient
    found in a names-only file was told their NIR and HIV notes had leaked."""
    seen: dict[str, set[str]] = {}
    real = notices.letter

    def spy(**kw: object) -> dict[str, object]:
        seen[kw["patient"]["id"]] = set(kw["meanings"])  # type: ignore[index, call-overload]
        return real(**kw)  # type: ignore[arg-type]

    monkeypatch.setattr(notices, "letter", spy)
    with_notes = _identity_csv(tmp_path / "a.csv", store.patients[:4], notes=True)
    names_only = tmp_path / "b.csv"
    with names_only.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["nom", "prenom", "date_naissance"])
        for _, _, p in store.patients[4:8]:
            w.writerow([p["birth_name"], p["first_names"][0], p["birth_date"]])
    cid = lv.breach.open_case(operator, "Fichier sur un forum", lv.now().isoformat())
    lv.breach.triage(operator, cid, [with_notes, names_only])
    out = lv.breach.notify(operator, cid, tmp_path / "out", DPO)
    assert out["letters"] == 8
    for _, pid, _ in store.patients[:4]:
        assert {"nir", "clinical_note"} <= seen[pid]
    for _, pid, _ in store.patients[4:8]:
        assert seen[pid] == {"last_name", "first_name", "birth_date"}, seen[pid]


def test_show_prints_what_each_step_found(lv: Labvault, operator: Actor, store: Store,
                                          tmp_path: Path) -> None:
    """QA (DPO, breach): `breach show` printed the triage line of the timeline empty."""
    from labvault.cli.breach import event_text
    path = _identity_csv(tmp_path / "a.csv", store.patients[:4], notes=True)
    cid = lv.breach.open_case(operator, "Fichier sur un forum", lv.now().isoformat())
    lv.breach.triage(operator, cid, [path])
    lines = {e["kind"]: event_text(e) for e in lv.breach.show(operator, cid)["timeline"]}
    assert lines["triage"] == "4 rows, 4 matched: 4 patients in 1 lab(s)"
    assert lines["severity"].startswith("very high (5.0), 4 persons")
    assert lines["evidence"].startswith("a.csv (") and "SHA-256" in lines["evidence"]
    assert lines["note"] == "case opened"


def test_a_letter_claims_no_measure_that_was_not_recorded() -> None:
    """QA (DPO, breach): with no measure recorded, every letter told the patient 'nous avons
    … demandé le retrait du fichier' — a step nobody had taken."""
    from datetime import UTC, datetime
    case = {"case_id": "brc_1", "aware_at": "2026-11-28T10:00:00+00:00"}
    lab = {"name": "Laboratoire", "finess": "590000001"}
    kw = {"case": case, "lab": lab, "patient": {"sex": "M"}, "meanings": {"email"},
          "dpo": DPO, "today": datetime(2026, 11, 29, 10, tzinfo=UTC)}
    bare = notices.letter(measures=[], **kw)  # type: ignore[arg-type]
    assert bare["measures"] == ["nous avons notifié l'incident à la CNIL"]
    done = notices.letter(measures=["serveur de migration isolé"], **kw)  # type: ignore[arg-type]
    assert done["measures"] == ["serveur de migration isolé"]
