"""The web door's pages: login, patient portal (``/portail``), staff console (``/console``).

Sessions are the API's own (``POST /api/v1/auth/login`` logic, same HttpOnly SameSite=Strict
cookie, same ``deps.current_actor``). Every POST form carries a CSRF token: before login a
double-submit value (cookie + hidden field), after login a MAC of the session id
(``PortalService.csrf_token``); a request authenticated by an ``Authorization: Bearer``
header (which a browser never sends on its own) needs none. Every page reads through the
services, so each read passes the gate and is audited.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import APIRouter, Depends, Form, Query, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from markupsafe import Markup

from labvault.access.passwords import MAX_LENGTH as MAX_PASSWORD
from labvault.access.throttle import ACCOUNT_RULES as LOCKOUT
from labvault.api.deps import (
    LV,
    SESSION_COOKIE,
    client_address,
    enrolling_actor,
    resolve_actor,
)
from labvault.domain import lab as L
from labvault.domain.actors import Actor
from labvault.domain.categories import PATIENT_CATEGORIES, Action, Category
from labvault.errors import (
    AccessDenied,
    AuthenticationFailed,
    InvalidField,
    MergeRefused,
    NotFound,
    UserError,
)
from labvault.guard.alerts import CLINICAL_KINDS
from labvault.services.accounts import LoginThrottled
from labvault.services.breach import dpo_from_env
from labvault.services.gate import Access
from labvault.services.lab import BulkValidation
from labvault.services.lab_messages import ISSUE_CATEGORIES
from labvault.services.merge import MIN_REASON as MERGE_MIN_REASON
from labvault.services.merge import PURPOSE as MERGE_PURPOSE
from labvault.services.merge import RESOURCE as MERGE_RESOURCE
from labvault.services.merge import Comparison, MergeReport
from labvault.services.portal import PortalService
from labvault.web import lab_text
from labvault.web.render import (
    NO_STORE,
    WebRoute,
    download_fr,
    error_page,
    fr_datetime,
    html,
    to_login,
)

if TYPE_CHECKING:
    from labvault.services.alerts import AlertService, Reach
    from labvault.services.app import Labvault

router = APIRouter(route_class=WebRoute, include_in_schema=False)
LOGIN_CSRF = "labvault_login_csrf"
_bearer = HTTPBearer(auto_error=False)
SEARCH_LIMIT = 20
# orders one worklist page shows (stat and urgent first, then the oldest); more: said so
WORKLIST_LIMIT = 100
TEXT = 200
# the link to a report's PDF in the console (/console/rapports/{id}.pdf)
DOWNLOAD = "Télécharger le compte rendu (PDF)"
# what publication does not do: a biologist must not believe the doctor has the report
TO_PRESCRIBER = (f"labvault ne l'envoie pas au prescripteur : téléchargez-le (« {DOWNLOAD} ») "
                 "et transmettez-le-lui par la voie habituelle du laboratoire.")


def to_prescriber(queued: int) -> str:
    """What "Diffuser" did for the prescriber: the report queued (HL7 ORU^R01) for the
    prescriber's or the hospital's system when a delivery destination matches its
    prescriber, otherwise nothing (``TO_PRESCRIBER``)."""
    if not queued:
        return TO_PRESCRIBER
    return ("Le compte rendu est mis en file d'envoi vers le système du prescripteur"
            + (f" ({queued} destinations)" if queued > 1 else "")
            + " : labvault l'envoie (HL7) et signale une alerte s'il ne peut pas être remis.")


# "Renvoyer au prescripteur" done (the patient's page says it beside the report)
RESENT = ("Compte rendu remis en file d'envoi vers le système du prescripteur : labvault "
          "l'envoie à son prochain passage et signale une alerte s'il n'est toujours pas "
          "remis. L'alerte de l'échec précédent est prise en compte.")

# where "Prendre en compte" may send the browser back to (never a URL from the form)
ACK_RETURNS = frozenset({"/console/alertes", "/console/validation"})

# "Transmissions aux prescripteurs": the laboratory's outbox (delivery read)
OUTBOX = "/console/envois"
# where "Renvoyer au prescripteur" may send the browser back to, instead of the patient's
# page (never a URL from the form)
RESEND_RETURNS = frozenset({OUTBOX})
# failed and pending messages the page lists (each, newest first; more: said so), and
# the last delivered ones it shows
OUTBOX_OPEN_LIMIT = 200
OUTBOX_DELIVERED_SHOWN = 50


@dataclass(frozen=True)
class WebUser:
    actor: Actor
    csrf: str
    via_cookie: bool
    # the reception desk's pages, for the roles the policy lets do their actions (menu)
    may_register: bool = False          # "Nouveau patient": patient write
    may_order: bool = False             # "Nouvelle demande": order write
    may_receive: bool = False           # "Réception du prélèvement": specimen write
    may_queue: bool = False             # "Messages d'automate": import-issue read
    may_outbox: bool = False            # "Transmissions aux prescripteurs": delivery read
    may_merge: bool = False             # "Fusionner un doublon": patient-merge write
    may_search: bool = False            # "Recherche de patient": patient search (identity)
    # the DPO's pages (journal d'un patient, activité d'un utilisateur, intégrité): audit read
    may_audit: bool = False
    # "Alertes" (every alert) or "Alertes cliniques" (a biologist's): alert read
    may_alerts: bool = False
    clinical_alerts_only: bool = False

    @property
    def is_patient(self) -> bool:
        return self.actor.kind == "patient"

    @property
    def roles(self) -> frozenset[str]:
        return self.actor.roles

    @property
    def may_bench(self) -> bool:
        """"Validation technique": the roles ``_bench`` lets in."""
        return bool(L.TECHNICAL_ROLES & self.roles)

    @property
    def may_validate(self) -> bool:
        """"Validation biologique": the role ``_biologist`` lets in."""
        return L.BIOLOGIST_ROLE in self.roles

    @property
    def tasks(self) -> tuple[Task, ...]:
        """The console's pages this user may use, in the menu's order (the search page
        or the "Accueil" page that lists these comes first, then these)."""
        return tuple(t for t in TASKS if t.offered(self))


@dataclass(frozen=True)
class Task:
    """A console page in the menu, and on the "Accueil" page of the staff who search no
    patient (``what``: its line there)."""

    href: str
    label: str
    what: str
    offered: Callable[[WebUser], bool]

    def label_for(self, user: WebUser) -> str:
        return ("Alertes cliniques" if self.href == ALERTS and user.clinical_alerts_only
                else self.label)


ALERTS = "/console/alertes"
# each page offered to whom the policy (or the page's own check, for the worklists) lets
# use it; a link no one may follow is never shown
TASKS: tuple[Task, ...] = (
    Task("/console/nouveau-patient", "Nouveau patient",
         "enregistrer un patient qui se présente", lambda u: u.may_register),
    Task("/console/technique", "Validation technique",
         "valider les résultats saisis, refuser un prélèvement non conforme",
         lambda u: u.may_bench),
    Task("/console/validation", "Validation biologique",
         "valeurs critiques à traiter, comptes rendus à valider et à diffuser",
         lambda u: u.may_validate),
    Task("/console/messages", "Messages d'automate",
         "les messages des automates et des serveurs d'identités qui attendent une personne "
         "(demandes de fusion de dossiers pour l'identitovigilance)",
         lambda u: u.may_queue or u.may_merge),
    Task("/console/fusion", "Fusionner un doublon",
         "fusionner un dossier en double dans le dossier conservé (identitovigilance)",
         lambda u: u.may_merge),
    Task(OUTBOX, "Transmissions aux prescripteurs",
         "où en sont les comptes rendus envoyés aux logiciels des prescripteurs, renvoyer "
         "ceux qui n'ont pas été remis", lambda u: u.may_outbox),
    Task(ALERTS, "Alertes",
         "les alertes du laboratoire (sécurité, valeurs critiques, envois non remis) : les "
         "lire et les prendre en compte", lambda u: u.may_alerts),
    Task("/console/journal-patient", "Journal d'un patient",
         "qui a consulté le dossier d'un patient, quand et pourquoi (une plainte « qui a "
         "consulté mon dossier ? »)", lambda u: u.may_audit),
    Task("/console/activite-utilisateur", "Activité d'un utilisateur",
         "tout ce qu'un compte a fait ou tenté dans le laboratoire, refus compris",
         lambda u: u.may_audit),
    Task("/console/integrite-journal", "Intégrité du journal",
         "vérifier que le journal d'audit du laboratoire n'a pas été altéré",
         lambda u: u.may_audit),
)


# what each desk action writes, as the services ask the gate (patients.register: every
# category of the record; lab.create_order, lab.receive_specimen: clinical data)
DESK_WRITES: dict[str, frozenset[Category]] = {
    "patient": frozenset(PATIENT_CATEGORIES), "order": frozenset({Category.CLINICAL}),
    "specimen": frozenset({Category.CLINICAL})}


def may(lv: Labvault, actor: Actor, action: Action, resource: str,
        categories: frozenset[Category]) -> bool:
    """Whether the policy lets ``actor`` do ``action`` on ``resource`` in its own
    laboratory (no decision recorded: which pages and menu entries to offer; the service's
    call still passes the gate, which decides and audits)."""
    if actor.kind != "staff" or actor.tenant_id is None:
        return False
    return bool(lv.gate.categories_of(Access(actor, action, actor.tenant_id, categories,
                                             resource=resource)))


def may_write(lv: Labvault, actor: Actor, resource: str) -> bool:
    """``may`` for the desk's writes (``DESK_WRITES``)."""
    return may(lv, actor, Action.WRITE, resource, DESK_WRITES[resource])


def may_read_queue(lv: Labvault, actor: Actor) -> bool:
    """Whether the policy opens the import-issues queue to ``actor`` (``import-issue``
    read: reception, technicians, biologists; each sees of an issue what its row opens)."""
    return may(lv, actor, Action.READ, "import-issue", ISSUE_CATEGORIES)


def may_merge(lv: Labvault, actor: Actor) -> bool:
    """Whether the policy lets ``actor`` merge duplicates in its laboratory (``patient-merge``
    write, purpose administration: the identity vigilance referent, ``lab_admin``)."""
    if actor.kind != "staff" or actor.tenant_id is None:
        return False
    return bool(lv.gate.categories_of(Access(actor, Action.WRITE, actor.tenant_id,
                                             frozenset(PATIENT_CATEGORIES),
                                             purpose=MERGE_PURPOSE, resource=MERGE_RESOURCE)))


def may_audit(lv: Labvault, actor: Actor) -> bool:
    """Whether the policy lets ``actor`` read its laboratory's audit trail (``audit`` read,
    purpose audit: the DPO's pages). Decided on the policy's table, nothing recorded."""
    if actor.kind != "staff" or actor.tenant_id is None:
        return False
    return lv.gate.policy.decide(Access(actor, Action.READ, actor.tenant_id, frozenset(),
                                        purpose="audit", resource="audit")).allowed


def may_search(lv: Labvault, actor: Actor) -> bool:
    """Whether the policy lets ``actor`` search its laboratory's patients by identity (the
    console's search page; lab administrators and the DPO search no patient)."""
    return may(lv, actor, Action.SEARCH, "patient", frozenset({Category.IDENTITY}))


def alerts_reach(lv: Labvault, actor: Actor) -> Reach | None:
    """Which alerts the policy lets ``actor`` read on the console (``services.alerts.reach``,
    then the gate's table for that resource; no decision recorded), or None: none, or no
    alert store plugged in (the page would answer 404)."""
    from labvault.services.alerts import AlertService, reach
    if (actor.kind != "staff" or actor.tenant_id is None
            or not isinstance(lv.alerts, AlertService)):
        return None
    try:
        which = reach(actor)
    except AccessDenied:
        return None
    allowed = lv.gate.policy.decide(Access(actor, Action.READ, actor.tenant_id, frozenset(),
                                           purpose=which.purpose,
                                           resource=which.resource)).allowed
    return which if allowed else None


def portal_of(request: Request) -> PortalService:
    portal: PortalService = request.app.state.portal
    return portal


def web_user(request: Request,
             creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> WebUser:
    """The logged-in user (session cookie, or a bearer token for scripts and tests)."""
    return _as_user(request, creds, resolve_actor(request, creds))


def _as_user(request: Request, creds: HTTPAuthorizationCredentials | None,
             actor: Actor) -> WebUser:
    bearer = creds is not None and creds.scheme.lower() == "bearer" and bool(creds.credentials)
    lv: Labvault = request.app.state.lv
    alerts = alerts_reach(lv, actor)
    user = WebUser(actor, portal_of(request).csrf_token(actor), via_cookie=not bearer,
                   may_register=may_write(lv, actor, "patient"),
                   may_order=may_write(lv, actor, "order"),
                   may_receive=may_write(lv, actor, "specimen"),
                   may_queue=may_read_queue(lv, actor),
                   may_outbox=lv.delivery.may_view(actor),
                   may_merge=may_merge(lv, actor), may_search=may_search(lv, actor),
                   may_audit=may_audit(lv, actor),
                   may_alerts=alerts is not None,
                   clinical_alerts_only=alerts is not None and alerts.kinds is not None)
    request.state.web_user = user
    return user


User = Annotated[WebUser, Depends(web_user)]
Portal = Annotated[PortalService, Depends(portal_of)]
Csrf = Annotated[str, Form(max_length=200)]


def _check_csrf(request: Request, user: WebUser, token: str) -> None:
    if user.via_cookie:
        portal_of(request).check_csrf(user.actor, token)


def _staff(user: WebUser) -> str:
    if user.actor.kind != "staff" or user.actor.tenant_id is None:
        raise AccessDenied("la console est réservée au personnel des laboratoires",
                           "les patients utilisent le portail (/portail)")
    return user.actor.tenant_id


def _patient(user: WebUser) -> None:
    if not user.is_patient:
        raise AccessDenied("le portail est réservé aux patients",
                           "le personnel utilise la console (/console)")


# == login / logout ===========================================================================
# Forms sent before any session (login, enrolment): double submit, a random value in the
# form and in an HttpOnly SameSite=Strict cookie scoped to the form's own path.
def _form_page(request: Request, template: str, cookie: str, path: str, status: int = 200,
               **context: Any) -> Response:
    token = secrets.token_urlsafe(32)
    resp = html(template, status, csrf=token, user=None, **context)
    resp.set_cookie(cookie, token, httponly=True, samesite="strict",
                    secure=request.url.scheme == "https", path=path, max_age=3600)
    return resp


def _form_sent_here(request: Request, cookie: str, csrf: str) -> bool:
    value = request.cookies.get(cookie, "")
    return bool(value) and bool(csrf) and hmac.compare_digest(value.encode(), csrf.encode())


def _login_page(request: Request, status: int = 200, error: str | None = None) -> Response:
    return _form_page(request, "login.html", LOGIN_CSRF, "/login", status, error=error)


@router.get("/login")
def login_form(request: Request) -> Response:
    return _login_page(request)


@router.post("/login")
def login(request: Request, lv: LV,
          email: Annotated[str, Form(max_length=320)],
          password: Annotated[str, Form(max_length=1024)],
          totp: Annotated[str, Form(max_length=32)] = "",
          csrf: Annotated[str, Form(max_length=200)] = "") -> Response:
    if not _form_sent_here(request, LOGIN_CSRF, csrf):
        return error_page(403, "le formulaire de connexion a expiré",
                          "rechargez la page de connexion et recommencez")
    try:
        res = lv.accounts.login(email, password, totp.strip() or None, client_address(request))
    except LoginThrottled as exc:
        return error_page(429, "trop de tentatives de connexion",
                          f"attendez {exc.retry_after} secondes avant de réessayer")
    except AuthenticationFailed:
        return _login_page(request, 401, "Connexion refusée : vérifiez votre e-mail, votre mot "
                           "de passe et le code de votre application d'authentification. "
                           f"Après {LOCKOUT.lock_after} échecs de suite, le compte est bloqué "
                           f"{LOCKOUT.lock_minutes} minutes (le laboratoire peut le débloquer "
                           "avant).")
    # staff whose second factor was reset: a session limited to enrolling a new one (/mfa)
    resp = RedirectResponse("/" if res.scope == "full" else "/mfa", status_code=303,
                            headers=NO_STORE)
    resp.set_cookie(SESSION_COOKIE, res.token, httponly=True, samesite="strict",
                    secure=request.url.scheme == "https", path="/",
                    max_age=int((res.expires_at - lv.now()).total_seconds()))
    resp.delete_cookie(LOGIN_CSRF, path="/login")
    return resp


# == enrolment link ==========================================================================
ENROL_CSRF = "labvault_enrol_csrf"
# passwords.check_password's rules, as the page says them
_PASSWORD_FR = {
    "is required": "il est obligatoire",
    "does not follow the password rules (CNIL 2022-100)":
        "il ne suit pas les règles rappelées ci-dessus (CNIL, délibération 2022-100)",
    "contains your name or e-mail address": "il contient votre nom ou votre adresse e-mail",
    "is a common or breached password":
        "il figure dans les listes de mots de passe courants ou divulgués",
    f"is longer than {MAX_PASSWORD} characters": f"il dépasse {MAX_PASSWORD} caractères",
    "is too easy to guess (common words, names or patterns)":
        "il est trop facile à deviner (mots courants, prénoms ou suites de caractères)",
}


def _enrol_page(request: Request, status: int = 200, error: str | None = None,
                token: str = "") -> Response:
    return _form_page(request, "enrol.html", ENROL_CSRF, "/enrol", status, error=error,
                      token=token)


@router.get("/enrol")
def enrol_form(request: Request) -> Response:
    """The page of a one-time enrolment link (``/enrol#token=...``: the token stays in the
    browser until the form is sent; ``static/enrol.js`` copies it into the form)."""
    return _enrol_page(request)


@router.post("/enrol")
def enrol(request: Request, lv: LV,
          token: Annotated[str, Form(max_length=200)] = "",
          password: Annotated[str, Form(max_length=1024)] = "",
          again: Annotated[str, Form(max_length=1024)] = "",
          csrf: Annotated[str, Form(max_length=200)] = "") -> Response:
    if not _form_sent_here(request, ENROL_CSRF, csrf):
        return error_page(403, "le formulaire d'activation a expiré",
                          "rouvrez le lien d'activation reçu et recommencez")
    if not token:
        return error_page(400, "le lien d'activation est incomplet",
                          "ouvrez le lien complet reçu de votre administrateur (il se termine "
                          "par #token=…)")
    if password != again:
        return _enrol_page(request, 422, "Les deux mots de passe diffèrent.", token)
    try:
        out = lv.accounts.enrol(token, password, client_address(request))
    except AuthenticationFailed:
        return error_page(401, "ce lien d'activation n'est pas valable (déjà utilisé ou expiré)",
                          "demandez un nouveau lien à votre administrateur")
    except InvalidField as exc:
        # a rule without its French words still gets a French refusal, never English
        reason = _PASSWORD_FR.get(exc.rule, "il ne suit pas les règles rappelées ci-dessus")
        return _enrol_page(request, 422, f"Mot de passe refusé : {reason}.", token)
    qr, secret = _qr(out["otpauth_uri"]) if out.get("otpauth_uri") else (None, None)
    resp = html("enrolled.html", qr=qr, secret=secret, mfa_done=False,
                password_reset=out.get("password_reset", False),
                recovery_codes=out.get("recovery_codes", []), user=None)
    resp.delete_cookie(ENROL_CSRF, path="/enrol")
    return resp


# == second factor after a reset ==============================================================
def enrolling_user(request: Request,
                   creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
                   ) -> WebUser:
    """A session limited to MFA enrolment (``mfa-enrol``: staff whose second factor was
    reset log in with their password alone and get only this page)."""
    return _as_user(request, creds, enrolling_actor(request, creds))


Enrolling = Annotated[WebUser, Depends(enrolling_user)]


def _qr(uri: str) -> tuple[Markup, str]:
    """The otpauth URI as an inline SVG QR code (the pages allow no image source but this
    origin) and the secret it carries, for typing by hand."""
    import segno
    svg = Markup(segno.make(uri, error="m").svg_inline(  # noqa: S704 - segno's own markup
        scale=4, title="code QR"))
    return svg, parse_qs(urlsplit(uri).query).get("secret", [""])[0]


def _menu(request: Request, creds: HTTPAuthorizationCredentials | None) -> WebUser | None:
    """Who the page's menu is for: a full session gets the layout of its other pages; a
    session limited to MFA enrolment none (every other page sends it to /login)."""
    try:
        return _as_user(request, creds, resolve_actor(request, creds))
    except AuthenticationFailed:
        return None


Creds = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


@router.get("/mfa")
def mfa_form(request: Request, user: Enrolling, lv: LV, creds: Creds) -> Response:
    """A new TOTP secret (each visit replaces the one not yet confirmed) and its QR code."""
    qr, secret = _qr(lv.accounts.mfa_enrol(user.actor)["otpauth_uri"])
    return html("mfa.html", qr=qr, secret=secret, csrf=user.csrf, error=None,
                user=_menu(request, creds))


@router.post("/mfa")
def mfa_confirm(request: Request, user: Enrolling, lv: LV, creds: Creds, csrf: Csrf = "",
                totp: Annotated[str, Form(max_length=32)] = "") -> Response:
    _check_csrf(request, user, csrf)
    try:
        out = lv.accounts.mfa_verify(user.actor, totp.strip())
    except AuthenticationFailed:
        return html("mfa.html", 422, qr=None, secret=None, csrf=user.csrf,
                    user=_menu(request, creds),
                    error="Ce code n'est pas valable : tapez le code que l'application "
                          "affiche maintenant.")
    resp = html("enrolled.html", qr=None, secret=None, mfa_done=True,
                recovery_codes=out["recovery_codes"], user=None)
    resp.delete_cookie(SESSION_COOKIE, path="/")      # the enrolment session has ended
    return resp


@router.post("/logout")
def logout(request: Request, user: User, lv: LV, csrf: Csrf = "") -> Response:
    _check_csrf(request, user, csrf)
    lv.accounts.logout(user.actor)
    resp = to_login()
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


@router.get("/")
def home(user: User) -> Response:
    return RedirectResponse("/portail" if user.is_patient else "/console", status_code=303,
                            headers=NO_STORE)


# == patient portal ===========================================================================
@router.get("/portail")
def portal_home(user: User, portal: Portal) -> Response:
    _patient(user)
    return html("portal.html", user=user, reports=portal.my_reports(user.actor))


@router.get("/portail/rapports/{report_id}.pdf")
def report_pdf(report_id: str, user: User, portal: Portal, lv: LV) -> Response:
    _patient(user)
    from labvault.web.pdf import report_pdf as render_pdf
    try:
        report = portal.my_report(user.actor, report_id[:64])
    except NotFound:      # another patient's, not published yet, no such id: one answer
        raise NotFound("ce compte rendu n'est pas disponible",
                       "revenez à vos résultats (Mes résultats)") from None
    record = portal.my_record(user.actor)
    lab = lv.tenants.get(report.tenant_id)
    pdf = render_pdf(report, record, lab.name, lab.finess,
                     portal.my_specimens(user.actor, report))
    return _pdf_download(pdf, report.report_id)


def _pdf_download(pdf: bytes, report_id: str) -> Response:
    return Response(pdf, media_type="application/pdf", headers={
        **NO_STORE, "Content-Disposition": f'attachment; filename="compte-rendu-{report_id}.pdf"'})


@router.get("/portail/acces")
def portal_access_log(user: User, portal: Portal) -> Response:
    _patient(user)
    seen = portal.my_accesses(user.actor)
    return html("access_log.html", user=user, rows=seen.others[::-1],      # newest first
                own_count=seen.own_count, own_last=seen.own_last, dpo=dpo_from_env())


@router.get("/portail/donnees.json")
def portal_download(user: User, portal: Portal) -> Response:
    _patient(user)
    data = download_fr(portal.my_data(user.actor))
    body = json.dumps(data, ensure_ascii=False, indent=2, default=str).encode()
    return Response(body, media_type="application/json", headers={
        **NO_STORE, "Content-Disposition": 'attachment; filename="mes-donnees-labvault.json"'})


@router.get("/portail/effacement")
def erasure_form(user: User) -> Response:
    _patient(user)
    return html("erasure.html", user=user, request_id=None, dpo=dpo_from_env())


@router.post("/portail/effacement")
def erasure_request(request: Request, user: User, portal: Portal, csrf: Csrf = "",
                    reason: Annotated[str, Form(max_length=2000)] = "") -> Response:
    _patient(user)
    _check_csrf(request, user, csrf)
    request_id = portal.request_erasure(user.actor, reason or None)
    return html("erasure.html", user=user, request_id=request_id, dpo=dpo_from_env())


# == staff console ============================================================================
@router.get("/console")
def console_home(user: User) -> Response:
    """Where staff land after login: the patient search for the roles the policy lets
    search; for the others (lab administrators, the DPO), "Accueil" -- the pages they
    may use, rather than a search form that would refuse them."""
    _staff(user)
    if not user.may_search:
        return html("home.html", user=user)
    return html("console.html", user=user, results=None, searched=False, typed={}, errors={},
                problem=None)


# the search form's fields, as their labels say them (errors said next to them)
SEARCH_FIELDS = {"nir": "N° de sécurité sociale (NIR)", "email": "E-mail",
                 "phone": "Téléphone", "birth_name": "Nom de naissance",
                 "first_name": "Prénom", "birth_date": "Date de naissance"}
NAME_DOB = ("birth_name", "first_name", "birth_date")


@router.post("/console/recherche")
def console_search(request: Request, user: User, lv: LV, csrf: Csrf = "",
                   nir: Annotated[str, Form(max_length=TEXT)] = "",
                   email: Annotated[str, Form(max_length=320)] = "",
                   phone: Annotated[str, Form(max_length=TEXT)] = "",
                   birth_name: Annotated[str, Form(max_length=TEXT)] = "",
                   first_name: Annotated[str, Form(max_length=TEXT)] = "",
                   birth_date: Annotated[str, Form(max_length=TEXT)] = "") -> Response:
    """Search by POST: identifiers (NIR, e-mail, phone) never appear in a URL or a log.
    A search the form cannot make (no criterion, a name without its first name and birth
    date, a NIR, e-mail, phone or date that is not one): the form again (422) with what
    was typed and the reason in French next to its field; nothing searched."""
    tenant_id = _staff(user)
    _check_csrf(request, user, csrf)
    typed = {"nir": nir.strip(), "email": email.strip(), "phone": phone.strip(),
             "birth_name": birth_name.strip(), "first_name": first_name.strip(),
             "birth_date": birth_date.strip()}
    errors: dict[str, str] = {}
    problem: str | None = None
    trio = [typed[k] for k in NAME_DOB]
    if any(trio) and not all(trio):
        # the index holds the three together: one alone would find nobody
        errors = {k: "à donner avec les deux autres champs de ce cadre" for k in NAME_DOB
                  if not typed[k]}
    elif not any(typed.values()):
        problem = ("Aucun critère de recherche : donnez le NIR, l'e-mail, le téléphone, ou le "
                   "nom de naissance avec le prénom et la date de naissance.")
    if not errors and problem is None:
        try:
            ids = lv.patients.find(user.actor, tenant_id, nir=typed["nir"] or None,
                                   email=typed["email"] or None, phone=typed["phone"] or None,
                                   birth_name=typed["birth_name"] or None,
                                   first_name=typed["first_name"] or None,
                                   birth_date=typed["birth_date"] or None)
        except InvalidField as exc:
            from labvault.web.desk import rule_fr
            if exc.field not in SEARCH_FIELDS:
                raise
            errors = {exc.field: rule_fr(exc.rule)}
        else:
            results = [lv.patients.show(user.actor, pid, categories=[Category.IDENTITY])
                       for pid in ids[:SEARCH_LIMIT]]
            return html("console.html", user=user, results=results, searched=True,
                        more=len(ids) > SEARCH_LIMIT, typed={}, errors={}, problem=None)
    return html("console.html", 422, user=user, results=None, searched=False, typed=typed,
                errors=errors, problem=problem)


@router.get("/console/patients/{patient_id}")
def console_patient(patient_id: str, user: User, lv: LV,
                    renvoi: Annotated[str, Query(max_length=64)] = "") -> Response:
    """The patient's record and reports. ``renvoi``: the message "Renvoyer au
    prescripteur" just put back in the outbox (its confirmation, shown while it waits)."""
    return _patient_page(user, lv, patient_id[:64], resent=renvoi)


@dataclass(frozen=True)
class FormProblem:
    """A form of the patient's page sent back: which (``form``: its id on the page), the
    refusal in French next to the field it names, and what was typed."""

    form: str
    field: str
    message: str
    typed: dict[str, str]


def _patient_page(user: WebUser, lv: Labvault, patient_id: str, status: int = 200,
                  resent: str = "", problem: FormProblem | None = None) -> Response:
    tenant_id = _staff(user)
    record = lv.patients.show(user.actor, patient_id)
    reports: list[Any] | None = None
    if lv.gate.categories_of(Access(user.actor, Action.READ, tenant_id,
                                    frozenset({Category.CLINICAL}), resource="report",
                                    patient_ids=(record["id"],))):
        # the published ones as the compte rendu prints them ("Antériorité" column)
        reports = lv.lab.list_reports(user.actor, tenant_id, patient_id=record["id"],
                                      anteriorities=True)
    # whether each published report reached the prescriber's system (delivery), or is the
    # staff's to send: a biologist must not believe the doctor has it when they do not
    deliveries = lv.delivery.of_reports(user.actor, tenant_id, record["id"],
                                        [r.report_id for r in reports]) if reports else {}
    # the roles that receive specimens but read no report (the desk) see the orders that
    # await theirs, to receive it ("Réception du prélèvement"); the others, on the report
    waiting = (lv.lab.list_orders(user.actor, tenant_id, patient_id=record["id"],
                                  status=L.OrderStatus.REGISTERED.value)
               if user.may_receive and reports is None else None)
    return html("patient.html", status, user=user, record=record, reports=reports, staff=True,
                deliveries=deliveries, waiting=waiting,
                may_resend=bool(deliveries) and lv.delivery.may_resend(user.actor),
                resent=resent, problem=problem)


@router.get("/console/rapports/{report_id}.pdf")
def console_report_pdf(report_id: str, user: User, lv: LV) -> Response:
    """"Télécharger le compte rendu (PDF)": a published (or amended) report, the document
    the patient's portal prints, for the laboratory to send to the prescriber when no
    delivery destination takes this prescriber's reports (docs/lab.md). Read through the
    gate (resource ``report``, purpose care: the roles the policy lets read the
    laboratory's reports); one not published yet is refused; another laboratory's answers
    like an id that does not exist."""
    _staff(user)
    from labvault.web.pdf import FROM_CONSOLE
    from labvault.web.pdf import report_pdf as render_pdf
    with lv.begin():
        try:
            report = lv.lab.get_published_report(user.actor, report_id[:64],
                                                 anteriorities=True)
        except NotFound:      # another laboratory's or no such id: one answer
            raise NotFound("ce compte rendu n'existe pas dans votre laboratoire",
                           "revenez au dossier du patient") from None
        # identity only: what the report prints of the patient (minimal data)
        record = lv.patients.show(user.actor, report.patient_id, categories=[Category.IDENTITY])
    lab = lv.tenants.get(report.tenant_id)
    pdf = render_pdf(report, record, lab.name, lab.finess, report.specimens, FROM_CONSOLE)
    return _pdf_download(pdf, report.report_id)


def _biologist(user: WebUser) -> str:
    tenant_id = _staff(user)
    if L.BIOLOGIST_ROLE not in user.roles:
        raise AccessDenied("la validation biologique est réservée aux biologistes",
                           "demandez à un biologiste du laboratoire")
    return tenant_id


def _bench(user: WebUser) -> str:
    tenant_id = _staff(user)
    if not (L.TECHNICAL_ROLES & user.roles):
        raise AccessDenied("la validation technique est réservée aux techniciens et aux "
                           "biologistes", "demandez à un technicien du laboratoire")
    return tenant_id


def _notice(user: WebUser, title: str, message: str, *links: tuple[str, str]) -> Response:
    return html("notice.html", user=user, title=title, message=message, links=links)


Shown = Annotated[str | None, Form(max_length=20_000)]
Tick = Annotated[str, Form(max_length=8)]


def _expected(shown: str | None) -> dict[str, int] | None:
    """What the form showed (None: a form without the field, e.g. a script's)."""
    return None if shown is None else lab_text.parse_shown(shown)


# -- technical validation and specimen rejection (the bench) -----------------------------------
@router.get("/console/technique")
def bench_worklist(user: User, lv: LV) -> Response:
    """Results entered, waiting for technical validation; specimens received, not analysed
    yet (a non-conforming one is refused from here)."""
    tenant_id = _bench(user)
    pending = lv.lab.list_reports(user.actor, tenant_id, limit=WORKLIST_LIMIT + 1,
                                  order_status=L.OrderStatus.PRELIMINARY.value,
                                  urgent_first=True, previous=True)
    received = lv.lab.list_orders(user.actor, tenant_id, status=L.OrderStatus.RECEIVED.value,
                                  limit=WORKLIST_LIMIT + 1, specimens=True)
    more = {"pending": len(pending) > WORKLIST_LIMIT, "received": len(received) > WORKLIST_LIMIT}
    pending, received = pending[:WORKLIST_LIMIT], _urgent_first(received[:WORKLIST_LIMIT])
    return html("technique.html", user=user, pending=pending, received=received, staff=True,
                more=more, limit=WORKLIST_LIMIT)


def _urgent_first(orders: list[Any]) -> list[Any]:
    """Stat, then urgent orders first, each group oldest first (as the lists are read)."""
    rank = {L.Priority.STAT: 0, L.Priority.URGENT: 1}
    return sorted(orders, key=lambda o: rank.get(o.priority, 2))


@router.post("/console/technique/{order_id}")
def validate_technical(request: Request, order_id: str, user: User, lv: LV, csrf: Csrf = "",
                       shown: Shown = None) -> Response:
    """"Valider techniquement": the results as shown on the page (``shown``)."""
    _bench(user)
    _check_csrf(request, user, csrf)
    view = lv.lab.validate_technical(user.actor, order_id[:64], _expected(shown))
    return _notice(user, "Validation technique",
                   "Résultats validés techniquement : la demande attend maintenant la "
                   "validation biologique.",
                   (f"/console/patients/{view.patient_id}", "Voir le dossier"),
                   ("/console/technique", "Retour à la liste"))


@router.post("/console/demandes/{order_id}/refus")
def reject_specimen(request: Request, order_id: str, user: User, lv: LV, csrf: Csrf = "",
                    reason: Annotated[str, Form(max_length=64)] = "",
                    comment: Annotated[str, Form(max_length=2000)] = "") -> Response:
    """"Refuser le prélèvement" with a reason from the list (whoever the gate lets decide
    on a specimen: the desk before analysis, the bench, the biologist)."""
    _staff(user)
    _check_csrf(request, user, csrf)
    if reason not in lab_text.REJECTION_FR:
        raise UserError("motif de refus manquant ou inconnu", "choisissez le motif dans la liste")
    view = lv.lab.reject(user.actor, order_id[:64], reason, comment.strip() or None)
    return _notice(user, "Prélèvement refusé",
                   f"Prélèvement refusé ({lab_text.REJECTION_FR[reason]}) : la demande est "
                   "close et ses résultats éventuels sont annulés.",
                   (f"/console/patients/{view.patient_id}", "Voir le dossier"),
                   ("/console/technique", "Retour à la liste"))


# -- biological validation and publication (the biologist) ---------------------------------------
def _validation_page(user: WebUser, lv: Labvault, tenant_id: str,
                     done: BulkValidation | None = None) -> Response:
    # with each result's previous result (the delta check): what the biologist compares
    # before validating, and why "valider tous les normaux" would hold an order
    waiting = lv.lab.list_reports(user.actor, tenant_id, limit=WORKLIST_LIMIT + 1,
                                  order_status=L.OrderStatus.TECHNICALLY_VALIDATED.value,
                                  urgent_first=True, previous=True)
    to_publish = lv.lab.list_reports(user.actor, tenant_id, limit=WORKLIST_LIMIT + 1,
                                     order_status=L.OrderStatus.FINAL.value, urgent_first=True)
    more = {"waiting": len(waiting) > WORKLIST_LIMIT,
            "to_publish": len(to_publish) > WORKLIST_LIMIT}
    waiting, to_publish = waiting[:WORKLIST_LIMIT], to_publish[:WORKLIST_LIMIT]
    rows = [(r, r.review()) for r in waiting]
    labels = {r.order_id: f"Demande du {fr_datetime(r.created_at)}" for r in waiting}
    gone = [] if done is None else [o for o in done.skipped
                                    if done.reasons[o].reason == "not-waiting"]
    return html("validation.html", user=user, rows=rows, to_publish=to_publish, done=done,
                labels=labels, validated=None, staff=True, more=more, limit=WORKLIST_LIMIT,
                gone=gone, panics=_open_panics(user, lv, tenant_id))


@router.get("/console/validation")
def validation_worklist(user: User, lv: LV) -> Response:
    """The biologist's worklist: open panic values first (a critical result is the
    biologist's to phone in, whatever its validation step), then the technically
    validated orders."""
    return _validation_page(user, lv, _biologist(user))


def _open_panics(user: WebUser, lv: Labvault, tenant_id: str) -> list[dict[str, Any]]:
    """The lab's open panic-value alerts, each with its result (an audited read) and the
    link to the patient's order; none without the guard's alert store."""
    from labvault.services.alerts import AlertService
    if not isinstance(lv.alerts, AlertService):
        return []
    out = []
    for a in lv.alerts.list(user.actor, tenant_id, status="open", limit=200):
        ids = _alert_ids(a)
        if a["kind"] != "panic-value":
            continue
        obs: Any = None
        issue: dict[str, Any] | None = None
        try:
            if "observation_id" in ids:
                obs = lv.lab.get_observation(user.actor, ids["observation_id"])
            elif "issue_id" in ids:
                # a critical value waiting in the import-issues queue (patient not matched,
                # order already validated...): the biologist's to phone in now as well
                issue = lv.lab.messages.get_issue(user.actor, ids["issue_id"])
            else:
                continue
        except NotFound:          # the patient was erased since: the alert stays listed
            pass
        out.append({**a, "ids": ids, "observation": obs, "issue": issue,
                    "link": _order_link(ids)})
    return out


def _alert_ids(alert: dict[str, Any]) -> dict[str, str]:
    """The ids in an alert's detail (never free text)."""
    d = alert.get("detail")
    if isinstance(d, dict) and isinstance(d.get("detail"), dict):   # {detail, actor}
        d = d["detail"]
    return ({k: v for k, v in d.items() if k.endswith("_id") and isinstance(v, str)}
            if isinstance(d, dict) else {})


def _closed_by(alert: dict[str, Any]) -> str | None:
    """How an alert closed with the work it stood for (``AlertService.close_about``'s
    note), in the console's words; None: acknowledged by hand, or open."""
    d = alert.get("detail")
    note = d.get("closed") if isinstance(d, dict) else None
    if not isinstance(note, dict) or note.get("by") != "import-issue":
        return None
    issue = note.get("issue_id", "")
    if note.get("resolution") == "discarded":
        return f"close avec le message d'automate {issue}, classé sans enregistrer ses résultats"
    return (f"close avec le message d'automate {issue}, rattaché au dossier du patient : la "
            "valeur y suit le circuit des résultats (une valeur critique y a son alerte)")


def _order_link(ids: dict[str, str]) -> str | None:
    """The patient's page, at the order (its reports are anchored by order id)."""
    if "patient_id" not in ids:
        return None
    return f"/console/patients/{ids['patient_id']}" + (
        f"#{ids['order_id']}" if "order_id" in ids else "")


@router.post("/console/validation")
def validate_all_normal(request: Request, user: User, lv: LV, csrf: Csrf = "",
                        shown: Annotated[list[str] | None, Form(max_length=1000)] = None
                        ) -> Response:
    """"Valider tous les normaux": only the orders the page showed (one ``shown`` field
    each), still as shown, all normal and complete; the others stay, each with its reason."""
    tenant_id = _biologist(user)
    _check_csrf(request, user, csrf)
    expected = None if shown is None else lab_text.parse_shown_orders(shown)
    done = lv.lab.validate_all_normal(user.actor, tenant_id, expected=expected,
                                      partial=False)
    return _validation_page(user, lv, tenant_id, done)


@router.post("/console/validation/{order_id}")
def validate_one(request: Request, order_id: str, user: User, lv: LV, csrf: Csrf = "",
                 conclusion: Annotated[str, Form(max_length=2000)] = "",
                 shown: Shown = None, partial: Tick = "", diffuser: Tick = "") -> Response:
    """Biological validation of one order after review (its results out of range or not),
    with the biologist's conclusion if written (sealed with the report); "Valider et
    diffuser" publishes it in the same transaction."""
    _biologist(user)
    _check_csrf(request, user, csrf)
    with lv.begin():
        report = lv.lab.validate_biological(user.actor, order_id[:64],
                                            conclusion.strip() or None, _expected(shown),
                                            partial=bool(partial))
        if diffuser:
            report = lv.lab.publish(user.actor, report.order_id, partial=bool(partial))
    return html("validation.html", user=user, rows=None, done=None, validated=report,
                staff=True, to_prescriber=to_prescriber(report.queued))


@router.post("/console/diffusion/{order_id}")
def publish(request: Request, order_id: str, user: User, lv: LV, csrf: Csrf = "",
            partial: Tick = "") -> Response:
    """"Diffuser": the validated report reaches the patient's portal, and is queued for the
    prescriber's system when a delivery destination matches; otherwise labvault sends
    nothing to the prescriber: the page says which."""
    _biologist(user)
    _check_csrf(request, user, csrf)
    report = lv.lab.publish(user.actor, order_id[:64], partial=bool(partial))
    return _notice(user, "Compte rendu diffusé",
                   "Compte rendu diffusé : le patient peut le lire sur son portail."
                   + (" Il est partiel." if report.missing else "") + " "
                   + to_prescriber(report.queued),
                   (f"/console/rapports/{report.report_id}.pdf", DOWNLOAD),
                   (f"/console/patients/{report.patient_id}", "Voir le dossier"),
                   ("/console/validation", "Retour à la liste"))


@router.post("/console/demandes/{order_id}/conclusion")
def revise_conclusion(request: Request, order_id: str, user: User, lv: LV, csrf: Csrf = "",
                      conclusion: Annotated[str, Form(max_length=8000)] = "",
                      reason: Annotated[str, Form(max_length=2000)] = "") -> Response:
    """A biologist rewrites a validated report's conclusion (after publication: with a
    reason, the previous text kept and shown as corrected)."""
    _biologist(user)
    _check_csrf(request, user, csrf)
    try:
        report = lv.lab.revise_conclusion(user.actor, order_id[:64], conclusion,
                                          reason.strip() or None)
    except InvalidField as exc:
        # the page again, the text typed kept and the refusal next to its field
        said = lab_text.french(exc, user.actor.id)
        if exc.field not in ("conclusion", "reason") or said is None:
            raise
        order = lv.lab.get_order(user.actor, order_id[:64])
        return _patient_page(user, lv, order.patient_id, 422, problem=FormProblem(
            f"conclusion-{order.order_id}", exc.field, said[0],
            {"conclusion": conclusion, "reason": reason}))
    return RedirectResponse(f"/console/patients/{report.patient_id}", status_code=303,
                            headers=NO_STORE)


@router.post("/console/demandes/{order_id}/correction")
def amend_result(request: Request, order_id: str, user: User, lv: LV, csrf: Csrf = "",
                 observation_id: Annotated[str, Form(max_length=64)] = "",
                 value: Annotated[str, Form(max_length=TEXT)] = "",
                 reason: Annotated[str, Form(max_length=2000)] = "") -> Response:
    """"Corriger un résultat" of a published report (a biologist, with a reason): the
    same call as ``POST /api/v1/observations/{id}/amendment`` (``lv.lab.amend``) -- the
    previous value kept in the history and shown with the report, a critical new value
    alerting at once; the result keeps its test and unit. Then back to the patient's
    page, which says to send the corrected report to the prescriber."""
    _biologist(user)
    _check_csrf(request, user, csrf)
    obs = lv.lab.get_observation(user.actor, observation_id)
    if obs.order_id != order_id:
        raise NotFound("ce résultat n'appartient pas à cette demande",
                       "revenez au dossier du patient et rechargez-le")
    if obs.observation.kind != L.ValueKind.NUMERIC or obs.status == "cancelled":
        raise UserError("seul un résultat numérique en vigueur se corrige depuis la console",
                        "pour un résultat codé ou textuel, utilisez l'API "
                        "(POST /api/v1/observations/{id}/amendment)")
    typed = {"observation_id": obs.observation_id, "value": value, "reason": reason}
    form = f"correction-{obs.order_id}"
    if not value.strip():
        return _patient_page(user, lv, obs.patient_id, 422, problem=FormProblem(
            form, "value", "la valeur corrigée manque : saisissez-la (avec une virgule ou un "
                           "point)", typed))
    try:
        lv.lab.amend(user.actor, obs.observation_id,
                     {"code": obs.observation.code, "value": value.strip(),
                      **({"unit": obs.observation.unit} if obs.observation.unit else {})},
                     reason)
    except InvalidField as exc:
        said = lab_text.french(exc, user.actor.id)
        if said is None:
            raise
        field = "reason" if exc.field == "reason" else "value"
        return _patient_page(user, lv, obs.patient_id, 422,
                             problem=FormProblem(form, field, said[0], typed))
    return RedirectResponse(f"/console/patients/{obs.patient_id}#{obs.order_id}",
                            status_code=303, headers=NO_STORE)


@router.post("/console/envois/{outbox_id}/renvoi")
def resend_report(request: Request, outbox_id: str, user: User, lv: LV, csrf: Csrf = "",
                  motif: Annotated[str, Form(max_length=2000)] = "",
                  retour: Annotated[str, Form(max_length=TEXT)] = "") -> Response:
    """"Renvoyer au prescripteur" beside a report the prescriber's system did not get: the
    same call as ``POST /api/v1/deliveries/{id}/resend`` (``lv.delivery.resend``: the
    message pending again, its alert acknowledged, audited with the reason). Then back to
    the outbox page when the form came from it (``retour``, only ``RESEND_RETURNS``),
    otherwise to the patient's page, at the report; either confirms it. A lab
    administrator, who reads no report, gets the confirmation alone."""
    tenant_id = _staff(user)
    _check_csrf(request, user, csrf)
    if not motif.strip():
        # the page the form was on again, the refusal next to the field
        said = ("le motif manque : dites pourquoi le compte rendu est renvoyé (par exemple : "
                "patient créé dans le logiciel du médecin)")
        if retour in RESEND_RETURNS:
            return _outbox_page(user, lv, tenant_id, status=422, problem=(outbox_id, said))
        row = next((d for d in lv.delivery.status(user.actor, tenant_id, ("failed",))
                    if d["id"] == outbox_id), None)
        if row is not None and may(lv, user.actor, Action.READ, "report",
                                   frozenset({Category.CLINICAL})):
            return _patient_page(user, lv, row["patient_id"], 422, problem=FormProblem(
                f"renvoi-{outbox_id}", "motif", said, {"motif": motif}))
        raise UserError("le motif manque", "revenez en arrière, dites pourquoi le compte rendu "
                        "est renvoyé (par exemple : patient créé dans le logiciel du médecin), "
                        "puis renvoyez le formulaire")
    sent = lv.delivery.resend(user.actor, tenant_id, outbox_id, motif)
    if retour in RESEND_RETURNS:
        return RedirectResponse(f"{retour}?renvoi={sent['id']}#envoi-{sent['id']}",
                                status_code=303, headers=NO_STORE)
    if may(lv, user.actor, Action.READ, "report", frozenset({Category.CLINICAL})):
        return RedirectResponse(f"/console/patients/{sent['patient_id']}?renvoi={sent['id']}"
                                f"#{sent['order_id']}", status_code=303, headers=NO_STORE)
    return _notice(user, "Compte rendu renvoyé", RESENT, ("/console", "Retour à la console"))


@router.get(OUTBOX)
def outbox_page(user: User, lv: LV,
                renvoi: Annotated[str, Query(max_length=64)] = "") -> Response:
    """"Transmissions aux prescripteurs": where the laboratory's messages to the
    prescribers' systems stand, newest first -- not delivered (to send again, or to pass
    on another way), waiting, the last delivered -- through ``lv.delivery.status`` (three
    audited reads: a flood of waiting messages never hides a failed one). Ids, times,
    attempts, the destination's name and, for failed ones, the receiver's error as the
    service returns it; never a message nor a patient's name. Those who read reports
    (biologists) get a link to the order. ``renvoi``: the message just sent again."""
    return _outbox_page(user, lv, _staff(user), renvoi)


def _outbox_page(user: WebUser, lv: Labvault, tenant_id: str, renvoi: str = "",
                 status: int = 200, problem: tuple[str, str] | None = None) -> Response:
    """``problem``: a "Renvoyer au prescripteur" refused (the message's id, the refusal
    said next to its form's field)."""
    failed = _outbox_rows(lv, user, tenant_id, "failed", OUTBOX_OPEN_LIMIT + 1)
    pending = _outbox_rows(lv, user, tenant_id, "pending", OUTBOX_OPEN_LIMIT + 1)
    delivered = _outbox_rows(lv, user, tenant_id, "delivered", OUTBOX_DELIVERED_SHOWN)
    reads_reports = may(lv, user.actor, Action.READ, "report", frozenset({Category.CLINICAL}))
    for d in (*failed, *pending, *delivered):
        d["link"] = (_order_link({"patient_id": d["patient_id"], "order_id": d["order_id"]})
                     if reads_reports else None)
    more = len(failed) > OUTBOX_OPEN_LIMIT or len(pending) > OUTBOX_OPEN_LIMIT
    return html("outbox.html", status, user=user, failed=failed[:OUTBOX_OPEN_LIMIT],
                pending=pending[:OUTBOX_OPEN_LIMIT], delivered=delivered, more=more,
                limit=OUTBOX_OPEN_LIMIT, delivered_shown=OUTBOX_DELIVERED_SHOWN,
                may_resend=bool(failed) and lv.delivery.may_resend(user.actor),
                resent=renvoi if any(d["id"] == renvoi for d in pending) else "",
                problem=problem)


def _outbox_rows(lv: Labvault, user: WebUser, tenant_id: str, status: str,
                 limit: int) -> list[dict[str, Any]]:
    """One status of the outbox, newest first (a role without ``delivery`` read: the
    gate's refusal, recorded, said in the console's words)."""
    try:
        return lv.delivery.status(user.actor, tenant_id, (status,), limit=limit,
                                  newest_first=True)
    except AccessDenied as exc:
        if not lab_text.policy_refusal(exc):                # e.g. a read budget: as it is
            raise
        raise AccessDenied("les transmissions aux prescripteurs sont réservées aux "
                           "biologistes et aux administrateurs du laboratoire",
                           "demandez à un biologiste du laboratoire") from None


def _alert_store(user: WebUser, lv: Labvault) -> tuple[str, AlertService, Reach]:
    """The caller's laboratory, the guard's alert store and which alerts the caller may
    see: the DPO and lab admins every alert, biologists the clinical ones (panic values)."""
    from labvault.services.alerts import AlertService, reach  # the guard's, plugged by wiring
    tenant_id = _staff(user)
    try:
        which = reach(user.actor)
    except AccessDenied:
        raise AccessDenied("les alertes sont réservées aux biologistes (valeurs critiques), au "
                           "délégué à la protection des données et aux administrateurs du "
                           "laboratoire", "") from None
    if not isinstance(lv.alerts, AlertService):
        raise NotFound("aucun registre d'alertes n'est branché",
                       "lancez labvault avec `labvault serve` (services.wiring)")
    return tenant_id, lv.alerts, which


@router.post("/console/alertes/{alert_id}/prise-en-compte")
def alert_ack(request: Request, alert_id: str, user: User, lv: LV, csrf: Csrf = "",
              retour: Annotated[str, Form(max_length=TEXT)] = "") -> Response:
    """Acknowledge one alert (the same service call as `labvault alerts ack`, audited: who
    and when); back to the page the form was on."""
    _, alerts, _ = _alert_store(user, lv)
    _check_csrf(request, user, csrf)
    alerts.ack(user.actor, alert_id)
    back = retour if retour in ACK_RETURNS else "/console/alertes"
    return RedirectResponse(back, status_code=303, headers=NO_STORE)


@router.get("/console/alertes")
def alerts_list(user: User, lv: LV) -> Response:
    """The laboratory's alerts (guard's alert store): every alert for its DPO and lab
    admins, the clinical ones (panic values, reports the prescriber's system did not get)
    for its biologists (with the link to the patient's order)."""
    tenant_id, alerts, which = _alert_store(user, lv)
    items = alerts.list(user.actor, tenant_id, limit=200)
    clinical_reader = L.BIOLOGIST_ROLE in user.roles
    for a in items:       # ids only (never free text) in the references column
        a["ids"] = _alert_ids(a)
        a["closed"] = _closed_by(a)
        a["link"] = _order_link(a["ids"]) if (clinical_reader
                                              and a["kind"] in CLINICAL_KINDS) else None
    return html("alerts.html", user=user, alerts=items, clinical_only=which.kinds is not None)


# == identity vigilance: merging a duplicate record (the lab administrator) ====================
MERGE = "/console/fusion"
PatientId = Annotated[str, Query(max_length=64)]


def _merger(user: WebUser) -> str:
    tenant_id = _staff(user)
    if not user.may_merge:
        raise AccessDenied("la fusion de doublons est réservée au référent "
                           "d'identitovigilance (administrateur du laboratoire)",
                           "demandez-lui de fusionner les deux dossiers")
    return tenant_id


@router.get(MERGE)
def merge_start(user: User, conserve: PatientId = "", doublon: PatientId = "") -> Response:
    """"Fusionner un doublon" from the console's menu: the ids of the record kept and of
    the duplicate (a lab administrator reads no identity: ids only), then the record kept's
    merge page."""
    _merger(user)
    if conserve.strip():
        # the ids as typed, quoted: a redirect within the console whatever was typed
        query = f"?doublon={quote(doublon.strip(), safe='')}" if doublon.strip() else ""
        return RedirectResponse(f"/console/patients/{quote(conserve.strip(), safe='')}"
                                f"/fusion{query}", status_code=303, headers=NO_STORE)
    return html("merge.html", user=user, survivor_id=None, duplicate_id=None, cmp=None,
                shown={}, error=None, done=None, motif_error=None)


def _merge_page(user: WebUser, lv: Labvault, survivor_id: str, duplicate_id: str | None,
                status: int = 200, error: tuple[str, str] | None = None,
                done: MergeReport | None = None, motif: str = "", forced: bool = False,
                motif_error: str | None = None) -> Response:
    """The merge form: both records side by side, compared by ``lv.merges.compare`` (the
    traits that differ, by name) -- and their identity only when the policy lets the
    caller read it (a lab administrator: never; ids and the comparison only). Sent
    again after a refusal: what was typed (``motif``, ``forced``) kept, ``motif_error``
    said next to the reason's field."""
    cmp: Comparison | None = None
    if done is None:
        try:
            cmp = lv.merges.compare(user.actor, survivor_id, duplicate_id or None)
        except MergeRefused as exc:
            if duplicate_id is None:
                raise
            error = error or lab_text.merge_fr(exc)
            status = 409
            cmp = lv.merges.compare(user.actor, survivor_id, None)
    shown: dict[str, dict[str, Any]] = {}
    if done is None and may(lv, user.actor, Action.READ, "patient",
                            frozenset({Category.IDENTITY})):
        for pid in filter(None, (survivor_id, duplicate_id if cmp and cmp.duplicate_id
                                 else None)):
            shown[pid] = lv.patients.show(user.actor, pid, categories=[Category.IDENTITY])
    return html("merge.html", status, user=user, survivor_id=survivor_id,
                duplicate_id=duplicate_id, cmp=cmp, shown=shown, error=error, done=done,
                traits=lab_text.MERGE_TRAITS_FR, moved_fr=lab_text.MERGE_MOVED_FR,
                traits_fr=lab_text.traits_fr, motif=motif, forced=forced,
                motif_error=motif_error, min_reason=MERGE_MIN_REASON)


@router.get("/console/patients/{patient_id}/fusion")
def merge_form(patient_id: str, user: User, lv: LV, doublon: PatientId = "") -> Response:
    """"Fusionner un doublon" into this record: the duplicate's id, then both records
    compared -- the traits on which they differ and which of them refuse the merge unless
    forced (birth date, sex, NIR, INS) -- a reason, and "forcer" only when they differ."""
    _merger(user)
    return _merge_page(user, lv, patient_id[:64], doublon.strip() or None)


@router.post("/console/patients/{patient_id}/fusion")
def merge_duplicate(request: Request, patient_id: str, user: User, lv: LV, csrf: Csrf = "",
                    doublon: Annotated[str, Form(max_length=64)] = "",
                    motif: Annotated[str, Form(max_length=2000)] = "",
                    forcer: Tick = "") -> Response:
    """The merge (``lv.merges.merge``, the same call as ``POST
    /api/v1/patients/{id}/merge``): then what moved, counted; refused: the form again
    with the refusal in French, nothing changed."""
    _merger(user)
    _check_csrf(request, user, csrf)
    survivor_id, duplicate_id = patient_id[:64], doublon.strip()
    if not duplicate_id:             # (the form always sends it: a script's request)
        return _merge_page(user, lv, survivor_id, None, 422, (
            "l'identifiant du doublon manque", "donnez l'identifiant du dossier en double"))
    if len(motif.strip()) < MERGE_MIN_REASON:
        # the service's own rule (it refuses too), said next to the field, the form kept
        return _merge_page(user, lv, survivor_id, duplicate_id, 422, motif=motif,
                           forced=bool(forcer), motif_error=f"le motif manque ou est trop court (au moins "
                                       f"{MERGE_MIN_REASON} caractères) : dites pourquoi les "
                                       "deux dossiers sont la même personne")
    try:
        report = lv.merges.merge(user.actor, survivor_id, duplicate_id, motif.strip(),
                                 force=bool(forcer))
    except MergeRefused as exc:
        return _merge_page(user, lv, survivor_id, duplicate_id, 409, lab_text.merge_fr(exc),
                           motif=motif, forced=bool(forcer))
    return _merge_page(user, lv, survivor_id, duplicate_id, done=report)
