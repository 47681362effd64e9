"""Staff download a published report's PDF to send it to the prescriber (labvault sends
nothing to prescribers: docs/lab.md, "What reaches the prescriber"). The console's route
reads through the gate like any read: the roles the policy lets read reports, audited
(purpose care, resource report), another laboratory's report answering like an absent one,
an unpublished report refused."""

from __future__ import annotations

import shutil
import subprocess
from html import unescape

from fastapi.testclient import TestClient

from labvault.web.pdf import FROM_CONSOLE, FROM_PORTAL, report_html
from tests.access.conftest import World
from tests.web.helpers import REQ, csrf_in, logged_in_as, order, staff_accesses, text_of

DOWNLOAD = "Télécharger le compte rendu (PDF)"





def test_biologist_and_technician_download_the_published_report(web: World,
                                                                 browser: TestClient) -> None:
    """The patient page links each published report to its PDF; the PDF is the document
    the patient's portal prints (same page, only its footer says where it was produced)."""
    a = web.a
    rep = order(web, a, a.patients[0])
    waiting = order(web, a, a.patients[0], step="final")
    href = f"/console/rapports/{rep.report_id}.pdf"
    for role in ("biologist", "technician"):
        staff = logged_in_as(web, browser, role)
        page = staff.get(f"/console/patients/{a.patients[0]}").text
        assert f'href="{href}"' in page and DOWNLOAD in unescape(page)
        assert f"/console/rapports/{waiting.report_id}.pdf" not in page   # not published
        pdf = staff.get(href)
        assert pdf.status_code == 200, pdf.text
        assert pdf.content.startswith(b"%PDF")
        assert pdf.headers["content-type"] == "application/pdf"
        assert pdf.headers["cache-control"] == "no-store"
        assert (pdf.headers["content-disposition"]
                == f'attachment; filename="compte-rendu-{rep.report_id}.pdf"')
    # the same page as the portal's, said as produced from the console
    patient = logged_in_as(web, browser, "patient")
    mine = patient.app.state.portal  # type: ignore[attr-defined]
    me = web.lv.accounts.resolve(patient.cookies["labvault_session"])
    report, record = mine.my_report(me, rep.report_id), mine.my_record(me)
    lab = web.lv.tenants.get(a.tenant_id)
    portal = report_html(report, record, lab.name, lab.finess, mine.my_specimens(me, report))
    console = report_html(report, record, lab.name, lab.finess, report.specimens, FROM_CONSOLE)
    assert console == portal.replace(FROM_PORTAL, FROM_CONSOLE) and console != portal
    if shutil.which("pdftotext") is not None:
        text = " ".join(subprocess.run(
            ["pdftotext", "-", "-"], input=logged_in_as(web, browser, "biologist").get(href).content,
            capture_output=True, check=True).stdout.decode().split())
        for said in (f"FINESS {lab.finess}", a.patient_data[0]["birth_name"].upper(),
                     f"Prescripteur : {REQ['prescriber']['name']}",
                     "Prélèvement (sang total) du 01/03/2026 à 08:30", FROM_CONSOLE):
            assert said in text, said


def test_an_amended_report_is_downloaded_with_its_correction(web: World,
                                                             browser: TestClient) -> None:
    a = web.a
    rep = order(web, a, a.patients[0])
    bio = web.actor(a.emails["biologist"])
    obs = next(o for o in rep.observations if o.observation.code == "718-7")
    web.lv.lab.amend(bio, obs.observation_id, {"code": "718-7", "value": 12.0, "unit": "g/dL"},
                     "erreur de saisie")
    assert web.lv.lab.get_report(bio, rep.report_id).order_status.value == "amended"
    staff = logged_in_as(web, browser, "biologist")
    assert f"/console/rapports/{rep.report_id}.pdf" in staff.get(
        f"/console/patients/{a.patients[0]}").text
    pdf = staff.get(f"/console/rapports/{rep.report_id}.pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")


def test_roles_that_do_not_read_reports_are_refused(web: World, browser: TestClient) -> None:
    """Reception, lab administrators and the DPO do not read reports (policy: no ``report``
    row for them outside break-glass): refused by the gate, the refusal audited; patients
    and platform accounts are refused the console."""
    a = web.a
    rep = order(web, a, a.patients[0])
    href = f"/console/rapports/{rep.report_id}.pdf"
    for role in ("reception", "lab_admin", "dpo"):
        before = len(staff_accesses(web, a.patients[0]))
        r = logged_in_as(web, browser, role).get(href)
        assert r.status_code == 403 and not r.content.startswith(b"%PDF"), role
        new = staff_accesses(web, a.patients[0])[before:]
        assert [(e["resource"], e["outcome"], e["role"]) for e in new] == [
            ("report", "denied", [role])], role
        # and the patient page shows them no download link
        if role == "reception":
            assert href not in logged_in_as(web, browser, role).get(
                f"/console/patients/{a.patients[0]}").text
    assert logged_in_as(web, browser, "patient").get(href).status_code == 403


def test_every_download_is_audited_as_a_care_read_of_the_report(web: World,
                                                                browser: TestClient) -> None:
    a = web.a
    rep = order(web, a, a.patients[0])
    staff = logged_in_as(web, browser, "biologist")
    before = len(staff_accesses(web, a.patients[0]))
    assert staff.get(f"/console/rapports/{rep.report_id}.pdf").status_code == 200
    new = staff_accesses(web, a.patients[0])[before:]
    reads = [e for e in new if e["resource"] == "report"]
    assert len(reads) == 1
    assert reads[0]["action"] == "read" and reads[0]["purpose"] == "care"
    assert reads[0]["outcome"] == "allowed" and reads[0]["role"] == ["biologist"]
    # the patient's identity printed on it: an identity read, nothing more
    ident = [e for e in new if e["resource"] == "patient"]
    assert [e["categories"] for e in ident] == [["identity"]]
    assert {e["resource"] for e in new} == {"report", "patient"}


def test_another_laboratory_s_report_answers_like_an_absent_one(web: World,
                                                                browser: TestClient) -> None:
    b = web.b
    theirs = order(web, b, b.patients[0]).report_id
    nowhere = theirs[:-6] + "000000"
    for role in ("biologist", "technician", "reception"):
        staff = logged_in_as(web, browser, role)
        other = staff.get(f"/console/rapports/{theirs}.pdf")
        absent = staff.get(f"/console/rapports/{nowhere}.pdf")
        assert other.status_code == absent.status_code == 404, role
        assert other.text == absent.text
        assert "n'existe pas dans votre laboratoire" in text_of(other.text)


def test_an_unpublished_report_does_not_leave_the_laboratory(web: World,
                                                             browser: TestClient) -> None:
    """Validated but not published, or not validated at all: refused with a French message
    saying why and what to do; nothing is opened (no read in the audit log)."""
    a = web.a
    final = order(web, a, a.patients[0], step="final")
    technical = web.lv.lab.get_report_by_order(
        web.actor(a.emails["biologist"]),
        order(web, a, a.patients[0], step="technical").order_id)
    assert technical.order_status.value == "technically-validated"
    staff = logged_in_as(web, browser, "biologist")
    for report_id in (final.report_id, technical.report_id):
        before = len(staff_accesses(web, a.patients[0]))
        r = staff.get(f"/console/rapports/{report_id}.pdf")
        assert r.status_code == 409 and not r.content.startswith(b"%PDF")
        said = text_of(r.text)
        assert "ce compte rendu n'est pas encore diffusé" in said
        assert "il ne doit pas quitter le laboratoire" in said and "Validation biologique" in said
        assert "not published" not in said
        assert staff_accesses(web, a.patients[0])[before:] == []


def test_diffuser_says_to_download_the_report_for_the_prescriber(web: World,
                                                                 browser: TestClient) -> None:
    """"Diffuser" and "Valider et diffuser" tell the lab to send the report itself: now with
    the link to its PDF."""
    a = web.a
    first = order(web, a, a.patients[0], step="final")
    second = order(web, a, a.patients[0], step="technical")
    staff = logged_in_as(web, browser, "biologist")
    token = csrf_in(staff.get("/console").text)
    done = [(first, staff.post(f"/console/diffusion/{first.order_id}", data={"csrf": token})),
            (second, staff.post(f"/console/validation/{second.order_id}",
                                data={"csrf": token, "diffuser": "1"}))]
    bio = web.actor(a.emails["biologist"])
    for o, r in done:
        rep = web.lv.lab.get_report_by_order(bio, o.order_id)
        assert rep.order_status.value == "published"
        said = text_of(r.text)
        assert r.status_code == 200 and "ne l'envoie pas au prescripteur" in said
        assert f"téléchargez-le (« {DOWNLOAD} »)" in said
        href = f"/console/rapports/{rep.report_id}.pdf"
        assert f'href="{href}"' in r.text
        assert staff.get(href).status_code == 200
