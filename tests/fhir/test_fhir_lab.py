"""Lab resources through the FHIR door: a whole visit as one transaction Bundle, read
back and searched with fhirpy; an invalid result makes the whole visit fail."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fhirpy.base.exceptions import OperationOutcome

from labvault.interop.fhir import ids
from labvault.interop.fhir.samples import BLOOD_COUNT, visit_bundle
from labvault.store import repositories as repo
from labvault.store import repositories_lab as lrepo
from labvault.synthetic import people
from tests.fhir.conftest import TOKEN, Running, validate_r4b
from tests.fhir.test_fhir_rest import outcome

HDR = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/fhir+json"}


def post(srv: Running, bundle: dict[str, Any]) -> httpx.Response:
    return httpx.post(srv.url, headers=HDR, content=json.dumps(bundle))


def counts(srv: Running) -> tuple[int, int]:
    with srv.lv.begin() as conn:
        t = srv.actor.tenant_id
        assert t is not None
        return repo.count_patients(conn, t), len(lrepo.orders(conn, t, limit=10_000))


def test_visit_bundle_round_trip(server: Running) -> None:
    p = next(people(1, seed=21))
    r = post(server, visit_bundle(p, 1))
    assert r.status_code == 200, r.text
    resp = r.json()
    validate_r4b(resp)
    locs = [e["response"]["location"].split("/_history")[0] for e in resp["entry"]]
    assert [loc.split("/")[0] for loc in locs] == (
        ["Patient", "ServiceRequest", "Specimen"] + ["Observation"] * 5 + ["DiagnosticReport"])
    client = server.client()
    got = {loc: client.get(loc.split("/")[0], loc.split("/")[1]) for loc in locs}
    for res in got.values():
        validate_r4b(json.loads(json.dumps(res)))
    pid = locs[0].split("/")[1]
    sr = got[locs[1]]
    assert sr["subject"]["reference"] == f"Patient/{pid}"
    assert [c["code"] for c in sr["code"]["coding"]] == [c for c, *_ in BLOOD_COUNT]
    assert sr["requester"]["identifier"]["value"] == p["prescriber"]["rpps"]
    assert sr["status"] == "completed"
    spec = got[locs[2]]
    assert spec["request"][0]["reference"] == locs[1]
    assert spec["type"]["coding"][0]["code"] == "BLD"
    obs = [got[loc] for loc in locs[3:8]]
    assert all(o["status"] == "final" for o in obs)
    sent = [e["resource"]["valueQuantity"]["value"] for e in visit_bundle(p, 1)["entry"][3:8]]
    assert [o["valueQuantity"]["value"] for o in obs] == sent
    assert all(o["interpretation"][0]["coding"][0]["code"] in ("N", "L", "H") for o in obs)
    rep = got[locs[8]]
    assert rep["status"] == "final"
    assert rep["conclusion"] == "Numération sans particularité."
    assert sorted(x["reference"] for x in rep["result"]) == sorted(locs[3:8])

    # searches
    found = client.resources("Observation").search(patient=f"Patient/{pid}").fetch()
    assert sorted(f"Observation/{o['id']}" for o in found) == sorted(locs[3:8])
    hb = client.resources("Observation").search(patient=pid, code=f"{ids.LOINC_SYSTEM}|718-7"
                                                ).fetch()
    assert [o["code"]["coding"][0]["code"] for o in hb] == ["718-7"]
    assert client.resources("Observation").search(patient=pid, status="preliminary").fetch() == []
    assert len(client.resources("Observation").search(patient=pid, status="final")
               .limit(2).fetch_all()) == 5
    assert client.resources("Observation").search(patient=pid, date="lt2000-01-01").fetch() == []
    assert len(client.resources("Observation").search(patient=pid, date="ge2000-01-01")
               .fetch()) == 5
    reps = client.resources("DiagnosticReport").search(patient=pid, status="final").fetch()
    assert [f"DiagnosticReport/{x['id']}" for x in reps] == [locs[8]]
    assert client.resources("DiagnosticReport").search(patient=pid, code="2345-7").fetch() == []
    assert len(client.resources("DiagnosticReport").search(patient=pid, code="718-7")
               .fetch()) == 1
    srs = client.resources("ServiceRequest").search(patient=pid).fetch()
    assert [f"ServiceRequest/{x['id']}" for x in srs] == [locs[1]]
    specs = client.resources("Specimen").search(patient=pid).fetch()
    assert [f"Specimen/{x['id']}" for x in specs] == [locs[2]]


def test_stepwise_lab_workflow_through_rest(server: Running) -> None:
    """Create one by one, then validate with a DiagnosticReport update."""
    client = server.client()
    p = next(people(1, seed=22))
    b = visit_bundle(p, 2)["entry"]
    pat = client.resource("Patient", **b[0]["resource"])
    pat.save()
    sr_body = dict(b[1]["resource"], subject={"reference": f"Patient/{pat['id']}"})
    sr = client.resource("ServiceRequest", **sr_body)
    sr.save()
    assert sr["status"] == "active"
    spec = client.resource("Specimen", **dict(b[2]["resource"],
                                              request=[{"reference": f"ServiceRequest/{sr['id']}"}],
                                              subject={"reference": f"Patient/{pat['id']}"}))
    spec.save()
    obs = client.resource("Observation", **dict(
        b[3]["resource"], subject={"reference": f"Patient/{pat['id']}"},
        basedOn=[{"reference": f"ServiceRequest/{sr['id']}"}]))
    obs.save()
    assert obs["status"] == "preliminary"
    # re-enter the value before validation
    obs["valueQuantity"] = {**obs["valueQuantity"], "value": 7.1}
    obs.save()
    assert obs["valueQuantity"]["value"] == 7.1
    assert obs["interpretation"][0]["coding"][0]["code"] in ("L", "LL")
    reports = client.resources("DiagnosticReport").search(patient=pat["id"]).fetch()
    assert [r["status"] for r in reports] == ["preliminary"]
    rep = reports[0]
    rep["status"] = "final"
    rep["conclusion"] = "Anémie à contrôler."
    rep.save()
    assert rep["status"] == "final" and rep["conclusion"] == "Anémie à contrôler."
    # a final result cannot be sent back as preliminary
    obs2 = client.get("Observation", obs["id"])
    assert obs2["status"] == "final"
    obs2["status"] = "preliminary"
    with pytest.raises(OperationOutcome):
        client.update(obs2)
    # cancelling an order: ServiceRequest status revoked, the reason in an added note
    sr2 = client.resource("ServiceRequest", **sr_body)
    sr2.save()
    sr2["status"] = "revoked"
    with pytest.raises(OperationOutcome, match=r"ServiceRequest\.note"):
        sr2.save()                          # its clinical note alone is no reason
    assert client.get("ServiceRequest", sr2["id"])["status"] == "active"
    sr2["note"] = [*sr2["note"], {"text": "prescription en double"}]
    sr2.save()
    assert client.get("ServiceRequest", sr2["id"])["status"] == "revoked"
    order = server.lv.lab.get_order(server.actor, ids.from_fhir(sr2["id"], "ord") or "")
    assert order.steps["cancelled"].detail["reason"] == "prescription en double"
    assert order.request.clinical_notes == "bilan annuel"


@pytest.mark.parametrize("breakage", ["unknown-test", "wrong-unit", "no-unit", "no-order",
                                      "final-obs", "bad-specimen-type", "foreign-result"])
def test_invalid_lab_entry_stores_nothing(server: Running, breakage: str) -> None:
    p = next(people(1, seed=23))
    bundle = visit_bundle(p, 3)
    e = bundle["entry"]
    if breakage == "unknown-test":          # valid LOINC shape, not in the catalogue
        e[7]["resource"]["code"]["coding"][0]["code"] = "94500-6"
    elif breakage == "wrong-unit":
        e[5]["resource"]["valueQuantity"].update(unit="mg/L", code="mg/L")
    elif breakage == "no-unit":             # never read in the catalogue's unit
        for k in ("unit", "code", "system"):
            del e[5]["resource"]["valueQuantity"][k]
    elif breakage == "no-order":
        e[4]["resource"]["basedOn"] = [{"reference": "ServiceRequest/ord-0000000000000000000000000v"}]
    elif breakage == "final-obs":
        e[6]["resource"]["status"] = "final"
    elif breakage == "foreign-result":     # found only after the validation ran: rolled back
        e[8]["resource"]["result"][0] = {"reference": "Observation/obs-0000000000000000000000000v"}
    else:
        e[2]["resource"]["type"]["coding"][0]["code"] = "XYZ"
    before = counts(server)
    r = post(server, bundle)
    assert r.status_code in (400, 422), r.text
    oo = r.json()
    validate_r4b(oo)
    assert oo["resourceType"] == "OperationOutcome"
    # each issue names the one entry at fault and its element, once (not the entry
    # prefix twice, nor the group's first result)
    assert [i["expression"] for i in oo["issue"]] == [[{
        "unknown-test": "Bundle.entry[7].resource.code",
        "wrong-unit": "Bundle.entry[5].resource.valueQuantity.unit",
        "no-unit": "Bundle.entry[5].resource.valueQuantity.unit",
        "no-order": "Bundle.entry[4].resource.basedOn[0]",
        "final-obs": "Bundle.entry[6].resource.status",
        "foreign-result": "Bundle.entry[8].resource.result[0]",
        "bad-specimen-type": "Bundle.entry[2].resource.type",
    }[breakage]]], oo
    assert counts(server) == before


def test_lab_searches_need_a_patient(server: Running) -> None:
    for rtype in ("Observation", "DiagnosticReport", "ServiceRequest", "Specimen"):
        r = httpx.get(f"{server.url}/{rtype}", headers=HDR)
        assert r.status_code == 400
        assert r.json()["resourceType"] == "OperationOutcome"
    r = httpx.get(f"{server.url}/Observation", headers=HDR,
                  params={"patient": "Patient/pt-0000000000000000000000000v", "date": "2026-13"})
    assert r.status_code == 400


def test_a_dangling_reference_in_the_fourth_result_names_that_entry(server: Running) -> None:
    """Results are created together; the error still points at the one entry at fault."""
    p = next(people(1, seed=23))
    bundle = visit_bundle(p, 1)
    assert bundle["entry"][6]["resource"]["resourceType"] == "Observation"
    bundle["entry"][6]["resource"]["subject"] = {
        "reference": "urn:uuid:00000000-0000-4000-8000-000000000000"}
    before = counts(server)
    r = post(server, bundle)
    assert r.status_code == 422, r.text
    assert [i["expression"] for i in r.json()["issue"]] == [
        ["Bundle.entry[6].resource.subject.reference"]]
    assert counts(server) == before


# The instant the visit below is recorded (results and report): date searches compare
# stored instants with the implicit range of the searched value.
RECORDED = datetime(2026, 11, 29, 5, 19, 30, 250000, tzinfo=UTC)


def recorded_visit(srv: Running, seed: int, effective: bool = False) -> str:
    """A visit (5 results, 1 report) recorded at ``RECORDED``: the patient's FHIR id. Its
    results carry no effectiveDateTime (so they were observed when recorded) and its
    specimen was collected at ``RECORDED`` too, unless ``effective`` (then the sample's
    2026-03-02, for both)."""
    srv.lv.now = lambda: RECORDED  # type: ignore[method-assign]
    bundle = visit_bundle(next(people(1, seed=seed)), seed)
    if not effective:
        for e in bundle["entry"]:
            e["resource"].pop("effectiveDateTime", None)
            if e["resource"]["resourceType"] == "Specimen":
                e["resource"]["collection"]["collectedDateTime"] = RECORDED.isoformat()
    r = post(srv, bundle)
    assert r.status_code == 200, r.text
    return str(r.json()["entry"][0]["response"]["location"].split("/")[1])


def found(srv: Running, rtype: str, pid: str, dates: list[str]) -> int:
    r = httpx.get(f"{srv.url}/{rtype}", headers=HDR,
                  params=[("patient", f"Patient/{pid}"), *(("date", d) for d in dates)])
    assert r.status_code == 200, (dates, r.text)
    validate_r4b(r.json())
    return int(r.json()["total"])


# (date values, whether the visit recorded at 2026-11-29T05:19:30.25Z matches)
DATE_CASES: list[tuple[list[str], bool]] = [
    # a time is compared at its own precision, not read as its whole day
    (["lt2026-11-29T23:00:00Z"], True),
    (["ge2026-11-29T23:00:00Z"], False),
    (["2026-11-29T05:19:30Z"], True),            # that second
    (["2026-11-29T05:19:31Z"], False),
    (["gt2026-11-29T05:19:29Z"], True),
    (["gt2026-11-29T05:19:30Z"], False),         # after the end of that second
    (["le2026-11-29T05:19:30Z"], True),
    (["lt2026-11-29T05:19:30Z"], False),
    (["2026-11-29T05:19:30.25Z"], True),         # that hundredth of a second
    (["lt2026-11-29T05:19:30.250Z"], False),
    (["2026-11-29T05:19:30.251Z"], False),
    # a timezone is converted to UTC
    (["lt2026-11-29T06:19:30+01:00"], False),
    (["le2026-11-29T06:19:30+01:00"], True),
    (["2026-11-29T00:49:30-04:30"], True),
    (["lt2026-11-28T23:30:00-06:00"], True),     # 05:30Z, the next day in UTC
    # a date without time is its UTC day, month or year, as before
    (["2026-11-29"], True), (["2026-11"], True), (["2026"], True), (["2026-11-28"], False),
    (["gt2026-11-28"], True), (["gt2026-11"], False), (["le2026-11-28"], False),
    # repeats are ANDed: the tighter bound wins, in any order
    (["le2020-01-01", "le2030-01-01"], False),
    (["le2030-01-01", "le2020-01-01"], False),
    (["ge2026-01-01", "ge2026-11-29T06:00:00Z"], False),
    (["ge2026-11-29T06:00:00Z", "ge2026-01-01"], False),
    (["ge2026-11-29", "lt2026-11-30"], True),
    (["ge2026-11-29T05:00:00Z", "lt2026-11-29T05:19:00Z"], False),
    (["2026-11-29", "2026-11-28"], False),       # eq twice, two days: nothing
    (["2026-11-28", "2026-11-29"], False),
    (["2026-11-29", "2026-11"], True),
]


@pytest.mark.parametrize("rtype", ["Observation", "DiagnosticReport"])
def test_date_search_compares_instants_and_ands_repeats(server: Running, rtype: str) -> None:
    pid = recorded_visit(server, 24)
    every = 5 if rtype == "Observation" else 1
    wrong = [(dates, hit) for dates, hit in DATE_CASES
             if found(server, rtype, pid, dates) != (every if hit else 0)]
    assert wrong == []


def test_observation_date_is_when_it_was_observed(server: Running) -> None:
    """search parameter observation-date is Observation.effective, not the recording."""
    pid = recorded_visit(server, 26, effective=True)
    assert found(server, "Observation", pid, ["2026-03-02"]) == 5
    assert found(server, "Observation", pid, ["2026-11-29"]) == 0
    assert found(server, "Observation", pid, ["lt2026-03-02T00:00:00Z"]) == 0


def _report_of(srv: Running, bundle: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Post ``bundle``: the patient's FHIR id and the order's DiagnosticReport as read."""
    r = post(srv, bundle)
    assert r.status_code == 200, r.text
    locs = [e["response"]["location"] for e in r.json()["entry"]]
    pid = next(loc for loc in locs if loc.startswith("Patient/")).split("/")[1]
    (rep,) = httpx.get(f"{srv.url}/DiagnosticReport", headers=HDR,
                       params={"patient": f"Patient/{pid}"}).json()["entry"]
    got = httpx.get(f"{srv.url}/DiagnosticReport/{rep['resource']['id']}", headers=HDR).json()
    validate_r4b(got)
    assert got == rep["resource"]                  # searched as read
    return pid, got


def test_report_date_is_when_its_specimen_was_collected(server: Running) -> None:
    """DiagnosticReport.effective[x] is the clinically relevant time of a lab report: when
    its specimen was collected (the earliest of two), here the evening before the order
    was entered -- and `date` (clinical-date) searches that value, not the entry."""
    server.lv.now = lambda: RECORDED  # type: ignore[method-assign]
    bundle = visit_bundle(next(people(1, seed=27)), 27)
    spec = bundle["entry"][2]
    assert spec["resource"]["resourceType"] == "Specimen"
    spec["resource"]["collection"]["collectedDateTime"] = "2026-11-28T18:45:00+01:00"
    later = json.loads(json.dumps(spec))          # a second tube, collected in the morning
    later["fullUrl"] = "urn:uuid:00000000-0000-4000-8000-000000270098"
    later["resource"]["accessionIdentifier"]["value"] += "B"
    later["resource"]["collection"]["collectedDateTime"] = "2026-11-29T04:00:00Z"
    bundle["entry"].insert(3, later)
    pid, rep = _report_of(server, bundle)
    assert datetime.fromisoformat(rep["effectiveDateTime"]) == datetime(
        2026, 11, 28, 17, 45, tzinfo=UTC)
    assert found(server, "DiagnosticReport", pid, ["2026-11-28"]) == 1
    assert found(server, "DiagnosticReport", pid, ["2026-11-29"]) == 0   # the order's day
    assert found(server, "DiagnosticReport", pid, ["lt2026-11-28T17:45:00Z"]) == 0
    assert found(server, "DiagnosticReport", pid, ["le2026-11-28T17:45:00Z"]) == 1


def test_a_report_without_specimen_is_dated_by_its_order(server: Running) -> None:
    """No specimen received yet: effective[x] falls back to when the order was entered."""
    server.lv.now = lambda: RECORDED  # type: ignore[method-assign]
    bundle = visit_bundle(next(people(1, seed=28)), 28)
    bundle["entry"] = bundle["entry"][:2]          # the patient and the order only
    pid, rep = _report_of(server, bundle)
    assert rep["status"] == "registered"
    assert datetime.fromisoformat(rep["effectiveDateTime"]) == RECORDED
    assert found(server, "DiagnosticReport", pid, ["2026-11-29"]) == 1


def test_a_report_is_issued_when_published(server: Running) -> None:
    """DiagnosticReport.issued is when the report was made available (published, the date
    the portal and the PDF give as "émis le"), not its biological validation: a validated
    report not yet published has no issued."""
    server.lv.now = lambda: RECORDED  # type: ignore[method-assign]
    _pid, rep = _report_of(server, visit_bundle(next(people(1, seed=29)), 29))
    assert rep["status"] == "final" and "issued" not in rep
    published = datetime(2026, 11, 29, 11, 2, 3, tzinfo=UTC)
    server.lv.now = lambda: published  # type: ignore[method-assign]
    server.lv.lab.publish(server.actor, ids.from_fhir(
        rep["basedOn"][0]["reference"].split("/")[1], "ord") or "")
    again = httpx.get(f"{server.url}/DiagnosticReport/{rep['id']}", headers=HDR).json()
    assert datetime.fromisoformat(again["issued"]) == published
    assert again["effectiveDateTime"] == rep["effectiveDateTime"]


def test_an_amended_report_is_issued_when_amended(server: Running) -> None:
    """DiagnosticReport.issued is "the date and time that this version of the report was
    made available" (R4): after an amendment (a result corrected after publication,
    available at once) the amendment's time, and after a later one (the conclusion
    rewritten) that one's -- not the first publication's, which the searched and the read
    report alike give up."""
    server.lv.now = lambda: RECORDED  # type: ignore[method-assign]
    pid, rep = _report_of(server, visit_bundle(next(people(1, seed=30)), 30))
    order_id = ids.from_fhir(rep["basedOn"][0]["reference"].split("/")[1], "ord") or ""
    lab = server.lv.lab
    published = datetime(2026, 11, 29, 11, 2, 3, tzinfo=UTC)
    server.lv.now = lambda: published  # type: ignore[method-assign]
    lab.publish(server.actor, order_id)

    def issued() -> datetime:
        read = httpx.get(f"{server.url}/DiagnosticReport/{rep['id']}", headers=HDR).json()
        validate_r4b(read)
        (searched,) = httpx.get(f"{server.url}/DiagnosticReport", headers=HDR, params={
            "patient": f"Patient/{pid}"}).json()["entry"]
        assert searched["resource"] == read
        return datetime.fromisoformat(read["issued"])
    assert issued() == published
    corrected = datetime(2026, 11, 30, 9, 15, 0, tzinfo=UTC)
    server.lv.now = lambda: corrected  # type: ignore[method-assign]
    obs = lab.get_report(server.actor, ids.from_fhir(rep["id"], "rep") or "").observations[0]
    lab.amend(server.actor, obs.observation_id, {
        "code": obs.observation.code, "value": (obs.observation.numeric or 0) + 1,
        "unit": obs.observation.unit}, "erreur de saisie")
    assert issued() == corrected
    revised = datetime(2026, 12, 1, 16, 40, 0, tzinfo=UTC)
    server.lv.now = lambda: revised  # type: ignore[method-assign]
    lab.revise_conclusion(server.actor, order_id, "Bilan revu.", "résultat corrigé")
    assert issued() == revised
    # the portal's and the PDF's "émis le" stays the first publication (the core's own)
    assert lab.get_report(server.actor, ids.from_fhir(rep["id"], "rep") or "").issued_at \
        in (published, published.replace(tzinfo=None))


def test_unreadable_dates_are_refused_naming_the_parameter(server: Running) -> None:
    pid = "pt-0000000000000000000000000v"
    for value in ("2026-11-29T05:19:30",            # a time without timezone: which instant?
                  "2026-11-29T05:19Z", "2026-11-29T25:00:00Z", "2026-02-30",
                  "2026-11-29T05:19:30.1234567Z",    # finer than a stored instant
                  "2026-11-29T05:19:30+01:70", "ne2026-11-29", "ap2026", "2026-11-29,2026-11-30",
                  "yesterday"):
        for rtype in ("Observation", "DiagnosticReport"):
            r = httpx.get(f"{server.url}/{rtype}", headers=HDR,
                          params={"patient": f"Patient/{pid}", "date": value})
            assert r.status_code == 400, (rtype, value, r.text)
            assert r.json()["issue"][0]["expression"] == ["date"], value


def codes_found(srv: Running, rtype: str, pid: str, code: str) -> httpx.Response:
    return httpx.get(f"{srv.url}/{rtype}", headers=HDR,
                     params={"patient": f"Patient/{pid}", "code": code})


def test_code_search_ors_commas_and_honours_the_system(server: Running) -> None:
    pid = recorded_visit(server, 25)
    loinc = ids.LOINC_SYSTEM

    def obs_codes(code: str) -> list[str]:
        r = codes_found(server, "Observation", pid, code)
        assert r.status_code == 200, (code, r.text)
        return sorted(e["resource"]["code"]["coding"][0]["code"] for e in r.json()["entry"])

    def reports(code: str) -> int:
        r = codes_found(server, "DiagnosticReport", pid, code)
        assert r.status_code == 200, (code, r.text)
        return int(r.json()["total"])

    every = sorted(c for c, *_ in BLOOD_COUNT)
    # comma = or, each value with or without its system
    assert obs_codes("718-7,789-8") == ["718-7", "789-8"]
    assert obs_codes(f"{loinc}|718-7,{loinc}|789-8") == ["718-7", "789-8"]
    assert obs_codes(f"718-7,{loinc}|4544-3,2345-7") == ["4544-3", "718-7"]
    assert obs_codes(f"{loinc}|") == every                     # any LOINC code
    assert reports("11502-2,999-9") == 1
    assert reports(f"{loinc}|11502-2") == 1
    assert reports(f"{loinc}|") == 1
    assert reports("2345-7,999-9") == 0
    # another system, or "no system", is refused on both (labvault's codes are all LOINC)
    for rtype in ("Observation", "DiagnosticReport"):
        for bad in ("http://snomed.info/sct|718-7", "718-7,http://snomed.info/sct|789-8",
                    "|718-7", "718-7,", "a|b|c", "|"):
            r = codes_found(server, rtype, pid, bad)
            assert r.status_code == 400, (rtype, bad, r.text)
            assert r.json()["issue"][0]["expression"] == ["code"], (rtype, bad)
def test_a_comparator_that_straddles_the_range_is_indeterminate(server: Running) -> None:
    """"<20" g/dL of haemoglobin may be 13 (normal), 10 (low) or 5 (panic): interpretation IND
    (v3-ObservationInterpretation, valid R4), never N."""
    p = next(people(1, seed=24))
    bundle = visit_bundle(p, 4)
    q = bundle["entry"][3]["resource"]["valueQuantity"]
    assert bundle["entry"][3]["resource"]["code"]["coding"][0]["code"] == "718-7"
    q.update(value=20, comparator="<")
    r = post(server, bundle)
    assert r.status_code == 200, r.text
    loc = r.json()["entry"][3]["response"]["location"].split("/_history")[0]
    obs = httpx.get(f"{server.url}/{loc}", headers=HDR).json()
    validate_r4b(obs)
    assert obs["valueQuantity"]["comparator"] == "<"
    assert obs["interpretation"][0]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
        "code": "IND"}


def test_a_lower_case_litre_is_the_catalogue_unit(server: Running) -> None:
    """UCUM's litre is l or L: g/dl is the catalogue's g/dL (stored so); G/dL is not."""
    p = next(people(1, seed=26))
    bundle = visit_bundle(p, 4)
    bundle["entry"][3]["resource"]["valueQuantity"].update(unit="g/dl", code="g/dl")
    r = post(server, bundle)
    assert r.status_code == 200, r.text
    loc = r.json()["entry"][3]["response"]["location"].split("/_history")[0]
    q = httpx.get(f"{server.url}/{loc}", headers=HDR).json()["valueQuantity"]
    assert (q["unit"], q["code"]) == ("g/dL", "g/dL")
    bundle = visit_bundle(next(people(1, seed=27)), 5)   # its own tube number
    bundle["entry"][3]["resource"]["valueQuantity"].update(unit="G/dL", code="G/dL")
    assert post(server, bundle).status_code == 422


def test_a_quantity_without_its_unit_is_refused_naming_the_unit(server: Running) -> None:
    """POST or PUT of an Observation whose valueQuantity has no unit/code: 422 naming
    Observation.valueQuantity.unit, with the unit expected; nothing stored."""
    client = server.client()
    b = visit_bundle(next(people(1, seed=25)), 5)["entry"]
    pat = client.resource("Patient", **b[0]["resource"])
    pat.save()
    subject = {"reference": f"Patient/{pat['id']}"}
    sr = client.resource("ServiceRequest", **dict(b[1]["resource"], subject=subject))
    sr.save()
    client.resource("Specimen", **dict(b[2]["resource"], subject=subject,
                                       request=[{"reference": f"ServiceRequest/{sr['id']}"}]
                                       )).save()
    body = dict(b[3]["resource"], subject=subject,
                basedOn=[{"reference": f"ServiceRequest/{sr['id']}"}])
    body["valueQuantity"] = {"value": 13.2}
    r = httpx.post(f"{server.url}/Observation", headers=HDR, content=json.dumps(body))
    assert r.status_code == 422, r.text
    validate_r4b(r.json())
    (i,) = r.json()["issue"]
    assert i["expression"] == ["Observation.valueQuantity.unit"]
    assert "g/dL" in i["diagnostics"] and "718-7" in i["diagnostics"]
    assert client.resources("Observation").search(patient=pat["id"]).fetch() == []
    body["valueQuantity"] = {"value": 13.2, "unit": "g/dL", "system": ids.UCUM_SYSTEM,
                             "code": "g/dL"}
    obs = client.resource("Observation", **body)
    obs.save()
    put = dict(obs.serialize(), valueQuantity={"value": 12.0})
    r = httpx.put(f"{server.url}/Observation/{obs['id']}", headers=HDR, content=json.dumps(put))
    assert r.status_code == 422, r.text
    assert r.json()["issue"][0]["expression"] == ["Observation.valueQuantity.unit"]
    assert client.get("Observation", obs["id"])["valueQuantity"]["value"] == 13.2


def test_a_cancelled_diagnostic_report_needs_its_reason(server: Running) -> None:
    """R4 DiagnosticReport has no note: the reason is its conclusion; without it, 422."""
    client = server.client()
    b = visit_bundle(next(people(1, seed=26)), 6)["entry"]
    pat = client.resource("Patient", **b[0]["resource"])
    pat.save()
    sr = client.resource("ServiceRequest", **dict(
        b[1]["resource"], subject={"reference": f"Patient/{pat['id']}"}))
    sr.save()
    (rep,) = client.resources("DiagnosticReport").search(patient=pat["id"]).fetch()
    rep["status"] = "cancelled"
    with pytest.raises(OperationOutcome, match=r"DiagnosticReport\.conclusion"):
        rep.save()
    assert client.get("ServiceRequest", sr["id"])["status"] == "active"
    rep["conclusion"] = "demande annulée par le prescripteur"
    rep.save()
    assert client.get("ServiceRequest", sr["id"])["status"] == "revoked"
    order = server.lv.lab.get_order(server.actor, ids.from_fhir(sr["id"], "ord") or "")
    assert order.steps["cancelled"].detail["reason"] == "demande annulée par le prescripteur"
def _staff_order(server: Running, patient_id: str, step: str) -> tuple[str, list[str], str, str]:
    """An order of ``patient_id`` taken to ``step`` by the server's biologist: its id, its
    results' ids, its report id and its specimen id."""
    lab, bio = server.lv.lab, server.actor
    assert bio.tenant_id is not None
    o = lab.create_order(bio, bio.tenant_id, patient_id, {"tests": ["718-7", "2823-3"]},
                         {"type": "BLD", "collected_at": "2026-03-01T08:30:00+01:00",
                          "accession_number": f"F{next(_ACC)}"})
    views = lab.enter_results(bio, o.order_id, [{"code": "718-7", "value": 13.1, "unit": "g/dL"},
                                                {"code": "2823-3", "value": "5.8", "unit": "mmol/L"}])
    if step in ("final", "published"):
        lab.validate_final(bio, o.order_id)
    if step == "published":
        lab.publish(bio, o.order_id)
    spec = lab.get_order(bio, o.order_id).specimens[0].specimen_id
    return o.order_id, [v.observation_id for v in views], o.report_id, spec


_ACC = iter(range(1, 10_000))


def _get(server: Running, token: str, path: str, **params: str) -> httpx.Response:
    return httpx.get(f"{server.url}/{path}", params=params,
                     headers={"Authorization": f"Bearer {token}"})


def test_a_patient_sees_only_its_published_results_through_fhir(server: Running) -> None:
    """QA finding 7: a patient account reads its orders, specimens, results and reports
    through FHIR only once the report is published (or amended after publication); before,
    a read is the same 404 as an absent id and a search leaves them out -- totals too."""
    from labvault.domain.actors import Actor
    tenant = server.actor.tenant_id
    assert tenant is not None
    pid = server.lv.patients.register(Actor.operator(), tenant, {
        k: v for k, v in next(people(1, seed=31)).items() if v is not None})
    token = server.patient_token(pid)
    published = _staff_order(server, pid, "published")
    for step in ("preliminary", "final"):
        oid, obs, rep, spec = _staff_order(server, pid, step)
        for path, absent in ((f"ServiceRequest/{ids.to_fhir(oid)}", "ord"),
                             (f"Specimen/{ids.to_fhir(spec)}", "spc"),
                             (f"Observation/{ids.to_fhir(obs[0])}", "obs"),
                             (f"DiagnosticReport/{ids.to_fhir(rep)}", "rep")):
            hidden = _get(server, token, path)
            nowhere_id = f"{absent}-{'0' * 25}v"
            nowhere = _get(server, token, f"{path.split('/')[0]}/{nowhere_id}")
            assert hidden.status_code == nowhere.status_code == 404, (step, path)
            assert hidden.text.replace(path.split("/")[1], "X") == nowhere.text.replace(
                nowhere_id, "X"), (step, path)
            assert _get(server, TOKEN, path).status_code == 200      # staff: as before
    ref = f"Patient/{ids.to_fhir(pid)}"
    # per type: how many records an order has, and a status only unpublished ones have
    for rtype, n, draft in (("ServiceRequest", 1, "active"), ("Specimen", 1, None),
                            ("Observation", 2, "preliminary"),
                            ("DiagnosticReport", 1, "preliminary")):
        for params in ({"patient": ref}, *([{"patient": ref, "status": draft}] if draft else [])):
            bundle = _get(server, token, rtype, **params).json()
            want = n if "status" not in params else 0
            assert bundle["total"] == want, (rtype, params, bundle)
            assert len(bundle.get("entry", [])) == want
            if draft:
                assert _get(server, TOKEN, rtype, patient=ref, status=draft).json()["total"]
        staff_total = _get(server, TOKEN, rtype, patient=ref).json()["total"]
        assert staff_total == 3 * n                        # staff still see every order
    seen = {e["resource"]["id"] for e in _get(server, token, "Observation",
                                               patient=ref).json()["entry"]}
    assert seen == {ids.to_fhir(o) for o in published[1]}
    for o in published[1]:
        assert _get(server, token, f"Observation/{ids.to_fhir(o)}").status_code == 200
    assert _get(server, token, f"DiagnosticReport/{ids.to_fhir(published[2])}"
                ).json()["status"] == "final"


def test_an_amendment_without_a_reason_names_observation_note(server: Running) -> None:
    """QA finding 16: a blank note and no note are the same error, on ``Observation.note``
    (not the lab service's ``reason``)."""
    from labvault.domain.actors import Actor
    tenant = server.actor.tenant_id
    assert tenant is not None
    pid = server.lv.patients.register(Actor.operator(), tenant, {
        k: v for k, v in next(people(1, seed=32)).items() if v is not None})
    _oid, obs, _rep, _spec = _staff_order(server, pid, "published")
    path = f"Observation/{ids.to_fhir(obs[1])}"
    current = _get(server, TOKEN, path).json()
    current.pop("note", None)
    answers = []
    for note in (None, [{"text": "   "}], [{"text": "\n\t"}, {"text": " "}]):
        body = {**current, "status": "amended", "valueQuantity": {
            **current["valueQuantity"], "value": 4.4}, **({"note": note} if note else {})}
        r = httpx.put(f"{server.url}/{path}", headers=HDR, content=json.dumps(body))
        answers.append((r.status_code, r.json()))
    assert answers[0][0] in (400, 422)
    assert answers[0] == answers[1] == answers[2], answers
    assert answers[0][1]["issue"][0]["expression"] == ["Observation.note"]


def test_code_text_is_the_french_name_and_coding_display_stays_loinc(server: Running) -> None:
    """People read ``code.text`` (the catalogue's French label); systems read the LOINC
    coding, whose display stays LOINC's own name. A resource read and sent back, text
    included, is accepted unchanged (``code.text`` is not read back)."""
    p = next(people(1, seed=27))
    r = post(server, visit_bundle(p, 1))
    assert r.status_code == 200, r.text
    locs = [e["response"]["location"].split("/_history")[0] for e in r.json()["entry"]]
    client = server.client()
    got = {loc: client.get(loc.split("/")[0], loc.split("/")[1]) for loc in locs}
    for res in got.values():
        validate_r4b(json.loads(json.dumps(res)))
    obs = {o["code"]["coding"][0]["code"]: o["code"] for o in (got[loc] for loc in locs[3:8])}
    assert obs["718-7"] == {"coding": [{"system": ids.LOINC_SYSTEM, "code": "718-7",
                                        "display": "Hemoglobin [Mass/volume] in Blood"}],
                            "text": "Hémoglobine"}
    assert obs["6690-2"]["text"] == "Leucocytes" and obs["789-8"]["text"] == "Hématies"
    sr = got[locs[1]]
    assert sr["code"]["text"] == ("Hémoglobine, Hématies, Leucocytes, Plaquettes, "
                                  "Hématocrite")
    rep = got[locs[8]]
    assert rep["code"]["coding"][0]["display"] == "Laboratory report"
    assert rep["code"]["text"] == "Compte rendu d'analyses de biologie médicale"
    put = httpx.put(f"{server.url}/{locs[1]}", headers=HDR, content=json.dumps(sr))
    assert put.status_code == 200, put.text              # sent back as read, text included
    assert client.get("ServiceRequest", locs[1].split("/")[1])["code"] == sr["code"]


def create_patient_fhir(server: Running, resource: dict[str, Any]) -> str:
    r = httpx.post(f"{server.url}/Patient", headers=HDR, content=json.dumps(resource))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _sr_identifiers(server: Running, sr_id: str) -> dict[str, str]:
    sr = httpx.get(f"{server.url}/ServiceRequest/{sr_id}", headers=HDR).json()
    return {i["system"]: i["value"] for i in sr.get("identifier", [])}


def test_a_specimens_number_becomes_the_orders_filler_number(server: Running) -> None:
    """An order placed without the laboratory's number gets its tube's (Specimen
    accessionIdentifier) as filler number, as the desk's: an analyser's results quoting
    the tube's barcode (OBR-3) find it. The placer's copy of the ServiceRequest, without
    that number, still cancels it."""
    b = visit_bundle(next(people(1, seed=31)), 31)["entry"]
    pid = create_patient_fhir(server, b[0]["resource"])
    sr_body = dict(b[1]["resource"], subject={"reference": f"Patient/{pid}"})
    r = httpx.post(f"{server.url}/ServiceRequest", headers=HDR, content=json.dumps(sr_body))
    assert r.status_code == 201, r.text
    sr_id = r.json()["id"]
    assert ids.FILLER_SYSTEM not in _sr_identifiers(server, sr_id)
    spec = dict(b[2]["resource"], request=[{"reference": f"ServiceRequest/{sr_id}"}],
                subject={"reference": f"Patient/{pid}"})
    r = httpx.post(f"{server.url}/Specimen", headers=HDR, content=json.dumps(spec))
    assert r.status_code == 201, r.text
    tube = b[2]["resource"]["accessionIdentifier"]["value"]
    assert _sr_identifiers(server, sr_id)[ids.FILLER_SYSTEM] == tube
    order = server.lv.lab.get_order(server.actor, ids.from_fhir(sr_id, "ord") or "")
    assert order.request.filler_number == tube and order.request.placer_number
    revoked = dict(sr_body, id=sr_id, status="revoked",
                   note=[*sr_body["note"], {"text": "prescription en double"}])
    r = httpx.put(f"{server.url}/ServiceRequest/{sr_id}", headers=HDR,
                  content=json.dumps(revoked))
    assert r.status_code == 200, r.text


def test_a_filler_number_taken_is_a_409_duplicate(server: Running) -> None:
    """One filler number, one order of the laboratory: a ServiceRequest naming another
    order's, a Specimen whose tube number is another order's (it would become its filler
    number) and a Bundle repeating a visit's tube are refused 409 (issue ``duplicate``,
    naming the element), nothing stored."""
    b = visit_bundle(next(people(1, seed=32)), 32)["entry"]
    pid = create_patient_fhir(server, b[0]["resource"])
    numbered = dict(b[1]["resource"], subject={"reference": f"Patient/{pid}"},
                    identifier=[{"system": ids.FILLER_SYSTEM, "value": "ETQ-9001"}])
    r = httpx.post(f"{server.url}/ServiceRequest", headers=HDR, content=json.dumps(numbered))
    assert r.status_code == 201, r.text
    before = counts(server)
    r = httpx.post(f"{server.url}/ServiceRequest", headers=HDR, content=json.dumps(numbered))
    assert r.status_code == 409
    (issue,) = outcome(r)["issue"]
    assert issue["code"] == "duplicate" and issue["expression"] == ["ServiceRequest.identifier"]
    assert "next label" in issue["diagnostics"]
    assert counts(server) == before
    plain = dict(b[1]["resource"], subject={"reference": f"Patient/{pid}"})
    sr_id = httpx.post(f"{server.url}/ServiceRequest", headers=HDR,
                       content=json.dumps(plain)).json()["id"]
    spec = dict(b[2]["resource"], request=[{"reference": f"ServiceRequest/{sr_id}"}],
                subject={"reference": f"Patient/{pid}"},
                accessionIdentifier={"system": ids.ACCESSION_SYSTEM, "value": "ETQ-9001"})
    r = httpx.post(f"{server.url}/Specimen", headers=HDR, content=json.dumps(spec))
    assert r.status_code == 409
    (issue,) = outcome(r)["issue"]
    assert issue["code"] == "duplicate"
    assert issue["expression"] == ["Specimen.accessionIdentifier"]
    assert httpx.get(f"{server.url}/ServiceRequest/{sr_id}", headers=HDR).json()[
        "status"] == "active"                                     # still waits for its tube
    # a visit Bundle sent again with its tube: the whole transaction refused
    assert post(server, visit_bundle(next(people(1, seed=33)), 33)).status_code == 200
    before = counts(server)
    r = post(server, visit_bundle(next(people(1, seed=34)), 33))
    assert r.status_code == 409
    (issue,) = outcome(r)["issue"]
    assert issue["code"] == "duplicate"
    assert issue["expression"] == ["Bundle.entry[2].resource.accessionIdentifier"]
    assert counts(server) == before
