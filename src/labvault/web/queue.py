"""The import-issues queue on the console: "Messages d'automate" (docs/web.md).

Results an analyser sent that labvault could not store wait, sealed, in the import-issues
queue (docs/hl7.md, "Import issues"). This page lists them through ``lv.lab.messages``
(one gate decision and one audited read for the list), each as the role may see it
(``issue_as_seen``: a technician no identifier, reception no result — the card says what
was withheld), and lets the roles the policy lets write results (technicians,
biologists) work them: find the patient of an unknown-patient issue by the name and birth
date the analyser sent (``lv.patients.find``, the console's search) and "Rattacher à ce
patient", say which catalogue test an unknown code is, or "Classer" an issue with a
reason. The services decide, store (one transaction) and audit; a refusal is said in
French on the issue's card.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request, Response

from labvault.api.deps import LV
from labvault.domain.actors import Actor
from labvault.domain.categories import Action, Category
from labvault.errors import AccessDenied, InvalidField, NotFound, UserError
from labvault.services.lab_messages import WHOLE_MESSAGE_KINDS, IssueRefused
from labvault.web.desk import catalogue_groups, rule_fr
from labvault.web.render import (
    FLAG_FR,
    STATUS_FR,
    WebRoute,
    fr_datetime,
    hl7_date_fr,
    html,
    people,
)
from labvault.web.routes import (
    SEARCH_LIMIT,
    TEXT,
    Csrf,
    Tick,
    User,
    WebUser,
    _check_csrf,
    _staff,
    may,
    may_read_queue,
)

router = APIRouter(route_class=WebRoute, include_in_schema=False)

QUEUE = "/console/messages"
# issues one page lists (newest first); more: the page says so
QUEUE_LIMIT = 100
HANDLED = ("resolved", "discarded")
CLINICAL = frozenset({Category.CLINICAL})
# the service's answer for an issue that is not open in the caller's laboratory
ABSENT = "no open import issue with this id"

# what fixes an issue of each kind, in the console's words (the service's _RESOLVE_HINTS)
TODO_FR: Mapping[str, str] = {
    "unknown-patient": "recherchez le patient par le nom et la date de naissance envoyés, "
                       "puis « Rattacher à ce patient » ; s'il n'est pas encore inscrit, "
                       "inscrivez-le d'abord (« Nouveau patient »).",
    "unknown-code": "choisissez l'analyse du catalogue que désigne chaque code inconnu, "
                    "puis « Enregistrer les résultats ».",
    "invalid-value": "labvault ne convertit ni valeur ni unité : demandez à l'expéditeur un "
                     "résultat corrigé, puis classez ce message.",
    "order-closed": "la demande est déjà validée : un biologiste corrige le résultat depuis "
                    "le dossier du patient (« Corriger un résultat diffusé »), puis classez "
                    "ce message.",
    "reused-control-id": "demandez à l'expéditeur de renvoyer ce message sous un nouveau "
                         "numéro (MSH-10 : le premier message portant ce numéro est "
                         "enregistré), puis classez celui-ci.",
    "identity-mismatch": "vérifiez l'identité envoyée par l'automate avec le dossier que "
                         "désigne son identifiant et, si besoin, avec le préleveur ; puis "
                         "recherchez le patient auquel appartiennent ces résultats et "
                         "« Rattacher à ce patient », ou classez ce message avec un motif.",
    "merge-request": "le référent d'identitovigilance (administrateur du laboratoire) "
                     "vérifie les deux dossiers puis les fusionne (« Fusionner un doublon » : "
                     "la demande est alors close), ou classe la demande avec un motif.",
}
# what the role may not see of an issue (``withheld``), said on its card
WITHHELD_FR: Mapping[str, str] = {
    "patient.identifiers": "identifiants masqués pour votre rôle",
    "patient.record": "une partie de l'identité envoyée est masquée pour votre rôle",
    "results": "résultats non visibles pour votre rôle",
    "reason": "motif détaillé non visible pour votre rôle",
    "message": "message brut (il contient les identifiants) masqué pour votre rôle",
    "resolution.reason": "motif du classement non visible pour votre rôle",
}
SEX_FR = {"F": "féminin", "M": "masculin", "U": "inconnu"}


# == who =======================================================================================
def _reader(user: WebUser, lv: Any) -> str:
    """The caller's laboratory, if the policy opens the queue to its role (or, to the
    identity vigilance referent, its merge requests)."""
    tenant_id = _staff(user)
    if not (may_read_queue(lv, user.actor) or user.may_merge):
        raise AccessDenied("votre fonction ne donne pas accès aux messages d'automate",
                           "l'accueil, les techniciens et les biologistes du laboratoire "
                           "les traitent")
    return tenant_id


def _may_work(lv: Any, actor: Actor) -> bool:
    """Storing or discarding an issue's results is a clinical write (not reception's)."""
    return may(lv, actor, Action.WRITE, "import-issue", CLINICAL)


def _worker(user: WebUser, lv: Any, merge_requests: bool = False) -> str:
    """``merge_requests``: the action applies to a merge request too (a discard), which
    the identity vigilance referent may do (the service decides by the issue's kind)."""
    tenant_id = _staff(user)
    if not (_may_work(lv, user.actor) or (merge_requests and user.may_merge)):
        raise AccessDenied("votre fonction ne permet pas de rattacher ni de classer un "
                           "message d'automate",
                           "un technicien ou un biologiste du laboratoire s'en charge")
    return tenant_id


# == why an issue waits, in French ============================================================
# By the issue's kind (the service's ISSUE_KINDS), with the values its ``params`` carry (the
# codes and units sent...: clinical, like the English ``reason``, so absent where the role
# may not see it); an issue kept before ``params`` were recorded gets its kind's general
# words. The English ``reason`` stays the API's and the CLI's.
Params = Mapping[str, str]
# OBX-3's coding systems that say "the sender's own code" (HL7 table 0396: L, 99zzz)
LOCAL_SYSTEMS = ("LOCAL", "L")


def _unknown_patient_fr(p: Params, issue: Mapping[str, Any]) -> str:
    if p.get("matched") == "several":
        return ("plusieurs patients du laboratoire portent les identifiants envoyés par "
                "l'automate (PID-3) : leurs dossiers sont à fusionner avant de rattacher "
                "ces résultats")
    if p.get("matched") == "none":
        return ("aucun patient du laboratoire ne porte le NIR ni l'identifiant envoyés par "
                "l'automate (PID-3)")
    return "le patient envoyé par l'automate (PID-3) n'a pas été reconnu dans le laboratoire"


# a trait of identity (services/identity.py's words), in French
TRAITS_FR = {"birth_name": "le nom de naissance", "first_name": "le prénom",
             "birth_date": "la date de naissance", "sex": "le sexe"}


def _identity_mismatch_fr(p: Params, issue: Mapping[str, Any]) -> str:
    traits = [TRAITS_FR[t] for t in (p.get("traits") or "").replace(" ", "").split(",")
              if t in TRAITS_FR]
    if not traits:
        return ("l'identifiant envoyé par l'automate (PID-3) désigne un patient du "
                "laboratoire dont l'identité ne concorde pas avec celle envoyée")
    words = traits[0] if len(traits) == 1 else ", ".join(traits[:-1]) + " et " + traits[-1]
    return ("l'identifiant envoyé par l'automate (PID-3) désigne un patient du laboratoire "
            f"dont {words} {'diffère' if len(traits) == 1 else 'diffèrent'} de ce qui a été "
            "envoyé : les résultats n'ont pas été enregistrés dans son dossier")


def _unknown_code_fr(p: Params, issue: Mapping[str, Any]) -> str:
    if p.get("code"):
        system = p.get("system") or "local"
        local = system.upper() in LOCAL_SYSTEMS or system.startswith("99")
        return (f"le code d'analyse « {p['code']} » "
                f"({'code local' if local else 'système ' + system}) envoyé par "
                "l'automate n'est pas dans le catalogue du laboratoire")
    if p.get("codes"):
        return ("aucune analyse de cette demande n'est dans le catalogue du laboratoire "
                f"(codes envoyés : {p['codes']})")
    return "un code d'analyse envoyé par l'automate n'est pas dans le catalogue du laboratoire"


def _invalid_value_fr(p: Params, issue: Mapping[str, Any]) -> str:
    code, field = p.get("code"), p.get("field")
    if not code:
        return "une valeur ou une unité envoyée par l'automate n'a pas pu être interprétée"
    if field == "unit" and p.get("unit"):
        return (f"l'unité envoyée pour {code} (« {p['unit']} », OBX-6) n'est pas celle du "
                f"catalogue ({p.get('expected') or 'aucune'}) : labvault ne convertit pas "
                "les unités")
    if field == "unit":
        return (f"le résultat {code} est envoyé sans unité (OBX-6) ; le catalogue l'exprime "
                f"en {p.get('expected') or 'une unité précise'}")
    if field == "value":
        return (f"la valeur envoyée pour {code} (OBX-5) n'est pas de la forme qu'attend le "
                "catalogue (par exemple du texte ou un intervalle là où un nombre seul est "
                "attendu)")
    return f"le résultat {code} envoyé par l'automate n'a pas pu être interprété"


def _order_closed_fr(p: Params, issue: Mapping[str, Any]) -> str:
    order = issue.get("order") or {}
    number = order.get("filler_number") or order.get("placer_number")
    status = STATUS_FR.get(p.get("status") or "", "validée")
    what = ("le retrait d'un résultat validé (OBX-11 D ou W)" if p.get("retraction")
            else "une correction")
    return (f"la demande{' n° ' + number if number else ''} est déjà {status} : {what} "
            "passe par un biologiste")


def _reused_control_id_fr(p: Params, issue: Mapping[str, Any]) -> str:
    control = issue.get("control_id")
    received = f", reçu le {fr_datetime(p['received'])}" if p.get("received") else ""
    return (f"le numéro de message{' ' + control if control else ''} (MSH-10) désigne déjà "
            f"un autre message de cet expéditeur{received} : celui-ci, au contenu différent, "
            "n'a pas été enregistré")


def _merge_request_fr(p: Params, issue: Mapping[str, Any]) -> str:
    sender = p.get("sender") or issue.get("sender")
    pair = (f" : le dossier {p['duplicate_id']} dans le dossier {p['survivor_id']}"
            if p.get("duplicate_id") and p.get("survivor_id") else "")
    return (f"le serveur d'identités{' ' + sender if sender else ''} a fusionné deux "
            f"identités qui sont deux dossiers du laboratoire{pair} ; labvault ne fusionne "
            "pas de lui-même : l'identitovigilance du laboratoire décide")


REASONS_FR: Mapping[str, Callable[[Params, Mapping[str, Any]], str]] = {
    "unknown-patient": _unknown_patient_fr,
    "unknown-code": _unknown_code_fr,
    "invalid-value": _invalid_value_fr,
    "order-closed": _order_closed_fr,
    "reused-control-id": _reused_control_id_fr,
    "identity-mismatch": _identity_mismatch_fr,
    "merge-request": _merge_request_fr,
}


def reason_fr(issue: Mapping[str, Any]) -> str | None:
    """Why ``issue`` waits, in the console's words; None where its reason is withheld for
    the role (or, for a kind without French words, the service's English reason)."""
    if issue.get("reason") is None:
        return None
    words = REASONS_FR.get(issue["kind"])
    if words is None:
        return str(issue["reason"])
    return words(issue.get("params") or {}, issue)


# == the cards =================================================================================
def split_name(name: str) -> tuple[str, str]:
    """The birth name and first name in an analyser's "NAME Firstname" (PID-5 as sent):
    the leading words in capitals are the name; all in capitals, the last word is the
    first name. Only to fill the search form in, which the user corrects if need be."""
    words = name.split()
    if len(words) < 2:
        return name.strip(), ""
    upper = 0
    while upper < len(words) and words[upper] == words[upper].upper():
        upper += 1
    cut = upper if 0 < upper < len(words) else len(words) - 1
    return " ".join(words[:cut]), " ".join(words[cut:])


def _iso_date(hl7: str) -> str:
    """``19610703`` (PID-7 as sent) as ``1961-07-03``; anything else: empty."""
    return f"{hl7[:4]}-{hl7[4:6]}-{hl7[6:8]}" if re.fullmatch(r"\d{8}", hl7 or "") else ""


def _value(r: Mapping[str, Any]) -> str:
    if r.get("numeric") is not None:
        return people(r["numeric"])
    coded = r.get("coded")
    if coded:
        return str(coded.get("display") or coded.get("code") or "")
    return str(r.get("text") or "")


def card(issue: Mapping[str, Any]) -> dict[str, Any]:
    """One issue as its card shows it (what the service returned for this role only)."""
    panics = {(str(p.get("sent_code")), str(p.get("value")))
              for p in issue.get("panic_values") or ()}
    results = [{"code": r.get("code"), "display": r.get("display") or "",
                "value": _value(r), "unit": r.get("unit") or "",
                "flag": (f"{r['flags']} ({FLAG_FR[r['flags']]})" if r.get("flags") in FLAG_FR
                         else r.get("flags") or ""),
                "panic": (str(r.get("code")), str(r.get("numeric"))) in panics}
               for r in issue.get("results") or ()]
    patient = issue.get("patient") or {}
    summary = patient.get("summary") or {}
    birth_name, first_name = split_name(str(summary.get("name") or ""))
    order = issue.get("order") or {}
    kind = issue["kind"]
    return {
        "id": issue["id"], "kind": kind, "status": issue["status"],
        "created_at": issue["created_at"], "resolved_at": issue.get("resolved_at"),
        "reason": issue.get("reason"), "reason_fr": reason_fr(issue),
        "erased": bool(issue.get("erased")),
        "patient_id": issue.get("patient_id"),
        # identity-mismatch: the record PID-3 names, to open and compare before attaching
        "matched": ((issue.get("params") or {}).get("matched")
                    if kind == "identity-mismatch" and issue.get("status") == "open" else None),
        "name": summary.get("name") or "",
        "birth_date": hl7_date_fr(summary["birth_date"]) if summary.get("birth_date") else "",
        "sex": SEX_FR.get(str(summary.get("sex") or ""), ""),
        "identifiers": [(i.get("value"), i.get("type")) for i in patient.get("identifiers")
                        or ()],
        "number": order.get("filler_number") or order.get("placer_number") or "",
        "results": results, "panic": any(r["panic"] for r in results),
        "message": issue.get("message"),       # a reused MSH-10's message, as received
        "withheld": [WITHHELD_FR[w] for w in issue.get("withheld") or () if w in WITHHELD_FR],
        "unknown_codes": list(issue.get("unknown_codes") or ()),
        "todo": TODO_FR.get(kind, ""),
        # the patient's search, filled in with what the analyser sent
        "search": ({"birth_name": birth_name, "first_name": first_name,
                    "birth_date": _iso_date(str(summary.get("birth_date") or ""))}
                   if issue.get("patient_id") is None and kind not in WHOLE_MESSAGE_KINDS
                   else None),
        "several": len(issue.get("results") or ()) > 1,
        "handled": _handled(issue.get("resolution")),
    }


def _handled(resolution: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Who handled an issue (their name; the account id when there is none: the CLI
    operator, an account gone since), when, and a discard's reason where the role may
    read it (``issue_as_seen``)."""
    if not resolution:
        return None
    return {"by": resolution.get("by_name") or resolution.get("by") or "",
            "named": bool(resolution.get("by_name")), "at": resolution.get("at"),
            "reason": resolution.get("reason") if resolution.get("discarded") else None}


def _page(user: WebUser, lv: Any, tenant_id: str, *, handled: bool = False,
          notice: str | None = None, problem: tuple[str, str, str] | None = None,
          typed: Mapping[str, str] | None = None, status: int = 200) -> Response:
    """The queue (open issues, or the handled ones), with what was just done (``notice``)
    or refused (``problem``: issue id, message, hint; on its card)."""
    issues = (lv.lab.messages.list_issues(user.actor, tenant_id,
                                          HANDLED if handled else "open", QUEUE_LIMIT + 1,
                                          newest_first=True, detailed=not handled)
              if may_read_queue(lv, user.actor) else [])
    cards = [card(i) for i in issues[:QUEUE_LIMIT]]
    # ADT^A40 merge requests, for the identity vigilance referent (ids only)
    merges = (lv.lab.messages.merge_requests(user.actor, tenant_id, QUEUE_LIMIT)
              if user.may_merge and not handled else [])
    work = not handled and _may_work(lv, user.actor)
    groups = (catalogue_groups(lv.lab.catalogue(tenant_id))
              if work and any(c["unknown_codes"] for c in cards) else [])
    on_card = problem is not None and any(c["id"] == problem[0] for c in (*cards, *merges))
    return html("messages.html", status, user=user, cards=cards, handled=handled,
                more=len(issues) > QUEUE_LIMIT, limit=QUEUE_LIMIT, notice=notice,
                problem=problem, on_card=on_card, typed=typed or {}, work=work,
                groups=groups, merges=merges, reads_queue=may_read_queue(lv, user.actor))


@router.get(QUEUE)
def queue(user: User, lv: LV,
          statut: Annotated[str, Query(max_length=16)] = "") -> Response:
    """The open issues, newest first (``?statut=traites``: the resolved and discarded)."""
    tenant_id = _reader(user, lv)
    return _page(user, lv, tenant_id, handled=statut == "traites")


# == the service's refusals, in French =========================================================
# by the refusal's kind (``IssueRefused.kind``), formatted with its ``params``
_REFUSALS_FR: Mapping[str, tuple[str, str]] = {
    "reason-needed": (
        "le motif est obligatoire pour classer un message",
        "écrivez pourquoi ces résultats ne sont pas enregistrés (par exemple « doublon d'un "
        "résultat papier »), puis « Classer »"),
    "several-results": (
        "ce message contient {n} résultats ({codes}) : le classer les écarte tous",
        "cochez « classer tous les résultats » pour confirmer ; ou rattachez-le : ce qui peut "
        "être enregistré l'est, le reste devient un nouveau message à traiter"),
    "patient-needed": (
        "choisissez le patient auquel appartiennent ces résultats",
        "recherchez-le avec le formulaire du message, puis « Rattacher à ce patient »"),
    "patient-absent": (
        "ce patient n'existe pas dans votre laboratoire",
        "recherchez-le avec le formulaire du message, puis « Rattacher à ce patient »"),
    "code-not-unknown": (
        "{code} n'est pas un code inconnu de ce message",
        "choisissez une analyse pour les codes inconnus seulement"),
    "code-not-in-catalogue": (
        "{code} n'est pas une analyse du catalogue du laboratoire",
        "choisissez l'analyse dans la liste"),
    "code-ambiguous": (
        "précisez l'analyse de chaque code inconnu ({unknown})",
        "choisissez une analyse pour chacun"),
    "whole-message": (
        "ce message ne contient pas de résultats à enregistrer",
        TODO_FR["reused-control-id"]),
    "still-not-stored": (
        "les résultats ne peuvent toujours pas être enregistrés (détail technique : {why})",
        "vérifiez le patient et les analyses choisies ; si le message lui-même est en cause, "
        "classez-le avec un motif"),
    "cannot-store": (
        "les résultats ne peuvent pas être enregistrés (détail technique : {why})",
        "vérifiez le patient choisi (une demande de même numéro appartient peut-être à un "
        "autre patient), ou classez le message avec un motif"),
}


def refusal_fr(exc: UserError) -> tuple[str, str]:
    """A refusal of ``resolve_issue`` / ``discard_issue`` in the console's words."""
    if isinstance(exc, InvalidField):
        return (f"le motif {rule_fr(exc.rule)}",
                "revenez en arrière, corrigez le motif, puis « Classer »")
    if isinstance(exc, IssueRefused) and exc.kind in _REFUSALS_FR:
        message, hint = _REFUSALS_FR[exc.kind]
        return message.format(**exc.params), hint
    return (f"le message n'a pas pu être traité (détail technique : {exc.message})",
            "rechargez la liste ; si le problème persiste, voyez un biologiste")


def _card_refusal(exc: UserError) -> bool:
    """A refusal that belongs on the issue's card (not: the gate's, or an issue that is
    not open in the caller's laboratory -- those are the console's error page)."""
    return not (isinstance(exc, AccessDenied)
                or (isinstance(exc, NotFound) and exc.message == ABSENT))


def _refused(user: WebUser, lv: Any, tenant_id: str, issue_id: str, exc: UserError,
             typed: Mapping[str, str]) -> Response:
    message, hint = refusal_fr(exc)
    return _page(user, lv, tenant_id, problem=(issue_id, message, hint),
                 typed={**typed, "issue": issue_id}, status=exc.http_status)


# == the actions ===============================================================================
async def form_codes(request: Request) -> dict[str, str]:
    """The ``code_<LOCAL>`` fields of a form: local code -> LOINC code chosen (blank: none
    chosen)."""
    form = await request.form()
    out: dict[str, str] = {}
    for key, value in form.multi_items():
        if key.startswith("code_") and isinstance(value, str) and value.strip():
            if len(out) >= 50 or len(key) > 70 or len(value) > 20:
                raise UserError("le formulaire a été modifié ou tronqué",
                                "rechargez la liste des messages d'automate")
            out[key[5:]] = value.strip()
    return out


Codes = Annotated[dict[str, str], Depends(form_codes)]


@router.post(QUEUE + "/{issue_id}/recherche")
def find_patient(request: Request, issue_id: str, user: User, lv: LV, csrf: Csrf = "",
                 birth_name: Annotated[str, Form(max_length=TEXT)] = "",
                 first_name: Annotated[str, Form(max_length=TEXT)] = "",
                 birth_date: Annotated[str, Form(max_length=20)] = "") -> Response:
    """The patient of an issue: the console's search by birth name, first name and birth
    date (``lv.patients.find``, POST: nothing in a URL), at most ``SEARCH_LIMIT``
    candidates shown with their minimal identity, each with "Rattacher à ce patient"."""
    tenant_id = _worker(user, lv)
    _check_csrf(request, user, csrf)
    issue = lv.lab.messages.get_issue(user.actor, issue_id[:64])
    if issue["status"] != "open":
        raise NotFound(ABSENT, "")
    typed = {"birth_name": birth_name.strip(), "first_name": first_name.strip(),
             "birth_date": birth_date.strip()}
    found: list[dict[str, Any]] = []
    more, error = False, None
    if not all(typed.values()):
        error = "Donnez le nom de naissance, le prénom et la date de naissance."
    else:
        try:
            ids = lv.patients.find(user.actor, tenant_id, **typed)
        except InvalidField as exc:
            error = f"La date de naissance {rule_fr(exc.rule)}."
        else:
            found = [lv.patients.show(user.actor, pid, categories=[Category.IDENTITY])
                     for pid in ids[:SEARCH_LIMIT]]
            more = len(ids) > SEARCH_LIMIT
    groups = (catalogue_groups(lv.lab.catalogue(tenant_id))
              if issue.get("unknown_codes") else [])
    return html("message_patient.html", 422 if error else 200, user=user, c=card(issue),
                typed=typed, found=found, more=more, error=error, groups=groups)


@router.post(QUEUE + "/{issue_id}/rattacher")
def resolve(request: Request, issue_id: str, user: User, lv: LV, codes: Codes,
            csrf: Csrf = "",
            patient_id: Annotated[str, Form(max_length=64)] = "") -> Response:
    """"Rattacher à ce patient" / "Enregistrer les résultats": ``resolve_issue`` with the
    patient chosen and/or the catalogue test of each unknown code; then the queue, saying
    what was stored and what stays as a new issue."""
    tenant_id = _worker(user, lv)
    _check_csrf(request, user, csrf)
    iid = issue_id[:64]
    if not patient_id.strip() and not codes:
        return _page(user, lv, tenant_id, status=422, typed={"issue": iid}, problem=(
            iid, "choisissez le patient, ou l'analyse que désigne chaque code inconnu",
            "recherchez le patient ou choisissez les analyses dans les listes du message, "
            "puis renvoyez le formulaire"))
    try:
        done = lv.lab.messages.resolve_issue(user.actor, iid,
                                             patient_id=patient_id.strip() or None,
                                             codes=codes or None)
    except UserError as exc:
        if not _card_refusal(exc):
            raise
        return _refused(user, lv, tenant_id, iid, exc, {})
    stored, left = len(done["observation_ids"]), len(done["left_as"])
    notice = (f"{stored} résultat{'s' if stored > 1 else ''} enregistré"
              f"{'s' if stored > 1 else ''} dans le dossier du patient.")
    if left:
        notice += (" Ce qui ne peut pas encore être enregistré reste à traiter : "
                   f"{left} nouveau{'x' if left > 1 else ''} message{'s' if left > 1 else ''}"
                   " dans la liste ci-dessous.")
    return _page(user, lv, tenant_id, notice=notice)


@router.post(QUEUE + "/{issue_id}/classer")
def discard(request: Request, issue_id: str, user: User, lv: LV, csrf: Csrf = "",
            reason: Annotated[str, Form(max_length=2000)] = "",
            all_results: Tick = "") -> Response:
    """"Classer": ``discard_issue`` with the reason (required, kept sealed); an issue
    holding several results only with the tick "classer tous les résultats"; a merge
    request (ADT^A40) by the identity vigilance referent, the merge declined."""
    tenant_id = _worker(user, lv, merge_requests=True)
    _check_csrf(request, user, csrf)
    iid = issue_id[:64]
    try:
        done = lv.lab.messages.discard_issue(user.actor, iid, reason, bool(all_results))
    except UserError as exc:
        if not _card_refusal(exc):
            raise
        return _refused(user, lv, tenant_id, iid, exc, {"reason": reason})
    n = done["results_discarded"]
    return _page(user, lv, tenant_id, notice=(
        "Message classé sans enregistrer ses résultats"
        + (f" ({n} résultat{'s' if n > 1 else ''} écarté{'s' if n > 1 else ''})" if n else "")
        + " ; le motif est conservé."))
