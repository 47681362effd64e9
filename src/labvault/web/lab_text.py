"""The lab workflow in the console's words (French): rejection reasons, why "valider tous
les normaux" left an order for review, and the workflow's typed errors said the way a
laboratory says them — what is missing, who did it already and when, what to do."""

from __future__ import annotations

import re
from collections.abc import Mapping

from labvault.domain.delta import Anteriority, Delta
from labvault.errors import (
    AccessDenied,
    InvalidField,
    MergeRefused,
    NotFound,
    PatientMerged,
    UserError,
)
from labvault.services.delivery import (
    DeliveryErased,
    DeliveryNotFailed,
    DestinationRemoved,
)
from labvault.services.lab import (
    IncompleteOrder,
    ReportNotPublished,
    ReportView,
    ResultsChanged,
    ResultWithdrawn,
    Skip,
    WorkflowConflict,
)
from labvault.services.portal import CsrfRefused

REJECTION_FR: Mapping[str, str] = {
    "hemolysed": "prélèvement hémolysé",
    "clotted": "prélèvement coagulé",
    "insufficient-volume": "volume insuffisant",
    "wrong-container": "tube ou contenant inadapté",
    "unlabelled": "prélèvement non étiqueté",
    "identity-mismatch": "identité du tube et de la demande discordantes",
    "transport-delay": "délai ou température de transport hors limites",
    "leaked": "contenant cassé ou fuyant",
    "no-prescription": "pas de prescription valable",
}

SKIP_FR: Mapping[str, str] = {
    "not-waiting": "n'attend plus de validation (validée entre-temps, résultats ressaisis ou "
                   "demande close)",
    "changed": "les résultats ont changé depuis l'ouverture de la page : relisez-les",
    "no-results": "aucun résultat",
    "panic": "valeur critique",
    "delta": "écart avec l'antériorité",
    "analyser-disagrees": "l'automate et le catalogue ne concordent pas",
    "re-entered": "résultat ressaisi avant validation (nouvelle mesure ou correction de "
                  "saisie) : comparez-le à la valeur remplacée",
    "out-of-range": "résultat hors des valeurs de référence",
    "indeterminate": "résultat que les valeurs de référence ne permettent pas de classer",
    "no-reference-range": "pas de valeurs de référence pour ce patient",
    "incomplete": "analyses demandées sans résultat",
}


def skip_tests(skip: Skip) -> str:
    """The tests an order was left for, with each flag when the analyser's and the
    catalogue's disagree ("Potassium : l'automate l'a signalé H, le catalogue dit normal"),
    each change since the previous result when it is beyond the test's limit
    ("Potassium : écart avec l'antériorité du … : 4,1 → 6 mmol/L (limite ± 1 mmol/L) : …")."""
    if skip.deltas:
        return "; ".join(f"{t} : {delta_fr(d)}"
                         for t, d in zip(skip.tests, skip.deltas, strict=True))
    if not skip.flags:
        return ", ".join(skip.tests)
    from labvault.web.render import FLAG_FR
    return "; ".join(f"{t} : l'automate l'a signalé {a}, le catalogue dit {FLAG_FR.get(f, f)}"
                     for t, (a, f) in zip(skip.tests, skip.flags, strict=True))


def previous_fr(d: Delta) -> str:
    """A result's previous result as the validation pages show it under the result:
    "Antériorité : 4,1 mmol/L le 01/03/2026 à 08:30 (normal)"."""
    from labvault.web.render import FLAG_FR, fr_datetime, result_value, unit_print
    p = d.previous.observation
    unit = unit_print(p.unit)
    flag = FLAG_FR.get(p.flag.value, p.flag.value) if p.flag else ""
    return (f"Antériorité : {result_value(p)}{' ' + unit if unit else ''} le "
            f"{fr_datetime(d.previous.at)}{f' ({flag})' if flag else ''}")


def anteriority_fr(a: Anteriority) -> str:
    """A result's previous published result as the compte rendu prints it in its
    "Antériorité" column: "4,2 mmol/L le 01/03/2026"; a blood group's previous
    determination: "Déjà déterminé le 01/03/2026 : A RhD+"."""
    from labvault.web.render import fr_date, result_value, unit_print
    p = a.previous.observation
    if a.determination:
        return f"Déjà déterminé le {fr_date(a.previous.at)} : {result_value(p)}"
    unit = unit_print(p.unit)
    return f"{result_value(p)}{' ' + unit if unit else ''} le {fr_date(a.previous.at)}"


def limit_fr(d: Delta) -> str:
    """A delta limit the French way: "± 1 mmol/L", "± 50 %", "± 2 g/dL ou ± 20 %"."""
    from labvault.web.render import number, unit_print
    if d.limit is None:
        return ""
    unit = unit_print(d.previous.observation.unit)
    parts = ([f"± {number(d.limit.absolute)}{' ' + unit if unit else ''}"]
             if d.limit.absolute is not None else [])
    if d.limit.percent is not None:
        parts.append(f"± {number(d.limit.percent)} %")
    return " ou ".join(parts)


def delta_fr(d: Delta) -> str:
    """Why a result is held for the delta check, in the laboratory's words: "écart avec
    l'antériorité du 01/03/2026 à 08:30 : 4,1 → 6 mmol/L (limite ± 1 mmol/L) : vérifiez
    l'identité du tube et le patient"."""
    from labvault.web.render import fr_datetime, number, unit_print
    if d.current_code is not None:     # a coded test (a blood group): a different code
        return (f"différent de la détermination du {fr_datetime(d.previous.at)} : "
                f"{d.previous_shown} → {d.current_code} : vérifiez l'identité du tube et le "
                "patient")
    unit = unit_print(d.previous.observation.unit)
    return (f"écart avec l'antériorité du {fr_datetime(d.previous.at)} : "
            f"{number(d.previous.observation.numeric)} → {number(d.current)}"
            f"{' ' + unit if unit else ''} (limite {limit_fr(d)}) : vérifiez l'identité du "
            "tube et le patient")


_CONFLICT_FR: Mapping[str, tuple[str, str]] = {
    "no-results": ("aucun résultat n'a encore été saisi pour cette demande",
                   "saisissez d'abord les résultats"),
    "technical-missing": ("validation technique manquante : un technicien doit d'abord valider "
                          "ces résultats", "demandez-le à un technicien (page « Validation "
                          "technique »)"),
    "biological-missing": ("validation biologique manquante : un biologiste doit d'abord "
                           "valider ce compte rendu", "validez-le sur la page « Validation "
                           "biologique »"),
    "already-technical": ("déjà validée techniquement{by}",
                          "rien à refaire : elle attend la validation biologique"),
    "already-biological": ("déjà validée{by}", "rien à refaire : diffusez-la si ce n'est pas "
                                               "encore fait"),
    "already-published": ("déjà diffusée{by}",
                          "pour la corriger, corrigez un résultat ou la conclusion"),
    "results-validated": ("les résultats sont déjà validés techniquement{by} : le prélèvement "
                          "ne peut plus être refusé", "un biologiste décide de la suite"),
    "rejected": ("le prélèvement de cette demande a été refusé{by}",
                 "un nouveau prélèvement demande une nouvelle demande"),
    "cancelled": ("cette demande a été annulée{by}", "une nouvelle demande est nécessaire"),
    "result-withdrawn": ("ce résultat a été retiré{by} : il ne fait pas partie du compte "
                         "rendu, il n'y a rien à corriger",
                         "corrigez le résultat en vigueur de cette analyse"),
    "already-received": ("le prélèvement de cette demande est déjà enregistré{by}",
                         "rien à refaire : la demande attend à la paillasse"),
    "not-allowed": ("cette action n'est pas possible à cette étape de la demande", ""),
}


def conflict_fr(exc: WorkflowConflict, user_id: str | None) -> tuple[str, str]:
    from labvault.web.render import fr_datetime
    message, hint = _CONFLICT_FR.get(exc.kind, _CONFLICT_FR["not-allowed"])
    by = ""
    if exc.step is not None:
        who = ("vous" if exc.step.by == user_id
               else exc.step.detail.get("name") or "un autre compte")
        by = f" par {who} le {fr_datetime(exc.step.at)}"
    if isinstance(exc, ResultWithdrawn) and exc.in_force is None:
        hint = ("ce compte rendu n'a pas de résultat en vigueur pour cette analyse : une "
                "nouvelle mesure demande une nouvelle demande")
    return message.format(by=by), hint


# what the services answer for an id that does not exist (or is another laboratory's:
# the same words), as the console says it
_ABSENT_FR: Mapping[str, tuple[str, str]] = {
    "no such patient": ("ce patient n'existe pas dans votre laboratoire",
                        "recherchez-le (« Recherche de patient »)"),
    "no such order": ("cette demande n'existe pas dans votre laboratoire",
                      "revenez à la liste et rechargez-la"),
    "no such report": ("ce compte rendu n'existe pas dans votre laboratoire",
                       "revenez au dossier du patient"),
    "no such observation": ("ce résultat n'existe pas dans votre laboratoire",
                            "revenez à la liste et rechargez-la"),
    "no such specimen": ("ce prélèvement n'existe pas dans votre laboratoire",
                         "revenez à la liste et rechargez-la"),
    "no open import issue with this id": (
        "ce message d'automate n'est pas en attente dans votre laboratoire (déjà traité, ou "
        "inexistant)", "revenez à la liste des messages d'automate et rechargez-la"),
    "no such message in the laboratory's outbox": (
        "cet envoi au prescripteur n'existe pas dans votre laboratoire",
        "revenez à la page d'où vous veniez (dossier du patient ou « Transmissions aux "
        "prescripteurs ») et rechargez-la"),
}
# "Renvoyer au prescripteur" refused (services/delivery.py), as the console says it
_RESEND_FR: Mapping[type[UserError], tuple[str, str]] = {
    DestinationRemoved: (
        "le destinataire de ce compte rendu a été retiré : il n'y a plus où le renvoyer",
        "demandez à l'exploitant d'ajouter le destinataire du prescripteur (labvault "
        "delivery add) pour les prochains comptes rendus, et transmettez celui-ci vous-même "
        "(« Télécharger le compte rendu (PDF) »)"),
    DeliveryErased: (
        "le dossier du patient a été effacé : le message est parti avec sa clé, il n'y a "
        "plus rien à envoyer", "rien à faire : les comptes rendus d'un patient effacé ne "
        "sont pas envoyés"),
}
# the console's form fields, as their labels say them
_FIELD_FR: Mapping[str, str] = {"reason": "motif de la correction", "conclusion": "conclusion",
                                "comment": "commentaire", "value": "valeur corrigée"}


def french(exc: UserError, user_id: str | None,
           console: bool = True) -> tuple[str, str] | None:
    """The console's (message, hint) for the errors of the workflow and of the forms;
    None: the error's own words. ``console``: a staff page (an absent record, a form
    field, the gate's refusal are said in the laboratory's words there)."""
    if isinstance(exc, WorkflowConflict):
        return conflict_fr(exc, user_id)
    if isinstance(exc, ResultsChanged):
        return ("les résultats ont changé depuis l'ouverture de la page : relisez-les",
                "rouvrez la liste, relisez les résultats, puis validez")
    if isinstance(exc, IncompleteOrder):
        return ("pas encore de résultat pour : " + ", ".join(exc.missing.values()),
                "attendez-les, ou cochez « valider un compte rendu partiel »")
    if isinstance(exc, ReportNotPublished):
        return ("ce compte rendu n'est pas encore diffusé : non validé et diffusé, il ne doit "
                "pas quitter le laboratoire",
                "un biologiste le valide puis le diffuse (page « Validation biologique »), "
                "ensuite téléchargez-le depuis le dossier du patient")
    if isinstance(exc, DeliveryNotFailed):
        return (("ce compte rendu est déjà en file d'envoi" if exc.status == "pending" else
                 "ce compte rendu a déjà été reçu par le système du prescripteur")
                + " : il n'y a rien à renvoyer",
                "revenez à la page d'où vous veniez (dossier du patient ou « Transmissions "
                "aux prescripteurs ») et rechargez-la")
    if type(exc) in _RESEND_FR:
        return _RESEND_FR[type(exc)]
    if isinstance(exc, CsrfRefused):
        return ("le formulaire a expiré ou ne vient pas de labvault : rechargez la page",
                "rechargez la page, puis renvoyez le formulaire")
    if not console:
        return None
    if (merge := merge_fr(exc)) is not None:
        return merge
    if isinstance(exc, PatientMerged):       # identity vigilance merged it (services/merge.py)
        return (f"ce dossier, un doublon, a été fusionné dans le dossier {exc.survivor_id}",
                f"ouvrez le dossier {exc.survivor_id} : il contient ses demandes et ses "
                "résultats")
    if isinstance(exc, NotFound) and exc.message in _ABSENT_FR:
        return _ABSENT_FR[exc.message]
    if isinstance(exc, InvalidField) and exc.field in _FIELD_FR:
        name = _FIELD_FR[exc.field]
        if exc.rule == "is required":
            return (f"le champ « {name} » est obligatoire",
                    "revenez en arrière, complétez-le, puis renvoyez le formulaire")
        longer = re.fullmatch(r"is longer than (\d+) characters", exc.rule)
        return (f"le champ « {name} » "
                + (f"dépasse {longer.group(1)} caractères" if longer else "n'est pas valable"),
                "revenez en arrière, corrigez-le, puis renvoyez le formulaire")
    if policy_refusal(exc):
        return ("votre fonction ne permet pas cette action sur ce dossier (refus enregistré)",
                "si votre travail le demande, voyez l'administrateur du laboratoire")
    return None


def policy_refusal(exc: Exception) -> bool:
    """Whether ``exc`` is the gate's refusal by the policy table (not a budget, a
    suspension or a door's own refusal, which say more): the console words it."""
    return type(exc) is AccessDenied and exc.message == "not allowed"


def shown(report: ReportView) -> str:
    """What a validation form shows, for the service to compare: ``obs:rev,obs:rev``."""
    return ",".join(f"{oid}:{rev}" for oid, rev in report.expected.items())


def parse_shown(value: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in filter(None, value.split(",")):
        oid, _, rev = part.partition(":")
        if not oid or not rev.isdigit():
            raise UserError("le formulaire a été modifié ou tronqué",
                            "rechargez la page, relisez les résultats, puis validez")
        out[oid] = int(rev)
    return out


def parse_shown_orders(values: list[str]) -> dict[str, dict[str, int]]:
    """The bulk form: one ``order_id=obs:rev,…`` per order shown."""
    out: dict[str, dict[str, int]] = {}
    for value in values:
        order_id, sep, results = value.partition("=")
        if not order_id or not sep:
            raise UserError("le formulaire a été modifié ou tronqué",
                            "rechargez la page, puis validez")
        out[order_id] = parse_shown(results)
    return out


# == identity vigilance: merging a duplicate (services/merge.py) ============================
# the traits and identifiers the merge compares (services/identity.py), as the form says them
MERGE_TRAITS_FR: Mapping[str, str] = {
    "birth_name": "nom de naissance", "first_name": "premier prénom",
    "birth_date": "date de naissance", "sex": "sexe", "nir": "NIR", "ins": "INS",
    "external_id": "identifiant externe (du système d'origine)",
}
# what a merge moved (MergeReport.moved, by table), as the confirmation says it
MERGE_MOVED_FR: Mapping[str, str] = {
    "lab_orders": "demandes d'analyses", "lab_specimens": "prélèvements",
    "lab_observations": "résultats", "lab_observation_history": "versions antérieures de résultats",
    "lab_reports": "comptes rendus", "lab_hl7_messages": "messages HL7 archivés",
    "lab_import_issues": "messages d'automate", "delivery_outbox": "envois aux prescripteurs",
    "accounts": "comptes du portail patient",
}
_FORCE_HINT = ("vérifiez les deux identités (pièce d'identité, dossier d'origine) ; s'il "
               "s'agit bien de la même personne (erreur de saisie), cochez « forcer la "
               "fusion » et expliquez-le dans le motif")


def traits_fr(traits: list[str]) -> str:
    return ", ".join(MERGE_TRAITS_FR.get(t, t) for t in traits)


def merge_fr(exc: UserError) -> tuple[str, str] | None:
    """A refused merge (``MergeRefused``, or its missing reason) in the console's words;
    None: not a merge's refusal."""
    if exc.message == "a merge needs a written reason":
        return ("le motif de la fusion manque ou est trop court",
                "revenez en arrière et dites pourquoi les deux dossiers sont la même "
                "personne : le motif est gardé, scellé, dans le journal d'audit")
    if not isinstance(exc, MergeRefused):
        return None
    msg = exc.message
    if msg == "the survivor and the duplicate are the same record":
        return ("le dossier conservé et le doublon sont le même dossier",
                "donnez l'identifiant du doublon, différent de celui du dossier conservé")
    if msg == "the two records belong to different laboratories":
        return ("les deux dossiers appartiennent à des laboratoires différents",
                "une fusion réunit deux dossiers d'un même laboratoire")
    if m := re.fullmatch(r"patient (\S+) was already merged into (\S+)", msg):
        return (f"le dossier {m[1]} a déjà été fusionné dans le dossier {m[2]}",
                f"s'il reste un doublon, fusionnez-le dans le dossier {m[2]} ; sinon il n'y "
                "a plus rien à faire")
    if m := re.fullmatch(r"patient (\S+) is (\S+): it cannot be merged", msg):
        return (f"le dossier {m[1]} a été effacé (ou est en cours d'effacement) : il ne peut "
                "pas être fusionné", "un dossier effacé ne contient plus rien à déplacer")
    if m := re.fullmatch(r"patient (\S+) cannot be merged", msg):
        return (f"le dossier {m[1]} ne peut pas être fusionné (refus enregistré)",
                "voyez le délégué à la protection des données du laboratoire")
    if m := re.fullmatch(r"the two records differ on (.+): they may be two different "
                         r"people", msg):
        return (f"les deux dossiers diffèrent sur : {traits_fr(m[1].split(', '))} — ce sont "
                "peut-être deux personnes différentes", _FORCE_HINT)
    if m := re.fullmatch(r"the record kept would have more than (\d+) former identifiers",
                         msg):
        return (f"le dossier conservé aurait plus de {m[1]} identifiants antérieurs",
                "tant de doublons d'un même dossier signalent un problème d'identité : "
                "vérifiez avec l'identitovigilance quels dossiers sont vraiment cette personne")
    return ("la fusion est refusée : " + msg, exc.hint)
