"""``labvault demo breach``: the incident of DESIGN §1, re-enacted on synthetic data.

1. a migration contractor asks for every category of every patient of a laboratory —
   refused by the gate's access policy;
2. an approved, narrower export is produced through the gate (audited) — and leaks:
   the file is copied, re-typed and padded with other people's rows, as on a forum;
3. the leaked file is triaged (keyed digests and Bloom filters only), attributed
   (the audit trail shows which account read exactly those patients), scored (ENISA)
   and the CNIL, ARS/CERT Santé and patient notices are written.

The demo does not yet go through the guard's export service (allow-list, watermark, age
encryption): the leak is simulated from a file produced through the gate, and the demo
says so when it runs.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labvault.breach import synthdump as sd
from labvault.domain.actors import Actor
from labvault.domain.categories import PATIENT_CATEGORIES, Action, Category
from labvault.domain.patient import PatientRecord
from labvault.errors import AccessDenied
from labvault.services.app import Labvault
from labvault.services.breach import dpo_from_env
from labvault.services.demo import refuse_real_laboratories, seed_demo
from labvault.services.gate import Access

Say = Callable[[str, str, "dict[str, Any] | None"], None]


def run_demo(lv: Labvault, out: Path, say: Say, export_size: int = 60,
             strangers: int = 25) -> dict[str, Any]:
    operator = Actor.operator()
    refuse_real_laboratories(lv)    # it reads, exports and "leaks" the first lab's patients
    if not lv.tenants.list():
        seed_demo(lv, 3, 300)
    labs = lv.tenants.list()
    say("0.", f"{len(labs)} synthetic laboratories, "
              f"{sum(t['patients'] for t in labs)} patients (Faker fr_FR).", None)
    backfilled = lv.breach.backfill(Actor.system("breach-backfill"))
    lab = labs[0]
    with lv.begin() as conn:
        ids = [r for r in _patient_ids(conn, lab["id"])]
    # 1. over-wide request
    contractor = Actor(kind="staff", id="acct_migration_contractor", tenant_id=lab["id"],
                       roles=frozenset({"it"}), display="prestataire migration")
    try:
        with lv.begin() as conn:
            lv.gate.read_patients(conn, Access(contractor, Action.EXPORT, lab["id"],
                                               frozenset(PATIENT_CATEGORIES), purpose="export",
                                               patient_ids=tuple(ids), resource="export",
                                               reason="migration vers le nouveau logiciel"))
        refused = False
    except AccessDenied:
        refused = True
    say("1.", f"over-wide export (all categories, all {len(ids)} patients of {lab['name']}) "
              f"requested by a migration contractor: {'REFUSED' if refused else 'allowed?!'} "
              "by the gate's access policy (this demo does not go through the guard's export "
              "allow-list yet).", {"refused": refused})
    # 2. approved, narrower export through the gate — then it leaks
    rng = random.Random(7)  # noqa: S311 - picks demo patients, not a secret
    chosen = rng.sample(ids, min(export_size, len(ids)))
    with lv.begin() as conn:
        opened = lv.gate.read_patients(conn, Access(
            operator, Action.READ, lab["id"],
            frozenset({Category.IDENTITY, Category.CONTACT, Category.COVERAGE,
                       Category.CLINICAL}), purpose="export", patient_ids=tuple(chosen),
            resource="export", reason="export de migration approuvé"))
    out.mkdir(parents=True, exist_ok=True)
    records = [(lab["id"], pid, PatientRecord.from_categories(cats))
               for pid, cats in opened.items()]
    dump = sd.make_dump(records, strangers, seed=11)
    leaked = out / "fichier-divulgue.csv"
    sd.write_csv(leaked, dump.rows, delimiter=";", encoding="cp1252")
    say("2.", f"approved export of {len(records)} patients produced through the gate (audited), "
              f"then leaked: {leaked.name} with {len(dump.rows)} rows (typos, reformatted "
              f"dates and phones, {strangers} other people), cp1252, ';' — simulated leak: this demo "
              "does not produce it through the guard's watermarked export yet.", {"file": str(leaked)})
    # 3. triage
    case = lv.breach.open_case(operator, "Fichier de patients diffusé sur un forum",
                               lv.now().isoformat(), "un journaliste signale un fichier de "
                               "patients en vente sur un forum")
    res = lv.breach.triage(operator, case, [leaked])
    exact = sum(1 for m in res["matches"] if m["method"] == "exact")
    truth_ok = sum(1 for m in res["matches"]
                   if dump.truth[m["row"] - 1].patient_id == m["patient_id"])
    say("3.", f"case {case}: triage of {res['rows']} rows without unsealing the store: "
              f"{exact} exact + {len(res['matches']) - exact} fuzzy matches "
              f"({truth_ok} correct against the demo's ground truth), "
              f"{res['unmatched_rows']} rows matched nobody.",
        {"case": case, "matches": len(res["matches"])})
    cols = ", ".join(f"{c['header']}={c['detected']}" for c in res["columns"])
    say("   ", f"columns detected: {cols}", None)
    for a in res["attribution"]:
        if a["kind"] == "reader":
            say("4.", f"attribution: account {a['account']} read {a['overlap']} of the matched "
                      f"patients (coverage {a['coverage']}, precision {a['precision']}).", a)
        elif a["kind"] == "tenant_scope":
            say("4.", f"attribution: laboratory {a['tenant_id']}, {a['patients']} patients, "
                      f"records from {a['records_created_from']} to "
                      f"{a['records_updated_to']}.", a)
    s = res["severity"]
    say("5.", f"severity (ENISA): {s['score']} — {s['level']}. {s['rationale']}", None)
    lv.breach.record(operator, case, "measure", "export révoqué, serveur de migration isolé, "
                                                "mots de passe du portail réinitialisés")
    dpo = dpo_from_env()
    dpo = {"name": dpo["name"] or "Délégué à la protection des données (démo)",
           "email": dpo["email"] or "dpo@example.org", "phone": dpo["phone"] or "+33 3 20 00 00 00"}
    notes = lv.breach.notify(operator, case, out / "notices", dpo)
    say("6.", f"notices written to {notes['out']}: CNIL Art. 33 ({notes['type']}, JSON + PDF), "
              f"ARS/CERT Santé report, " + (f"{notes['letters']} Art. 34 letters + mail-merge CSV"
                                            if notes.get("letters") else
                                            "reasoned Art. 34 exemption") + ".", notes)
    return {"case": case, "backfilled": backfilled, "triage": res, "notices": notes}


def _patient_ids(conn: Any, tenant_id: str) -> list[str]:
    from sqlalchemy import select

    from labvault.store.schema import patients
    return list(conn.execute(select(patients.c.patient_id).where(
        patients.c.tenant_id == tenant_id, patients.c.status == "active")).scalars())
