"""A demo laboratory's morning: orders at every step of the workflow, results from an
analyser (HL7 v2, as the MLLP listener stores them) and the import-issues queue, so that
each page of the console and the patient's portal shows something (README, "A tour").

Synthetic only: the laboratory's own demo patients, a stranger whose NIR no laboratory
registers, and the demo accounts' names. Seeded once per laboratory (a laboratory that
already has orders is left as it is: ``labvault demo`` stays idempotent).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from labvault.domain import lab as L
from labvault.domain.actors import SEEDING_CLIENT, Actor
from labvault.synthetic import make_nir

if TYPE_CHECKING:
    from labvault.services.app import Labvault

PRESCRIBER = {"name": "Dr Hélène Lefèvre", "rpps": "10003456786"}   # a valid RPPS key
REQUEST = {"tests": ["718-7", "2823-3"], "priority": "routine", "prescriber": PRESCRIBER}
NORMAL = [{"code": "718-7", "value": 13.1, "unit": "g/dL"},
          {"code": "2823-3", "value": "4.2", "unit": "mmol/L"}]
HIGH_K = [{"code": "718-7", "value": 12.4, "unit": "g/dL"},
          {"code": "2823-3", "value": "6.9", "unit": "mmol/L"}]     # beyond the panic limit
# the portal's patient's potassium this morning, 1.4 mmol/L above the published 4.2: the
# delta check holds it in the biologist's worklist ("écart avec l'antériorité")
DELTA_K = [{"code": "718-7", "value": 13.0, "unit": "g/dL"},
           {"code": "2823-3", "value": "5.6", "unit": "mmol/L"}]
STRANGER = make_nir("M", date(1961, 7, 3), "33063", 118)           # registered nowhere


def _staff(account: Mapping[str, Any], tenant_id: str) -> Actor:
    """A demo account as the seeding acts in its name: the workflow records it (who
    entered, validated, published), while the guard knows no person acted
    (``SEEDING_CLIENT``): a first run at night or on a Sunday raises no "accès hors des
    heures d'ouverture" that nobody caused. The same account logged in afterwards is a
    person, watched as any other."""
    return Actor(kind="staff", id=str(account["id"]), tenant_id=tenant_id,
                 roles=frozenset({str(account["role"])}), display=str(account["role"]),
                 client=SEEDING_CLIENT)


def _hl7(control: str, pid: str, *obx: str) -> bytes:
    return "\r".join([f"MSH|^~\\&|ANALYZER|LABO|LABVAULT|LABO|20260301083000||ORU^R01|"
                      f"{control}|P|2.5", pid,
                      f"OBR|1|P{control}||58410-2^NFS^LN|||20260301080000", *obx, ""]).encode()


def _pid(p: Mapping[str, Any]) -> str:
    return (f"PID|1||{p['nir']}^^^^NH||{p['birth_name']}^{p['first_names'][0]}||"
            f"{str(p['birth_date']).replace('-', '')}|{p['sex']}")


# an analyser's message stored as the MLLP listener stores it: (laboratory, raw HL7) ->
# the ingest outcome (``order_ids``, ``issue_ids``); the door that seeds passes it
Analyser = Callable[[str, bytes], Any]


def seed_lab_day(lv: Labvault, tenant_id: str, accounts: Sequence[Mapping[str, Any]],
                 patient_ids: Sequence[str], records: Sequence[Mapping[str, Any]],
                 analyser: Analyser) -> dict[str, int]:
    """Orders of the laboratory's first demo patients at each step (published — the
    portal account's patient —, validated by the bench — one of them the portal's
    patient's again, a potassium the delta check holds —, results entered with a critical
    potassium, tube received, awaiting its tube), an analyser's results, and two messages
    the analyser sent that wait for a person (a patient unknown here, a local code the
    catalogue does not know). Nothing when the laboratory already has orders, or has
    fewer than 7 patients, or its demo accounts existed before this run."""
    ids = {str(a["role"]): a for a in accounts if a.get("id")}
    if (len(patient_ids) < 7 or not {"technician", "biologist", "reception"} <= set(ids)
            or lv.lab.list_orders(Actor.operator(), tenant_id, limit=1)):
        return {"orders": 0, "import_issues": 0}
    bio, tech = _staff(ids["biologist"], tenant_id), _staff(ids["technician"], tenant_id)
    desk = _staff(ids["reception"], tenant_id)
    now = lv.now()
    orders = 0

    def order(pid: str, tube: bool = True, minutes: int = 90) -> str:
        nonlocal orders
        number = L.new_accession_number(now.date())
        spec = {"type": "BLD", "collected_at": (now - timedelta(minutes=minutes)).isoformat(),
                "accession_number": number} if tube else None
        view = lv.lab.create_order(desk, tenant_id, pid,
                                   {**REQUEST, "filler_number": number} if tube else REQUEST,
                                   spec)
        orders += 1
        return view.order_id

    published = order(patient_ids[0], minutes=300)          # the portal's patient
    lv.lab.enter_results(tech, published, NORMAL)
    lv.lab.validate_technical(tech, published)
    lv.lab.validate_biological(bio, published, "Bilan sans particularité.")
    lv.lab.publish(bio, published)
    technical = order(patient_ids[1], minutes=200)          # the biologist's worklist
    lv.lab.enter_results(tech, technical, NORMAL)
    lv.lab.validate_technical(tech, technical)
    again = order(patient_ids[0], minutes=60)               # held by the delta check
    lv.lab.enter_results(tech, again, DELTA_K)
    lv.lab.validate_technical(tech, again)
    lv.lab.enter_results(tech, order(patient_ids[2]), HIGH_K)   # bench; a critical value
    order(patient_ids[3], minutes=20)                       # tube received, no result yet
    order(patient_ids[4], tube=False)                       # awaits its tube
    tag = tenant_id[-6:].upper()
    p5, p6 = records[5], records[6]
    stored = analyser(tenant_id, _hl7(f"DEMO{tag}1", _pid(p5),
                                   "OBX|1|NM|718-7^Hb^LN||14.2|g/dL|||||F",
                                   "OBX|2|NM|777-3^Plaquettes^LN||250|10*9/L|||||F"))
    orders += len(stored.order_ids)
    stranger = f"PID|1||{STRANGER}^^^^NH~MRN77^^^^PI||BARRAULT^Denis||19610703|M"
    unknown_patient = analyser(tenant_id, _hl7(f"DEMO{tag}2", stranger,
                                            "OBX|1|NM|2823-3^K^LN||4.4|mmol/L|||||F"))
    unknown_code = analyser(tenant_id, _hl7(f"DEMO{tag}3", _pid(p6),
                                         "OBX|1|NM|GLUX^Glucose^L||1.05|g/L|||||F"))
    orders += len(unknown_code.order_ids)
    return {"orders": orders,
            "import_issues": len(unknown_patient.issue_ids) + len(unknown_code.issue_ids)}
