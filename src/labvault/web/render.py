"""HTML rendering of the web door: Jinja2 environment (autoescaped), French labels, and
the route class that turns every error into a friendly page (never a stack trace).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from labvault.errors import AuthenticationFailed, UserError

log = logging.getLogger("labvault.web")
PARIS = ZoneInfo("Europe/Paris")


def day_start(d: date) -> datetime:
    """The start of a Paris day, as the aware time the services take (a period's bound)."""
    return datetime.combine(d, time(), PARIS)
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

ROLE_FR = {"reception": "accueil", "technician": "technicien", "biologist": "biologiste",
           "lab_admin": "administrateur du laboratoire",
           "dpo": "délégué à la protection des données", "patient": "patient",
           "platform_operator": "opérateur de la plateforme"}
# one French word for every domain.lab.Flag (a test checks none is missing)
FLAG_FR = {"N": "normal", "L": "bas", "H": "haut", "LL": "très bas (critique)",
           "HH": "très haut (critique)", "A": "anormal",
           "IND": "indéterminé (voir le biologiste)"}
PURPOSE_FR = {"care": "soins", "administration": "gestion administrative",
              "break-glass": "accès d'urgence", "export": "export", "audit": "contrôle",
              "access-log": "consultation de ce journal", "patient-access": "vous-même",
              "erasure": "effacement", "migration": "reprise de données",
              "security": "sécurité", "breach": "information après une violation de données",
              "backup": "sauvegarde", "guard": "surveillance de sécurité",
              "key-management": "gestion des clés de chiffrement"}
ACTION_FR = {"read": "consultation", "search": "recherche", "write": "modification",
             "validate": "validation", "export": "export", "erase": "effacement"}
# audit events (``gate.audit.event``) as a patient's "who saw my record" names them: those
# naming a patient reach that page (a report sent to the prescriber, an erasure asked...)
EVENT_FR = {
    "delivery.send": "envoi du compte rendu au logiciel du prescripteur",
    "erasure.request": "demande d'effacement",
    "export.requested": "export de données demandé", "export.approved": "export approuvé",
    "export.identify": "identification pour un export", "export.disclosure":
    "communication de données à un destinataire autorisé", "export.purged": "export supprimé",
    "alert.raised": "alerte levée", "alert.acked": "alerte prise en compte",
    "canary.planted": "dossier témoin de sécurité créé",
    "login": "connexion", "logout": "déconnexion", "reauth": "confirmation d'identité",
    "password.change": "changement de mot de passe", "mfa.enrol": "activation de la double "
    "authentification", "mfa.verify": "vérification de la double authentification",
    "session.revoke-all": "fermeture de toutes les sessions",
    "user.create": "création de compte", "user.enrol": "activation de compte",
    "account.lock": "compte verrouillé", "account.suspended": "compte suspendu",
    "account.released": "compte rétabli", "guard.config": "réglage de la surveillance",
    "backup.create": "sauvegarde", "backup.check": "vérification de sauvegarde",
    "audit.restore-acknowledged": "restauration du journal reconnue",
    "delivery.resend": "compte rendu renvoyé au logiciel du prescripteur",
    "delivery.destination.add": "destinataire de comptes rendus ajouté",
    "delivery.destination.remove": "destinataire de comptes rendus retiré",
    "patient.merge": "fusion d'un dossier en double (identitovigilance)",
}


def action_fr(action: str) -> str:
    """A read's action or an audit event in French (a breach case's steps: one text)."""
    if action in ACTION_FR:
        return ACTION_FR[action]
    if action.startswith("breach."):
        return "traitement d'une violation de données"
    return EVENT_FR.get(action, "opération technique")


CATEGORY_FR = {"identity": "identité", "contact": "coordonnées", "coverage": "assurance maladie",
               "clinical": "données médicales", "account": "compte"}
STATUS_FR = {"registered": "enregistrée", "received": "prélèvement reçu",
             "preliminary": "résultats saisis", "technically-validated": "validée techniquement",
             "final": "validée par le biologiste", "published": "publiée",
             "amended": "corrigée après publication", "rejected": "refusée",
             "cancelled": "annulée"}
FIELD_FR = {"birth_name": "nom de naissance", "used_name": "nom d'usage",
            "first_names": "prénoms", "birth_date": "date de naissance", "sex": "sexe",
            "birth_place_insee": "lieu de naissance (code INSEE)", "nir": "n° de sécurité sociale",
            "ins": "INS", "external_id": "identifiant d'origine",
            "former_ids": "Identifiants antérieurs (fusion)", "address": "adresse",
            "phone": "téléphone", "email": "e-mail", "amo": "caisse d'assurance maladie (AMO)",
            "amc": "complémentaire santé (AMC)", "member_id": "n° d'adhérent",
            "blood_group": "groupe sanguin", "prescriber": "médecin prescripteur"}
# specimen types (domain.lab.SPECIMEN_TYPES) as a French report names them
SPECIMEN_FR = {"BLD": "sang total", "SER": "sérum", "PLAS": "plasma", "UR": "urine",
               "CSF": "liquide cérébrospinal", "STL": "selles", "SAL": "salive",
               "SWAB": "écouvillon", "BLDA": "sang artériel", "BLDV": "sang veineux",
               "BLDCAP": "sang capillaire"}


# an order's priority as the worklists mark it (routine: no mark)
PRIORITY_FR = {"stat": "très urgent", "urgent": "urgent"}


def months_between(birth: date, at: date) -> int:
    """Completed months of life at ``at``."""
    return (at.year - birth.year) * 12 + at.month - birth.month - (1 if at.day < birth.day
                                                                   else 0)


def age_fr(birth: date | None, at: datetime | date | None) -> str:
    """The patient's age as a laboratory says it: days for a newborn, months up to two
    years, then completed years ("3 semaines" is said "21 jours")."""
    if birth is None:
        return "âge inconnu"
    if at is None:
        when = datetime.now(PARIS).date()
    elif isinstance(at, datetime):       # its Paris day (a naive time is UTC)
        when = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(PARIS).date()
    else:
        when = at
    from labvault.domain.lab import age_years
    months = months_between(birth, when)
    if months < 1:
        days = max((when - birth).days, 0)
        return f"{days} jour{'s' if days > 1 else ''}"
    if months < 24:
        return f"{months} mois"
    years = int(age_years(birth, when) or 0)
    return f"{years} ans"


def patient_fr(report: Any) -> str:
    """Whom a report's reference ranges were chosen for: sex and age at collection, from
    what the order keeps (no read of the patient's record)."""
    sex = {"F": "sexe féminin", "M": "sexe masculin"}.get(report.patient_sex or "",
                                                            "sexe non renseigné")
    at = report.collected_at or report.created_at
    return f"{sex}, {age_fr(report.patient_birth_date, at)}"


CATEGORY_FIELDS = {
    "identity": ("birth_name", "used_name", "first_names", "birth_date", "sex",
                 "birth_place_insee", "nir", "ins", "external_id", "former_ids"),
    "contact": ("address", "phone", "email"),
    "coverage": ("amo", "amc", "member_id"),
    "clinical": ("blood_group", "prescriber"),
}
KIND_FR = {"budget.exceeded": "quota de lecture dépassé (compte suspendu)",
           "canary.read": "dossier piège ouvert", "canary.search": "dossier piège trouvé par une recherche",
           "canary.export": "dossier piège exporté",
           "canary.leaked": "dossier piège retrouvé dans un fichier fuité",
           "enumeration.patients": "beaucoup de dossiers ouverts en peu de temps",
           "enumeration.searches": "beaucoup de recherches en peu de temps",
           "enumeration.misses": "beaucoup de recherches sans résultat",
           "access.denied.repeated": "refus répétés", "access.off_hours": "accès hors des heures d'ouverture",
           "access.new_client": "connexion depuis une nouvelle adresse",
           "break-glass": "accès d'urgence (bris de glace)", "panic-value": "valeur critique",
           "import-issue": "message d'automate à traiter",
           "erasure-request": "demande d'effacement d'un patient",
           "delivery-failed": "compte rendu non remis au système du prescripteur",
           "retention.mass_erasure": "purge de conservation bloquée : trop de dossiers à effacer"}
# import issues (docs/hl7.md): why an analyser's results wait in the queue
ISSUE_KIND_FR = {"unknown-patient": "patient non reconnu", "unknown-code": "code d'analyse inconnu",
                 "invalid-value": "valeur ou unité non reconnue",
                 "order-closed": "demande déjà validée : une correction est nécessaire",
                 "reused-control-id": "numéro de message déjà utilisé",
                 "identity-mismatch": "identité discordante",
                 "merge-request": "demande de fusion de dossiers (identitovigilance)"}
SEVERITY_FR = {"info": "information", "low": "faible", "medium": "moyenne", "high": "élevée",
               "critical": "critique"}
ALERT_STATUS_FR = {"open": "ouverte", "acked": "prise en compte"}
TITLE_FR = {400: "Demande incorrecte", 401: "Connexion nécessaire", 403: "Accès refusé",
            404: "Introuvable", 409: "Action impossible", 413: "Envoi trop volumineux",
            422: "Formulaire incomplet ou incorrect", 429: "Trop de tentatives",
            503: "Service indisponible"}


def fr_datetime(value: object) -> str:
    """A time as people in the laboratory read it: Paris time. labvault stores and passes
    UTC only, so a time without an offset is UTC (never printed as if it were local)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return str(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(PARIS).strftime("%d/%m/%Y à %H:%M")
    if isinstance(value, date):
        return value.strftime("%d/%m/%Y")
    return "" if value is None else str(value)


def hl7_date_fr(value: object) -> str:
    """A date as an HL7 message sent it (``YYYYMMDD``), the French way; anything else as
    sent (it was not checked: it is what the sender wrote)."""
    text = str(value or "")
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8])).strftime("%d/%m/%Y")
    except ValueError:
        return text


def fr_date(value: object) -> str:
    if isinstance(value, str):
        try:
            value = date.fromisoformat(value[:10])
        except ValueError:
            return str(value)
    if isinstance(value, datetime):          # its Paris day (a naive time is UTC)
        value = (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(PARIS).date()
    if isinstance(value, date):
        return value.strftime("%d/%m/%Y")
    return "" if value is None else str(value)


def field_value(name: str, value: object) -> str:
    if value is None:
        return ""
    if name == "first_names" and isinstance(value, list | tuple):
        return " ".join(str(v) for v in value)
    if name == "former_ids" and isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    if name == "birth_date":
        return fr_date(value)
    if name == "sex":
        return {"F": "féminin", "M": "masculin"}.get(str(value), str(value))
    if name == "phone":
        return phone_fr(str(value))
    if name == "address" and isinstance(value, Mapping):
        return f"{value.get('line', '')}, {value.get('postal_code', '')} {value.get('city', '')}"
    if name == "prescriber" and isinstance(value, Mapping):
        rpps = f" (RPPS {value['rpps']})" if value.get("rpps") else ""
        return f"{value.get('name', '')}{rpps}"
    return str(value)


def phone_fr(value: str) -> str:
    """A phone number as people write it: a French one in the national format ("06 12 34
    56 78"), another country's in the international one ("+41 22 345 67 89"); stored
    E.164 ("+33612345678")."""
    import phonenumbers
    try:
        n = phonenumbers.parse(value, "FR")
    except phonenumbers.NumberParseException:
        return value
    fmt = (phonenumbers.PhoneNumberFormat.NATIONAL if phonenumbers.region_code_for_number(n)
           in ("FR", "GP", "MQ", "GF", "RE", "YT", "PM", "BL", "MF")
           else phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    return phonenumbers.format_number(n, fmt)


def who_fr(row: Mapping[str, Any]) -> str:
    """Who accessed a record, in the portal's words: role and laboratory, never a name."""
    kind = row.get("actor_kind")
    if kind == "patient":
        return "vous (portail patient)"
    if kind == "operator":
        return "opérateur de la plateforme"
    if kind == "system":
        return "labvault (traitement automatique)"
    return ", ".join(ROLE_FR.get(r, r) for r in row.get("role", ())) or "personnel"


def who_at_fr(row: Mapping[str, Any]) -> str:
    """``who_fr`` with the laboratory, as one text (the data download's ``who``)."""
    who = who_fr(row)
    return f"{who} — {row['lab']}" if row.get("lab") else who


def download_fr(doc: dict[str, Any]) -> dict[str, Any]:
    """The patient's data download (``PortalService.my_data``) with French words where
    people read it (docs/formats.md, "Patient data download"): who accessed the record,
    what and why; order statuses, specimen types, why an order was closed. The codes stay
    beside them, under their English keys."""
    from labvault.web.lab_text import REJECTION_FR
    for row in doc["access_log"]:
        row["who"] = who_at_fr(row)
        row["action_fr"] = action_fr(row["action"])
        row["categories_fr"] = [CATEGORY_FR.get(c, c) for c in row["categories"]]
        row["purpose_fr"] = PURPOSE_FR.get(row["purpose"], row["purpose"]) \
            if row["purpose"] else None
    for order in doc["orders"]:
        order["status_fr"] = STATUS_FR.get(order["status"], order["status"])
        for s in order["specimens"]:
            s["type_fr"] = SPECIMEN_FR.get(s["type"], s["type"])
        if order["closed"] is not None:        # a rejection's code, a cancellation's text
            reason = order["closed"]["reason"]
            order["closed"]["reason_fr"] = REJECTION_FR.get(reason, reason) if reason else None
    return doc


def number(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:g}".replace(".", ",")


_DECIMAL_POINT = re.compile(r"(?<=\d)\.(?=\d)")


def decimal(value: object) -> str:
    """Numbers the French way, in a value or a range ("3.5-5.1 mmol/L" -> "3,5-5,1 mmol/L"):
    only a point between two digits, never one in words."""
    return "" if value is None else _DECIMAL_POINT.sub(",", str(value))


# comparators as people read them: "<=5" is stored, "≤ 5" is shown
COMPARATOR_FR = {"<": "< ", "<=": "≤ ", ">": "> ", ">=": "≥ "}
_COMPARATOR = re.compile(r"(<=|>=|<|>)\s*(?=[\d.,])")


def people(value: object) -> str:
    """A value or a range as pages and the PDF show it: French decimals, comparators as
    signs ("<=5 mg/L" -> "≤ 5 mg/L", ">=5.5" -> "≥ 5,5"); what is stored is unchanged."""
    return _COMPARATOR.sub(lambda m: COMPARATOR_FR[m.group(1)], decimal(value))


def result_value(obs: Any) -> str:
    return people(obs.value_display())


_SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")


def unit_print(unit: object) -> str:
    """A UCUM unit as a report prints it (what is stored is unchanged): ``10*9/L`` is
    10⁹/L, the micro prefix ``u`` is µ (``umol/L``: µmol/L), ``[IU]`` is the French UI
    (``m[IU]/L``: mUI/L); a unit that is only an annotation (``{INR}``, ``{ratio}``) says
    what the number is, not a unit: nothing is printed; an annotation inside a unit is
    printed without its braces."""
    u = str(unit or "")
    if re.fullmatch(r"\{[^}]*\}", u):
        return ""
    u = re.sub(r"\{([^}]*)\}", lambda m: m.group(1).replace("_", " "), u)
    u = re.sub(r"10[*^](-?\d+)", lambda m: "10" + m.group(1).translate(_SUPERSCRIPT), u)
    u = u.replace("[IU]", "UI").replace("[iU]", "UI")
    return re.sub(r"(^|[/.(])u(?=[a-zA-Z])", lambda m: m.group(1) + "µ", u)


def range_print(obs: Any) -> str:
    """A result's reference range as pages print it: French decimals, comparators as
    signs, and its unit (the range ends with it) as ``unit_print`` prints it."""
    text = str(obs.reference_range or "")
    if obs.unit and text.endswith(" " + obs.unit):
        return people(text[:-len(obs.unit)]) + unit_print(obs.unit)
    return people(text)


def _env() -> Environment:
    env = Environment(loader=PackageLoader("labvault.web", "templates"),
                      autoescape=select_autoescape(("html",), default=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(dt=fr_datetime, d=fr_date, role=lambda r: ROLE_FR.get(r, r),
                       flag=lambda f: FLAG_FR.get(f, f) if f else "",
                       purpose=lambda p: PURPOSE_FR.get(p, p) if p else "",
                       action=action_fr,
                       category=lambda c: CATEGORY_FR.get(c, c),
                       status=lambda s: STATUS_FR.get(str(s), str(s)),
                       field=lambda f: FIELD_FR.get(f, f), num=number, decimal=decimal,
                       result=result_value, people=people, unit=unit_print,
                       range=range_print,
                       kind=lambda k: KIND_FR.get(k, k),
                       priority=lambda p: PRIORITY_FR.get(str(p), ""),
                       issue_kind=lambda k: ISSUE_KIND_FR.get(k, k), hl7_date=hl7_date_fr,
                       patient=patient_fr,
                       severity=lambda v: SEVERITY_FR.get(v, v),
                       alert_status=lambda v: ALERT_STATUS_FR.get(v, v))
    from labvault.web import lab_text
    env.filters.update(skip=lambda r: lab_text.SKIP_FR.get(r, r), skip_tests=lab_text.skip_tests,
                       rejection=lambda r: lab_text.REJECTION_FR.get(r, r),
                       previous=lab_text.previous_fr, delta=lab_text.delta_fr,
                       anteriority=lab_text.anteriority_fr,
                       shown=lab_text.shown)
    env.globals.update(field_value=field_value, who_fr=who_fr, CATEGORY_FIELDS=CATEGORY_FIELDS,
                       REJECTION_FR=lab_text.REJECTION_FR, SPECIMEN_FR=SPECIMEN_FR)
    return env


ENV = _env()


def html(template: str, status: int = 200, headers: Mapping[str, str] | None = None,
         **context: Any) -> HTMLResponse:
    body = ENV.get_template(template).render(**context)
    return HTMLResponse(body, status_code=status, headers={**NO_STORE, **(headers or {})})


def error_page(status: int, message: str, hint: str = "",
               user: Any = None) -> HTMLResponse:
    return html("error.html", status, title=TITLE_FR.get(status, "Erreur"), message=message,
                hint=hint, user=user)


def to_login() -> RedirectResponse:
    return RedirectResponse("/login", status_code=303, headers=NO_STORE)


class WebRoute(APIRoute):
    """Every web route: authentication failures go to the login page, user errors render
    ``error.html`` with their message and hint, anything else a generic page (logged)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def web_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except AuthenticationFailed as exc:
                if exc.http_status == 429:
                    return error_page(429, exc.message, exc.hint)
                return to_login()
            except UserError as exc:
                from labvault.web.lab_text import french
                user = getattr(request.state, "web_user", None)
                message, hint = (french(exc, user.actor.id if user else None,
                                        request.url.path.startswith("/console"))
                                 or (exc.message, exc.hint))
                return error_page(exc.http_status, message, hint, user)
            except RequestValidationError:
                return error_page(422, "un champ du formulaire manque ou est trop long",
                                  "revenez en arrière, complétez le formulaire et renvoyez-le")
            except StarletteHTTPException as exc:
                return error_page(exc.status_code, "cette page ne peut pas être affichée", "")
            except Exception:
                log.exception("unhandled error on %s %s", request.method, request.url.path)
                return error_page(500, "une erreur interne s'est produite ; elle a été enregistrée",
                                  "réessayez plus tard ou contactez le laboratoire")

        return web_handler
