"""Concurrent writers of one resource (R4 http.html#concurrency), with two workers of
``labvault serve`` on one database -- two ``Labvault`` instances, each with its own engine
(connections, and on SQLite its own in-process write lock), as two processes have.

``If-Match`` is only worth something if the version it names is still the resource's when
the update is written: the check and the write are one step. A pause holds the first
writer between its check and its write (or, for a console re-entry, between its read of
the order and its write) while the second one runs: exactly one of them wins, and the
other gets a 412 with nothing stored -- never two 200s of which the first is silently
overwritten (a lost update)."""

from __future__ import annotations

import json
import random
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from labvault.access.policy import TablePolicy
from labvault.crypto import KeyRing
from labvault.crypto.providers.file import FileKeyProvider
from labvault.domain.actors import Actor
from labvault.errors import UserError
from labvault.interop.fhir import ids, versions
from labvault.services.app import Labvault
from labvault.store.engine import make_engine
from labvault.synthetic import make_finess
from tests.conftest import PG_URL, make_settings, private_schema, schema_engine
from tests.fhir.conftest import Running, serving
from tests.fhir.test_fhir_http import AUTH, HDR, create_patient, visit
from tests.fhir.test_fhir_rest import outcome

WAIT = 30          # seconds: a bound on every wait, never reached when things go right
OVERLAP = 1.0      # how long the second writer is given to run while the first is held


@pytest.fixture(scope="module")
def pg_schema() -> Iterator[str]:
    """A schema of its own: these tests commit (two connections must see each other's
    writes), unlike the other PostgreSQL tests, which roll back one connection."""
    with private_schema("lvc") as schema:
        schema_engine(schema).dispose()
        yield schema


@pytest.fixture
def workers(backend: str, request: pytest.FixtureRequest, tmp_path: Path,
            root_key_file: Path, sqlite_template: Path) -> Iterator[tuple[Running, Running]]:
    """Two servers (two workers), each over its own ``Labvault`` and engine, one database;
    the same biologist's token on both."""
    if backend == "sqlite":
        db = tmp_path / "var" / "labvault.db"
        db.parent.mkdir(parents=True)
        shutil.copy(sqlite_template, db)
        url = f"sqlite:///{db}"

        def engine() -> Engine:
            return make_engine(url)
    else:
        schema = request.getfixturevalue("pg_schema")
        url = PG_URL

        def engine() -> Engine:
            return schema_engine(schema, migrated=False)
    settings = make_settings(tmp_path / "var", url, root_key_file)
    cores = [Labvault(settings, engine(), KeyRing(FileKeyProvider(root_key_file)))
             for _ in range(2)]
    for core in cores:
        core.gate.policy = TablePolicy()
    tid = cores[0].tenants.add(Actor.operator(), "Laboratoire de test",
                               make_finess(random.Random())).tenant_id
    staff = Actor(kind="staff", id="acc_test", tenant_id=tid, roles=frozenset({"biologist"}),
                  display="Test Biologist", client="127.0.0.1")
    try:
        with serving(cores[0], staff) as a, serving(cores[1], staff) as b:
            yield a, b
    finally:
        for core in cores:
            core.close()


class Hold:
    """Holds the first call of a function (before or after it runs) until released; other
    calls pass. ``reached`` is set when the first one is held."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.release = threading.Event()
        self._taken = threading.Lock()

    def _first(self) -> bool:
        return self._taken.acquire(blocking=False)

    def _hold(self) -> None:
        self.reached.set()
        assert self.release.wait(WAIT), "never released"

    def after(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def held(*args: Any, **kwargs: Any) -> Any:
            out = fn(*args, **kwargs)
            if self._first():
                self._hold()
            return out
        return held

    def before(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def held(*args: Any, **kwargs: Any) -> Any:
            if self._first():
                self._hold()
            return fn(*args, **kwargs)
        return held


def in_thread(results: dict[str, Any], name: str, fn: Callable[[], Any]) -> threading.Thread:
    def run() -> None:
        try:
            results[name] = fn()
        except BaseException as exc:      # looked at by the test
            results[name] = exc
    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    return t


def race(hold: Any, first: Callable[[], Any], second: Callable[[], Any]) -> tuple[Any, Any]:
    """``first`` runs until ``hold`` stops it; ``second`` is then given ``OVERLAP`` to run
    (only a lock makes it wait for the first); the first is released. Their answers, or
    the exceptions they raised (looked at by the test)."""
    results: dict[str, Any] = {}
    one = in_thread(results, "first", first)
    assert hold.reached.wait(WAIT)
    two = in_thread(results, "second", second)
    two.join(OVERLAP)         # free to run now: only a lock makes it wait for the first
    hold.release.set()
    one.join(WAIT)
    two.join(WAIT)
    return results["first"], results["second"]


def put(srv: Running, body: dict[str, Any], if_match: str) -> httpx.Response:
    return httpx.put(f"{srv.url}/{body['resourceType']}/{body['id']}", timeout=WAIT,
                     headers={**HDR, "If-Match": if_match}, content=json.dumps(body))


def put_in_transaction(srv: Running, body: dict[str, Any], if_match: str) -> httpx.Response:
    url = f"{body['resourceType']}/{body['id']}"
    return httpx.post(srv.url, timeout=WAIT, headers=HDR, content=json.dumps({
        "resourceType": "Bundle", "type": "transaction", "entry": [{
            "resource": body, "request": {"method": "PUT", "url": url, "ifMatch": if_match}}]}))


def read(srv: Running, path: str) -> tuple[dict[str, Any], str]:
    r = httpx.get(f"{srv.url}/{path}", headers=AUTH, timeout=WAIT)
    assert r.status_code == 200, r.text
    return dict(r.json()), r.headers["etag"]


@pytest.mark.parametrize("second", [put, put_in_transaction])
def test_two_updates_with_the_same_if_match_one_wins_the_other_is_412(
        workers: tuple[Running, Running], monkeypatch: pytest.MonkeyPatch,
        second: Callable[[Running, dict[str, Any], str], httpx.Response]) -> None:
    """Two clients read the same Patient and update it with its ETag, through two workers.
    The first is held between its If-Match check and its write while the second runs: the
    second must wait for the first's transaction, then see the new version (412), instead of
    passing the check on the same old version and being overwritten by the first."""
    a, b = workers
    pat = create_patient(a, 91)
    _body, tag = read(a, f"Patient/{pat['id']}")

    def moved(line: str) -> dict[str, Any]:
        return {**pat, "address": [{"line": [line], "postalCode": "59000", "city": "Lille",
                                    "country": "FR"}]}
    hold = Hold()
    monkeypatch.setattr(versions, "check", hold.after(versions.check))
    won, lost = race(hold, lambda: put(a, moved("1 rue du Nord"), tag),
                     lambda: second(b, moved("2 rue du Sud"), tag))
    assert isinstance(won, httpx.Response) and isinstance(lost, httpx.Response), (won, lost)
    assert (won.status_code, lost.status_code) == (200, 412), (won.text, lost.text)
    (issue,) = outcome(lost)["issue"]
    assert issue["code"] == "conflict" and "changed since it was read" in issue["diagnostics"]
    # nothing of the second is stored: the record is the first's, at the first's version
    for srv in (a, b):
        body, now = read(srv, f"Patient/{pat['id']}")
        assert body["address"][0]["line"] == ["1 rue du Nord"]
        assert now == won.headers["etag"]


def preliminary_report(a: Running, b: Running, seed: int
                       ) -> tuple[dict[str, Any], str, str, Any]:
    """A visit posted to ``a`` with its report left preliminary: the report as read (and its
    ETag), its order's id, and one of its results as ``b``'s service reads it."""
    v = visit(a, seed, final=False)
    (entry,) = httpx.get(f"{a.url}/DiagnosticReport", headers=AUTH, timeout=WAIT,
                         params={"patient": f"Patient/{v['Patient']}"}).json()["entry"]
    rep, tag = read(a, f"DiagnosticReport/{entry['resource']['id']}")
    order_id = ids.from_fhir(v["ServiceRequest"], "ord") or ""
    obs = b.lv.lab.get_observation(b.actor, ids.from_fhir(v["Observation"], "obs") or "")
    return rep, tag, order_id, obs


def test_a_result_re_entered_meanwhile_makes_the_validation_412(
        workers: tuple[Running, Running], monkeypatch: pytest.MonkeyPatch) -> None:
    """A biologist's client validates a report (``final``, with the If-Match of its read)
    while a technician re-enters one of its results at the console of another worker. The
    re-entry holds the order (read, not yet written) when the validation arrives: the
    validation waits, then sees the new revision and is refused -- the report is never
    validated over a value the biologist did not see."""
    a, b = workers
    rep, tag, order_id, obs = preliminary_report(a, b, 92)
    lab = b.lv.lab
    hold = Hold()
    monkeypatch.setattr(lab, "_store_results", hold.before(lab._store_results))
    final = {**rep, "status": "final", "conclusion": "Bilan normal."}
    entered, validation = race(hold, lambda: lab.enter_results(b.actor, order_id, [{
        "code": obs.observation.code, "value": (obs.observation.numeric or 0) + 1,
        "unit": obs.observation.unit}]), lambda: put(a, final, tag))
    assert not isinstance(entered, BaseException), entered
    assert isinstance(validation, httpx.Response), validation
    assert validation.status_code == 412, validation.text
    assert outcome(validation)["issue"][0]["code"] == "conflict"
    assert entered[0].revision == obs.revision + 1
    assert lab.get_order(b.actor, order_id).status.value == "preliminary"
    now, new_tag = read(a, f"DiagnosticReport/{rep['id']}")
    assert now["status"] == "preliminary" and new_tag != tag
    # read again (the new value seen): the validation goes through
    assert put(a, {**now, "status": "final", "conclusion": "Bilan normal."},
               new_tag).status_code == 200


def test_a_console_write_waits_for_a_validation_that_checked_first(
        workers: tuple[Running, Running], monkeypatch: pytest.MonkeyPatch) -> None:
    """The other way round: the validation has checked its If-Match and holds the order;
    the console's re-entry waits for it, then finds the report validated and is refused
    (a workflow conflict: validated results are corrected by amendment) -- the validated
    value stays the one the biologist saw."""
    a, b = workers
    rep, tag, order_id, obs = preliminary_report(a, b, 93)
    lab = b.lv.lab
    hold = Hold()
    monkeypatch.setattr(versions, "check", hold.after(versions.check))
    final = {**rep, "status": "final", "conclusion": "Bilan normal."}
    validation, entered = race(hold, lambda: put(a, final, tag), lambda: lab.enter_results(
        b.actor, order_id, [{"code": obs.observation.code,
                             "value": (obs.observation.numeric or 0) + 1,
                             "unit": obs.observation.unit}]))
    assert isinstance(validation, httpx.Response) and validation.status_code == 200, \
        validation
    assert isinstance(entered, UserError), entered
    after = lab.get_observation(b.actor, obs.observation_id)
    assert (after.revision, after.observation.numeric) == (obs.revision,
                                                          obs.observation.numeric)
    assert after.status == "final"
    assert read(a, f"DiagnosticReport/{rep['id']}")[1] == validation.headers["etag"]


def test_two_amendments_at_once_are_one_after_the_other(
        workers: tuple[Running, Running], monkeypatch: pytest.MonkeyPatch) -> None:
    """Without If-Match either: two biologists correct the same published result at once,
    through two workers. The second waits for the first (the order is locked before the
    result is read) and corrects the value the first stored: two revisions, each keeping
    the value before it -- not two "revision 2" of which one silently replaced the other."""
    a, b = workers
    v = visit(a, 94)                             # validated (final)
    order_id = ids.from_fhir(v["ServiceRequest"], "ord") or ""
    a.lv.lab.publish(a.actor, order_id)
    oid = ids.from_fhir(v["Observation"], "obs") or ""
    before = a.lv.lab.get_observation(a.actor, oid)
    value = before.observation.numeric or 0
    hold = Hold()
    monkeypatch.setattr(a.lv.lab, "_catalogue", hold.before(a.lv.lab._catalogue))

    def amend(srv: Running, new: float, why: str) -> Any:
        return srv.lv.lab.amend(srv.actor, oid, {"code": before.observation.code,
                                                 "value": new,
                                                 "unit": before.observation.unit}, why)
    results = race(hold, lambda: amend(a, value + 1, "erreur de saisie"),
                   lambda: amend(b, value + 2, "second contrôle"))
    assert not any(isinstance(r, BaseException) for r in results), results
    history = b.lv.lab.observation_history(b.actor, oid)
    amended = [(h.revision, h.previous.numeric if h.previous else None,
                h.new.numeric if h.new else None) for h in history if h.change == "amended"]
    assert amended == [(before.revision + 1, value, value + 1),
                       (before.revision + 2, value + 1, value + 2)], amended
    assert b.lv.lab.get_observation(b.actor, oid).observation.numeric == value + 2


@pytest.mark.parametrize("how", ["header", "bundle", "practitioner"])
def test_the_same_new_patient_sent_twice_at_once_is_registered_once(
        workers: tuple[Running, Running], monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """A prescriber's system sends its conditional create again (a timeout, a second DPI)
    while the first is being stored, through another worker: both find no match; the first
    is held between its identifier check and its insert while the second runs. The second
    must wait for the first's write (the identifier is locked from its check to the
    commit), then find the NIR taken, and its match, run again, finds the first's
    patient: one patient, never two records of one person, and both answers name it."""
    from labvault.interop.fhir.samples import visit_bundle
    from labvault.store import repositories as repo
    from labvault.store import repositories_fhir as prepo
    from labvault.synthetic import people
    from tests.fhir.conftest import fhir_patient

    a, b = workers
    p = next(people(1, seed=97))
    condition = f"identifier={ids.NIR_SYSTEM}|{p['nir']}"

    rpps = p["prescriber"]["rpps"]
    if how == "practitioner":
        condition = f"identifier={ids.RPPS_SYSTEM}|{rpps}"

    def send(srv: Running, n: int) -> httpx.Response:
        if how == "practitioner":
            return httpx.post(f"{srv.url}/Practitioner", timeout=WAIT, content=json.dumps({
                "resourceType": "Practitioner", "name": [{"text": "Dr Anne Martin"}],
                "identifier": [{"system": ids.RPPS_SYSTEM, "value": rpps}]}),
                headers={**HDR, "If-None-Exist": condition})
        if how == "header":
            return httpx.post(f"{srv.url}/Patient", timeout=WAIT, content=json.dumps(
                fhir_patient(p)), headers={**HDR, "If-None-Exist": condition})
        bundle = visit_bundle(p, n)
        bundle["entry"][0]["request"]["ifNoneExist"] = condition
        return httpx.post(srv.url, timeout=WAIT, headers=HDR, content=json.dumps(bundle))

    hold = Hold()
    if how == "practitioner":
        monkeypatch.setattr(prepo, "insert_practitioner",
                            hold.before(prepo.insert_practitioner))
    else:
        monkeypatch.setattr(repo, "insert_patients", hold.before(repo.insert_patients))
    won, lost = race(hold, lambda: send(a, 970), lambda: send(b, 971))
    assert isinstance(won, httpx.Response) and isinstance(lost, httpx.Response), (won, lost)
    assert (won.status_code, lost.status_code) == ((200, 200) if how == "bundle"
                                                   else (201, 200)), (won.text, lost.text)

    def patient(r: httpx.Response) -> tuple[str, str]:
        if how != "bundle":
            return r.headers["location"].rsplit("/", 1)[1], "201" if r.status_code == 201 \
                else "200"
        e = r.json()["entry"][0]["response"]
        return e["location"].split("/")[1], e["status"][:3]
    assert patient(won)[1] == "201" and patient(lost) == (patient(won)[0], "200")
    rtype, system, value = (("Practitioner", ids.RPPS_SYSTEM, rpps) if how == "practitioner"
                            else ("Patient", ids.NIR_SYSTEM, p["nir"]))
    found = httpx.get(f"{b.url}/{rtype}", headers=AUTH, timeout=WAIT,
                      params={"identifier": f"{system}|{value}"}).json()
    assert found["total"] == 1
