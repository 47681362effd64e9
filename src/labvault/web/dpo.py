"""The DPO's pages on the console (docs/web.md, "The DPO's pages").

The data protection officer investigates from the console what the CLI operator could
only answer before: who accessed a patient's record ("Journal d'un patient", the same
call as ``labvault audit access``), what one account did ("Activité d'un utilisateur",
``labvault audit report``, this laboratory's chain only) and whether the laboratory's
audit chain is intact ("Intégrité du journal", ``labvault audit verify --tenant``, run
from the console only on a chain short enough to walk within a request). Offered to the
roles the policy lets read the laboratory's ``audit`` resource (``may_audit``); each read
is a gate decision, so the DPO reading the log is itself logged. Ids (random, not
personal) travel in the query; dates are days in Paris time.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from labvault.api.deps import LV
from labvault.errors import AccessDenied, NotFound
from labvault.services.audit import audit_of
from labvault.web.render import ROLE_FR, WebRoute, day_start, html
from labvault.web.routes import Csrf, User, WebUser, _check_csrf, _staff

router = APIRouter(route_class=WebRoute, include_in_schema=False)

PATIENT_LOG = "/console/journal-patient"
USER_ACTIVITY = "/console/activite-utilisateur"
INTEGRITY = "/console/integrite-journal"
# rows one page shows (newest first); more: the page says so and asks for a shorter period
SHOWN = 500
# entries the console walks to verify the chain in a request (one MAC and one hash each,
# well under a few seconds); a longer chain is the CLI operator's `audit verify`
VERIFY_MAX = 200_000

Id = Annotated[str, Query(max_length=64)]
Day = Annotated[str, Query(max_length=10)]

OUTCOME_FR = {"allowed": "autorisé", "success": "fait", "denied": "refusé",
              "failure": "échec", "error": "erreur"}
RESOURCE_FR = {"patient": "dossier", "order": "demande", "specimen": "prélèvement",
               "observation": "résultat", "report": "compte rendu", "audit": "journal d'audit",
               "alert": "alertes", "clinical-alert": "alertes cliniques", "user": "comptes",
               "tenant": "laboratoire", "export": "exports", "breach": "violations de données",
               "import-issue": "messages d'automate", "delivery": "transmissions",
               "patient-merge": "fusion de dossiers", "hl7-message": "messages HL7",
               "canary": "dossiers témoins", "catalogue": "catalogue", "keys": "clés",
               "security": "sécurité"}
# verify's problem kinds (audit.chain.Problem, docs/audit.md), as the page says them
PROBLEM_FR = {
    "mac-mismatch": "une entrée a été modifiée, insérée ou déplacée",
    "missing": "une entrée a été supprimée",
    "unexpected-sequence": "une entrée a été renumérotée",
    "foreign-chain": "une entrée d'un autre journal y a été recopiée",
    "malformed": "une entrée est illisible",
    "truncated": "des entrées ont disparu (fin du journal tronquée, ou restauration d'une "
                 "sauvegarde pas encore reconnue)",
    "root-mismatch": "l'historique ne correspond plus à un point de contrôle signé (réécrit)",
    "beyond-head": "une entrée a été ajoutée hors de labvault",
    "head-mismatch": "l'état du journal ne correspond pas à ses entrées",
    "checkpoint-history": "un point de contrôle signé manque ou est en double",
    "no-key": "la clé du journal est indisponible",
}


def _auditor(user: WebUser) -> str:
    tenant_id = _staff(user)
    if not user.may_audit:
        raise AccessDenied("le journal d'audit est réservé au délégué à la protection des "
                           "données du laboratoire", "adressez-vous à lui")
    return tenant_id


def _day(value: str) -> date | None:
    """A day typed in a date field (YYYY-MM-DD; empty: none). ValueError: not a date."""
    return date.fromisoformat(value.strip()) if value.strip() else None


def _period(depuis: str, jusqua: str) -> tuple[datetime | None, datetime | None,
                                                dict[str, str]]:
    """From the start of ``depuis`` to the end of ``jusqua`` (Paris days), or the refusals
    of the fields that are not days, said next to them."""
    errors: dict[str, str] = {}
    days: dict[str, date | None] = {}
    for name, value in (("depuis", depuis), ("jusqua", jusqua)):
        try:
            days[name] = _day(value)
        except ValueError:
            errors[name] = "ce n'est pas une date : choisissez un jour (JJ/MM/AAAA)"
    start, end = days.get("depuis"), days.get("jusqua")
    if start and end and end < start:
        errors["jusqua"] = "la fin de la période est avant son début : corrigez l'une des dates"
    if errors:
        return None, None, errors
    return (day_start(start) if start else None,
            day_start(end + timedelta(days=1)) if end else None, {})


def roles_fr(roles: list[str]) -> str:
    return ", ".join(ROLE_FR.get(r, r) for r in roles)


# == "Journal d'un patient" ===================================================================
@router.get(PATIENT_LOG)
def patient_log(user: User, lv: LV, patient: Id = "", depuis: Day = "", jusqua: Day = "",
                refus: Annotated[str, Query(max_length=8)] = "") -> Response:
    """Who accessed one record of the laboratory (``labvault audit access --patient``):
    each access newest first -- when, the account, its roles and laboratory, what, which
    categories, for what purpose; refused attempts when ``refus`` is ticked. A record the
    laboratory does not hold (absent, or another laboratory's): the same refusal next to
    the field (the miss recorded)."""
    tenant_id = _auditor(user)
    typed = {"patient": patient.strip(), "depuis": depuis, "jusqua": jusqua, "refus": refus}
    since, until, errors = _period(depuis, jusqua)
    asked = any((typed["patient"], depuis, jusqua, refus))
    if asked and not typed["patient"]:
        errors["patient"] = "l'identifiant du patient manque : donnez-le (il commence par pt_)"
    if errors or not asked:
        return html("dpo_patient_log.html", 422 if errors else 200, user=user, typed=typed,
                    errors=errors, rows=None)
    try:
        rows = audit_of(lv).access_log(user.actor, typed["patient"], bool(refus), since,
                                       until)
    except NotFound:
        errors["patient"] = ("aucun dossier de votre laboratoire ne porte cet identifiant : "
                             "vérifiez-le (il commence par pt_)")
        return html("dpo_patient_log.html", 422, user=user, typed=typed, errors=errors,
                    rows=None)
    rows.reverse()                                                  # newest first
    return html("dpo_patient_log.html", user=user, typed=typed, errors={}, rows=rows[:SHOWN],
                total=len(rows), shown=SHOWN, tenant_id=tenant_id, outcome=OUTCOME_FR,
                resource=RESOURCE_FR, roles_fr=roles_fr)


# == "Activité d'un utilisateur" ==============================================================
@router.get(USER_ACTIVITY)
def user_activity(user: User, lv: LV, compte: Id = "", depuis: Day = "",
                  jusqua: Day = "") -> Response:
    """One account's activity in the laboratory's chain (``labvault audit report --user``,
    this laboratory only): the counts, then every entry newest first, refusals included.
    An id that is no account of the laboratory and has no entry there: the refusal next to
    the field, what was typed kept."""
    tenant_id = _auditor(user)
    typed = {"compte": compte.strip(), "depuis": depuis, "jusqua": jusqua}
    since, until, errors = _period(depuis, jusqua)
    asked = any((typed["compte"], depuis, jusqua))
    if asked and not typed["compte"]:
        errors["compte"] = "l'identifiant du compte manque : donnez-le (il commence par acct_)"
    if errors or not asked:
        return html("dpo_user_activity.html", 422 if errors else 200, user=user, typed=typed,
                    errors=errors, report=None)
    try:
        report = audit_of(lv).user_report(user.actor, typed["compte"], since, until,
                                          tenant_id=tenant_id)
    except NotFound:
        errors["compte"] = ("aucun compte de votre laboratoire ne porte cet identifiant, et le "
                            "journal n'a rien de lui : vérifiez-le (il commence par acct_)")
        return html("dpo_user_activity.html", 422, user=user, typed=typed, errors=errors,
                    report=None)
    items = report["items"][::-1]                                   # newest first
    counts = sorted(((*k.split(":", 1), n) for k, n in report["by_action"].items()),
                    key=lambda c: (-c[2], c[0]))
    return html("dpo_user_activity.html", user=user, typed=typed, errors={}, report=report,
                items=items[:SHOWN], shown=SHOWN, counts=counts, outcome=OUTCOME_FR,
                resource=RESOURCE_FR, roles_fr=roles_fr)


# == "Intégrité du journal" ===================================================================
@router.get(INTEGRITY)
def integrity(user: User, lv: LV) -> Response:
    """The laboratory's chain: its size and latest signed checkpoint (cheap: no entry
    read), and "Vérifier maintenant" when the chain is short enough (``VERIFY_MAX``)."""
    tenant_id = _auditor(user)
    chain = audit_of(lv).chain_status(user.actor, tenant_id)
    return html("dpo_integrity.html", user=user, chain=chain, result=None,
                too_long=chain["entries"] > VERIFY_MAX, limit=VERIFY_MAX,
                problem_fr=PROBLEM_FR)


@router.post(INTEGRITY)
def verify_chain(request: Request, user: User, lv: LV, csrf: Csrf = "") -> Response:
    """"Vérifier maintenant": ``labvault audit verify --tenant`` for the laboratory's chain
    (every entry's MAC, the signed checkpoints' roots), refused without walking when the
    chain is longer than ``VERIFY_MAX`` entries (the page says to ask the operator)."""
    tenant_id = _auditor(user)
    _check_csrf(request, user, csrf)
    svc = audit_of(lv)
    result = svc.verify_own(user.actor, tenant_id, VERIFY_MAX)
    chain = svc.chain_status(user.actor, tenant_id)
    return html("dpo_integrity.html", user=user, chain=chain, result=result,
                too_long=result is None, limit=VERIFY_MAX, problem_fr=PROBLEM_FR)
