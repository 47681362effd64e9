"""The reception desk's console pages (docs/web.md, "Reception desk").

"Nouveau patient" registers a patient who walks in (``lv.patients.register``, the call
behind ``POST /api/v1/patients``); "Nouvelle demande", from a patient's page, records the
prescription and the specimen collected at the desk (``lv.lab.create_order`` with its
specimen, one transaction), then shows the number to write on the tube; "Réception du
prélèvement" records the specimen of an order that awaits it (``lv.lab.receive_specimen``).
The pages are offered to the roles the policy lets write patients / orders / specimens
(``routes.may_write``); the services still pass the gate, which decides and audits. A
field the services refuse is said in French next to it, the form comes back filled in,
and nothing is stored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field

from labvault.api.deps import LV
from labvault.domain import lab as L
from labvault.domain.categories import Category
from labvault.domain.validation import BLOOD_GROUPS
from labvault.errors import AccessDenied, InvalidField, InvalidRecord, RecordChanged
from labvault.services.lab import FillerNumberTaken, OrderView, awaits_specimen
from labvault.web.render import NO_STORE, PARIS, SPECIMEN_FR, WebRoute, html, phone_fr
from labvault.web.routes import TEXT, User, WebUser, _check_csrf, _staff, may_write

router = APIRouter(route_class=WebRoute, include_in_schema=False)

NEW_PATIENT = "/console/nouveau-patient"
RECEPTION = "/console/demandes/{order_id}/reception"
# a collection time a little ahead of the server's clock is a clock's drift, not an error
CLOCK_SLACK = timedelta(minutes=5)


class RegistrationForm(BaseModel):
    """The "Nouveau patient" form, field by field (an import line once assembled)."""

    csrf: str = Field("", max_length=200)
    birth_name: str = Field("", max_length=TEXT)
    used_name: str = Field("", max_length=TEXT)
    first_names: str = Field("", max_length=TEXT)
    birth_date: str = Field("", max_length=20)
    sex: str = Field("", max_length=8)
    birth_place_insee: str = Field("", max_length=20)
    nir: str = Field("", max_length=40)
    ins: str = Field("", max_length=40)
    address_line: str = Field("", max_length=TEXT)
    postal_code: str = Field("", max_length=20)
    city: str = Field("", max_length=TEXT)
    country: str = Field("", max_length=8)
    phone: str = Field("", max_length=40)
    email: str = Field("", max_length=320)
    doctor_name: str = Field("", max_length=TEXT)
    doctor_rpps: str = Field("", max_length=40)
    amo: str = Field("", max_length=TEXT)
    amc: str = Field("", max_length=TEXT)
    member_id: str = Field("", max_length=60)
    blood_group: str = Field("", max_length=8)
    seen: str = Field("", max_length=40)     # "Modifier": the record's version as shown

    def record(self) -> dict[str, Any]:
        """The import-line shape (docs/formats.md) ``PatientRecord.parse`` reads; a part
        left blank (address, usual doctor, coverage) is left out."""
        s = {k: v.strip() for k, v in self.model_dump().items()}
        out: dict[str, Any] = {
            "birth_name": s["birth_name"], "used_name": s["used_name"],
            # several first names are written separated by commas, as on an identity card
            "first_names": [f.strip() for f in s["first_names"].split(",") if f.strip()],
            "birth_date": s["birth_date"], "sex": s["sex"],
            "birth_place_insee": s["birth_place_insee"], "nir": s["nir"], "ins": s["ins"],
            "phone": s["phone"], "email": s["email"], "blood_group": s["blood_group"]}
        if s["address_line"] or s["postal_code"] or s["city"]:
            out["address"] = {"line": s["address_line"], "postal_code": s["postal_code"],
                              "city": s["city"], "country": s["country"] or "FR"}
        if s["doctor_name"] or s["doctor_rpps"]:
            out["prescriber"] = {"name": s["doctor_name"], "rpps": s["doctor_rpps"]}
        if s["amo"] or s["amc"] or s["member_id"]:
            out["coverage"] = {"amo": s["amo"], "amc": s["amc"], "member_id": s["member_id"]}
        return {k: v for k, v in out.items() if v not in ("", [])}


class OrderForm(BaseModel):
    """The "Nouvelle demande" form: the prescription, and the specimen if collected now."""

    csrf: str = Field("", max_length=200)
    tests: list[str] = Field(default_factory=list, max_length=200)
    prescriber_name: str = Field("", max_length=TEXT)
    prescriber_rpps: str = Field("", max_length=40)
    priority: str = Field("routine", max_length=16)
    clinical_notes: str = Field("", max_length=4000)
    collected: str = Field("", max_length=8)          # the tick: specimen collected now
    specimen_type: str = Field("", max_length=16)
    collected_at: str = Field("", max_length=40)      # Paris time (datetime-local)
    accession_number: str = Field("", max_length=80)  # a pre-printed label's number


# the form's inputs of each category of the record (its sections), and the record's field
# each input is part of
SECTIONS: Mapping[str, tuple[str, ...]] = {
    "identity": ("birth_name", "used_name", "first_names", "birth_date", "sex",
                 "birth_place_insee", "nir", "ins"),
    "contact": ("address_line", "postal_code", "city", "country", "phone", "email"),
    "coverage": ("amo", "amc", "member_id"),
    "clinical": ("blood_group", "doctor_name", "doctor_rpps"),
}
RECORD_FIELD: Mapping[str, str] = {
    **{i: i for inputs in SECTIONS.values() for i in inputs},
    **dict.fromkeys(("address_line", "postal_code", "city", "country"), "address"),
    **dict.fromkeys(("amo", "amc", "member_id"), "coverage"),
    **dict.fromkeys(("doctor_name", "doctor_rpps"), "prescriber")}


def form_values(record: Mapping[str, Any]) -> dict[str, str]:
    """A stored record (``PatientService.show``) as the patient form's inputs show it
    (``RegistrationForm.record`` reads them back): first names separated by commas, the
    phone as people write it."""
    addr, cov = record.get("address") or {}, record.get("coverage") or {}
    doc = record.get("prescriber") or {}
    values = {
        **{f: str(record.get(f) or "") for f in SECTIONS["identity"] if f != "first_names"},
        "first_names": ", ".join(record.get("first_names") or ()),
        "address_line": addr.get("line", ""), "postal_code": addr.get("postal_code", ""),
        "city": addr.get("city", ""), "country": addr.get("country", ""),
        "phone": phone_fr(record["phone"]) if record.get("phone") else "",
        "email": record.get("email") or "", "amo": cov.get("amo") or "",
        "amc": cov.get("amc") or "", "member_id": cov.get("member_id") or "",
        "blood_group": record.get("blood_group") or "", "doctor_name": doc.get("name") or "",
        "doctor_rpps": doc.get("rpps") or ""}
    return values


class ReceptionForm(BaseModel):
    """The "Réception du prélèvement" form: the specimen an order awaits."""

    csrf: str = Field("", max_length=200)
    specimen_type: str = Field("", max_length=16)
    collected_at: str = Field("", max_length=40)      # Paris time (datetime-local)
    accession_number: str = Field("", max_length=80)  # the tube's label


# the form's input for each field a service names (registration, then order and specimen)
PATIENT_INPUTS: Mapping[str, str] = {
    "address.line": "address_line", "address.postal_code": "postal_code",
    "address.city": "city", "address.country": "country", "prescriber.name": "doctor_name",
    "prescriber.rpps": "doctor_rpps", "coverage.amo": "amo", "coverage.amc": "amc",
    "coverage.member_id": "member_id"}
ORDER_INPUTS: Mapping[str, str] = {
    "prescriber.name": "prescriber_name", "prescriber.rpps": "prescriber_rpps",
    "type": "specimen_type"}

_RULE_FR: Mapping[str, str] = {
    "is required": "est obligatoire",
    "must be a non-empty list of first names": "est obligatoire (au moins un prénom)",
    "contains characters that are not part of a name":
        "ne peut contenir que des lettres, des espaces, des traits d'union et des apostrophes",
    "must be text": "n'est pas valable",
    "must be a date YYYY-MM-DD": "n'est pas une date valable (jour, mois, année)",
    "is in the future": "est dans le futur : vérifiez l'année",
    "is before 1880": "est antérieure à 1880 : vérifiez l'année",
    "must be F, M or U": "choisissez féminin, masculin ou inconnu",
    "must be a 5-character INSEE commune code":
        "doit compter 5 caractères : le code INSEE de la commune (par exemple 75056 pour "
        "Paris, 2A004 pour Ajaccio, 99 suivi du code du pays pour une naissance à l'étranger)",
    "must be an ABO/Rh group": "choisissez le groupe sanguin dans la liste",
    "must be a 15-character NIR": "doit compter 15 caractères (par exemple 1 84 12 76 451 089 46)",
    "control key does not match": "la clé (les 2 derniers chiffres) ne correspond pas aux 13 "
                                  "premiers : vérifiez les 15 caractères sur la carte Vitale",
    "year/month of birth in the NIR do not match birth_date":
        "l'année et le mois de naissance qu'il contient (chiffres 2 à 5) ne correspondent pas "
        "à la date de naissance : vérifiez le NIR et la date",
    "a patient with this NIR is already registered in this laboratory":
        "un autre patient du laboratoire a déjà ce NIR : recherchez-le par ce NIR (« Recherche "
        "de patient ») et utilisez son dossier, ou corrigez le NIR",
    "is not a phone number": "n'est pas un numéro de téléphone (par exemple 06 12 34 56 78)",
    "is not a valid phone number for its country":
        "n'est pas un numéro valable : vérifiez le nombre de chiffres et l'indicatif",
    "must be 5 digits for a French address": "doit compter 5 chiffres pour une adresse en France",
    "must be 11 digits": "doit compter 11 chiffres (il figure sur l'ordonnance)",
    "check digit (Luhn) does not match":
        "le dernier chiffre (la clé) ne correspond pas : vérifiez les 11 chiffres",
    "must be a non-empty list of LOINC codes": "choisissez au moins une analyse",
    "must be a LOINC code (digits-checkdigit)": "n'est pas une analyse du catalogue",
    "LOINC check digit does not match": "n'est pas une analyse du catalogue",
    "must be routine, urgent or stat": "choisissez normale, urgente ou très urgente",
    "is not a known specimen type": "choisissez le type de prélèvement dans la liste",
    "must be an ISO 8601 date-time": "n'est pas une date et une heure valables",
    "is out of range": "n'est pas une date plausible : vérifiez l'année",
}
_NIR_FORMAT_FR: Mapping[str, str] = {
    "length": "doit compter 15 caractères (13 chiffres et la clé de 2 chiffres)",
    # python-stdnum checks the characters before the length: "123" is a format error
    "format": "doit compter 15 caractères, tous des chiffres (sauf 2A ou 2B aux 6e et 7e "
              "places pour une naissance en Corse)",
}


def rule_fr(rule: str) -> str:
    """A field rule of the services (English) in the console's words; a rule without its
    French words is still said in French, never in English."""
    if rule in _RULE_FR:
        return _RULE_FR[rule]
    m = re.fullmatch(r"first digit (\d) does not match sex ([FM])", rule)
    if m:
        sex = "masculin" if m.group(2) == "M" else "féminin"
        return (f"le premier chiffre ({m.group(1)}) ne correspond pas au sexe {sex} : 1 pour "
                "un homme, 2 pour une femme")
    m = re.fullmatch(r"not a valid NIR \(.*(length|format).*\)", rule)
    if m:
        return _NIR_FORMAT_FR[m.group(1)]
    if rule.startswith("not a valid NIR"):
        return "n'est pas un NIR valable : vérifiez les 15 caractères sur la carte Vitale"
    if rule.startswith("is not a valid e-mail address"):
        return "n'est pas une adresse e-mail valable (par exemple jeanne.martin@exemple.fr)"
    m = re.fullmatch(r"is longer than (\d+) characters", rule)
    if m:
        return f"dépasse {m.group(1)} caractères"
    return "n'est pas valable"


def number_taken_fr(number: str) -> str:
    """A tube number another order of the laboratory has already (``FillerNumberTaken``)."""
    return (f"le n° {number} est déjà celui d'une autre demande du laboratoire : prenez "
            "l'étiquette suivante et saisissez son numéro (un n° de tube ne désigne qu'une "
            "demande : les résultats de l'automate la retrouvent par ce numéro)")


def field_errors(errors: Iterable[InvalidField], inputs: Mapping[str, str]) -> dict[str, list[str]]:
    """The services' field errors by form input (``first_names[1]`` is the first names'
    input, ``tests[0]`` the tests'), in French."""
    out: dict[str, list[str]] = {}
    for e in errors:
        name = re.sub(r"\[\d+\]$", "", e.field)
        msg = rule_fr(e.rule)
        if msg not in out.setdefault(inputs.get(name, name), []):
            out[inputs.get(name, name)].append(msg)
    return out


def _refused(exc: InvalidRecord | InvalidField) -> list[InvalidField]:
    return exc.errors if isinstance(exc, InvalidRecord) else [exc]


_DESK_ACTION_FR: Mapping[str, str] = {"patient": "d'inscrire un patient",
                                       "order": "d'enregistrer une demande",
                                       "specimen": "d'enregistrer un prélèvement"}


def _desk(user: WebUser, lv: Any, resource: str, what: str = "") -> str:
    """The caller's laboratory, if the policy lets its role do this desk action
    (``what``: the action in French, when not the resource's own)."""
    tenant_id = _staff(user)
    if not may_write(lv, user.actor, resource):
        raise AccessDenied(f"votre fonction ne permet pas {what or _DESK_ACTION_FR[resource]}",
                           "l'accueil du laboratoire s'en charge")
    return tenant_id


# == "Nouveau patient" ==========================================================================
def _registration_page(user: WebUser, values: Mapping[str, str],
                       errors: Mapping[str, list[str]], status: int = 200) -> Response:
    return html("desk_patient.html", status, user=user, values=values, errors=errors,
                blood_groups=BLOOD_GROUPS, sections=SECTIONS, record=None)


@router.get(NEW_PATIENT)
def registration_form(user: User, lv: LV) -> Response:
    _desk(user, lv, "patient")
    return _registration_page(user, {"country": "FR"}, {})


@router.post(NEW_PATIENT)
def register(request: Request, user: User, lv: LV,
             form: Annotated[RegistrationForm, Form()]) -> Response:
    """Register the patient (all or nothing), then open the record."""
    tenant_id = _desk(user, lv, "patient")
    _check_csrf(request, user, form.csrf)
    try:
        patient_id = lv.patients.register(user.actor, tenant_id, form.record())
    except (InvalidRecord, InvalidField) as exc:
        values = form.model_dump(exclude={"csrf"})
        return _registration_page(user, values, field_errors(_refused(exc), PATIENT_INPUTS),
                                  422)
    record = f"/console/patients/{patient_id}"
    if not user.may_order:
        return html("notice.html", user=user, title="Patient inscrit",
                    message="Le patient est inscrit.", links=((record, "Voir le dossier"),))
    return html("notice.html", user=user, title="Patient inscrit",
                message="Le patient est inscrit. Enregistrez maintenant sa demande "
                        "(l'ordonnance et le prélèvement).",
                links=((f"{record}/demande", "Nouvelle demande"), (record, "Voir le dossier")))


# == "Modifier" (a registered record) ===========================================================
EDIT = "/console/patients/{patient_id}/modifier"
NO_EDIT = "de modifier un dossier patient"


def _editable(user: WebUser, lv: Any, patient_id: str) -> tuple[dict[str, Any], list[str]]:
    """The record as the gate lets this user read it (an audited read; another
    laboratory's patient answers like an id that does not exist), and the form's sections
    it may change: the categories it reads, identity and contact always among them (a
    change is merged into what the user may read: ``PatientService.amend``)."""
    record: dict[str, Any] = lv.patients.show(user.actor, patient_id[:64])
    sections = [c for c in SECTIONS if c in record["categories"]]
    if not {"identity", "contact"} <= set(sections):
        raise AccessDenied(f"votre fonction ne permet pas {NO_EDIT}",
                           "l'accueil du laboratoire s'en charge")
    return record, sections


def _edit_page(user: WebUser, record: Mapping[str, Any], sections: list[str],
               values: Mapping[str, str], errors: Mapping[str, list[str]],
               status: int = 200, changed_meanwhile: bool = False) -> Response:
    return html("desk_patient.html", status, user=user, values=values, errors=errors,
                blood_groups=BLOOD_GROUPS, sections=sections, record=record,
                seen=record.get("updated_at") or "", changed_meanwhile=changed_meanwhile)


@router.get(EDIT)
def edit_form(patient_id: str, user: User, lv: LV) -> Response:
    _desk(user, lv, "patient", NO_EDIT)
    record, sections = _editable(user, lv, patient_id)
    return _edit_page(user, record, sections, form_values(record), {})


@router.post(EDIT)
def edit(request: Request, patient_id: str, user: User, lv: LV,
         form: Annotated[RegistrationForm, Form()]) -> Response:
    """Save what was changed on the form (``lv.patients.amend``: the fields whose input
    differs from the record as read now; an input emptied removes its field, where the
    domain lets it), then back to the patient's page."""
    _desk(user, lv, "patient", NO_EDIT)
    _check_csrf(request, user, form.csrf)
    record, sections = _editable(user, lv, patient_id)
    now = form_values(record)
    typed = {k: val.strip() for k, val in form.model_dump(exclude={"csrf", "seen"}).items()}
    fields = {RECORD_FIELD[i] for c in sections for i in SECTIONS[c] if typed[i] != now[i]}
    if fields:
        full = form.record()
        try:
            lv.patients.amend(user.actor, record["id"], {f: full.get(f) for f in fields},
                              seen=form.seen or None)
        except RecordChanged:
            # someone saved this record after this page was opened: what they changed is
            # shown, nothing of this form is written (its stale values would undo theirs)
            record, sections = _editable(user, lv, patient_id)
            return _edit_page(user, record, sections, form_values(record), {}, 409,
                              changed_meanwhile=True)
        except (InvalidRecord, InvalidField) as exc:
            return _edit_page(user, record, sections, form.model_dump(exclude={"csrf"}),
                              field_errors(_refused(exc), PATIENT_INPUTS), 422)
    return RedirectResponse(f"/console/patients/{record['id']}", status_code=303,
                            headers=NO_STORE)


# == "Nouvelle demande" =========================================================================
def catalogue_groups(catalogue: L.Catalogue) -> list[tuple[str, list[L.CatalogueTest]]]:
    """The catalogue's tests by the tube they are done on (sang total, sérum, plasma...),
    each group in alphabetical order of the names people read."""
    groups: dict[str, list[L.CatalogueTest]] = {}
    for t in catalogue.tests.values():
        groups.setdefault(SPECIMEN_FR.get(t.specimen or "", "autres prélèvements"), []).append(t)
    return [(name.capitalize(), sorted(tests, key=lambda t: (t.name.casefold(), t.code)))
            for name, tests in sorted(groups.items())]


def _now_paris(lv: Any) -> str:
    now: datetime = lv.now()
    return now.astimezone(PARIS).strftime("%Y-%m-%dT%H:%M")


def _order_page(user: WebUser, lv: Any, tenant_id: str, record: Mapping[str, Any],
                values: Mapping[str, Any], errors: Mapping[str, list[str]],
                status: int = 200) -> Response:
    return html("desk_order.html", status, user=user, record=record, values=values,
                errors=errors, groups=catalogue_groups(lv.lab.catalogue(tenant_id)))


def _identity(user: WebUser, lv: Any, patient_id: str) -> dict[str, Any]:
    """The patient's identity (an audited read; another laboratory's patient answers like
    an id that does not exist)."""
    record: dict[str, Any] = lv.patients.show(user.actor, patient_id[:64],
                                              categories=[Category.IDENTITY])
    return record


@router.get("/console/patients/{patient_id}/demande")
def order_form(patient_id: str, user: User, lv: LV) -> Response:
    tenant_id = _desk(user, lv, "order")
    record = _identity(user, lv, patient_id)
    return _order_page(user, lv, tenant_id, record,
                       {"priority": "routine", "collected": "oui",
                        "collected_at": _now_paris(lv)}, {})


def _collection_time(value: str, now: datetime) -> str | None:
    """The collection time typed in Paris time (``2026-03-01T08:30``), as an aware ISO
    time; None: not a time, or later than now."""
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    at = at.replace(tzinfo=PARIS) if at.tzinfo is None else at
    return None if at > now + CLOCK_SLACK else at.isoformat()


def _specimen(specimen_type: str, collected_at: str, number: str, now: datetime,
              errors: list[InvalidField]) -> dict[str, Any]:
    """The specimen a form describes (``Specimen.parse``'s shape); what is wrong with it
    added to ``errors``: the domain's checks, and a collection time not in the future."""
    at = _collection_time(collected_at, now)
    specimen = {"type": specimen_type, "collected_at": at, "accession_number": number}
    try:
        L.Specimen.parse(specimen)
    except InvalidRecord as exc:
        errors.extend(e for e in exc.errors if e.field != "collected_at")
    if at is None:
        errors.append(InvalidField("collected_at", "not a past time"))
    return specimen


def _specimen_fr(out: dict[str, list[str]]) -> dict[str, list[str]]:
    """A collection time refused, in the words of the form (its two reasons as one)."""
    if "collected_at" in out:
        out["collected_at"] = ["n'est pas une heure de prélèvement valable : la date et "
                               "l'heure (heure de Paris) du prélèvement, pas dans le futur"]
    return out


def _order_input(form: OrderForm, catalogue: L.Catalogue, now: datetime
                 ) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, list[str]]]:
    """The request and specimen the form describes, and what is wrong with them: the
    domain's own checks (``ServiceRequest.parse``, ``Specimen.parse``: every error at
    once), plus the desk's — tests of the laboratory's catalogue only, a prescriber named,
    a collection time not in the future."""
    errors: list[InvalidField] = []
    request: dict[str, Any] = {
        "tests": form.tests, "priority": form.priority,
        "prescriber": {"name": form.prescriber_name, "rpps": form.prescriber_rpps.strip()},
        "clinical_notes": form.clinical_notes}
    specimen: dict[str, Any] | None = None
    unknown = [c for c in form.tests if catalogue.get(c.strip()) is None]
    if unknown:
        errors.append(InvalidField("tests", "not in the catalogue"))
    try:
        L.ServiceRequest.parse(request)
    except InvalidRecord as exc:
        errors.extend(e for e in exc.errors if not (unknown and e.field.startswith("tests")))
    if form.collected:
        specimen = _specimen(form.specimen_type, form.collected_at,
                             (form.accession_number.strip()
                              or L.new_accession_number(now.astimezone(PARIS))), now, errors)
        # The tube's number is the laboratory's number for this order (its filler number,
        # ORC-3/OBR-3): an analyser reading the tube's barcode sends it back with the
        # results, which then find this order instead of making a new one.
        request["filler_number"] = specimen["accession_number"]
    out = _specimen_fr(field_errors(errors, ORDER_INPUTS))
    if unknown:
        out["tests"] = ["analyse inconnue du catalogue du laboratoire : "
                        + ", ".join(c[:20] for c in unknown)
                        + " ; cochez les analyses dans la liste"]
    if "prescriber_name" in out and not form.prescriber_name.strip():
        out["prescriber_name"] = ["est obligatoire : le médecin qui a signé l'ordonnance"]
    return request, specimen, out


@router.post("/console/patients/{patient_id}/demande")
def create_order(request: Request, patient_id: str, user: User, lv: LV,
                 form: Annotated[OrderForm, Form()]) -> Response:
    """The order and the specimen collected now (``create_order``: one transaction, both
    or neither); then the number to write on the tube."""
    tenant_id = _desk(user, lv, "order")
    _check_csrf(request, user, form.csrf)
    record = _identity(user, lv, patient_id)
    req, spec, errors = _order_input(form, lv.lab.catalogue(tenant_id), lv.now())
    if not errors:
        try:
            view = lv.lab.create_order(user.actor, tenant_id, record["id"], req, spec)
        except FillerNumberTaken as exc:
            if spec is None or form.accession_number.strip():
                errors = {"accession_number": [number_taken_fr(exc.number)]}
            else:   # the number labvault drew for the tube is another's (32⁵ a day): redraw
                spec["accession_number"] = req["filler_number"] = L.new_accession_number(
                    lv.now().astimezone(PARIS))
                view = lv.lab.create_order(user.actor, tenant_id, record["id"], req, spec)
        except (InvalidRecord, InvalidField) as exc:
            errors = field_errors(_refused(exc), ORDER_INPUTS)
    if errors:
        return _order_page(user, lv, tenant_id, record, form.model_dump(exclude={"csrf"}),
                           errors, 422)
    return html("desk_order_done.html", user=user, record=record, order=view,
                specimen=view.specimens[0] if view.specimens else None)


# == "Réception du prélèvement" =================================================================
def _reception_page(user: WebUser, order: OrderView, record: Mapping[str, Any],
                    values: Mapping[str, Any], errors: Mapping[str, list[str]],
                    status: int = 200) -> Response:
    return html("desk_reception.html", status, user=user, order=order, record=record,
                values=values, errors=errors)


def _awaiting(user: WebUser, lv: Any, order_id: str) -> OrderView:
    """The order (an audited read; another laboratory's answers like an id that does not
    exist), if it still awaits its specimen; else why not (409: received by whom and when,
    or closed)."""
    order: OrderView = lv.lab.get_order(user.actor, order_id[:64])
    refused = awaits_specimen(order.status, order.steps)
    if refused is not None:
        raise refused
    return order


@router.get(RECEPTION)
def reception_form(order_id: str, user: User, lv: LV) -> Response:
    _desk(user, lv, "specimen")
    order = _awaiting(user, lv, order_id)
    return _reception_page(user, order, _identity(user, lv, order.patient_id),
                           {"collected_at": _now_paris(lv)}, {})


@router.post(RECEPTION)
def receive_specimen(request: Request, order_id: str, user: User, lv: LV,
                     form: Annotated[ReceptionForm, Form()]) -> Response:
    """Receive the specimen the order awaits (``receive_specimen``: the order is locked,
    still awaiting it -- a form posted twice adds no second tube; the tube's number becomes
    its filler number if it has none, refused if another order has it); then back to the
    patient's page."""
    _desk(user, lv, "specimen")
    _check_csrf(request, user, form.csrf)
    order = _awaiting(user, lv, order_id)
    wrong: list[InvalidField] = []
    spec = _specimen(form.specimen_type, form.collected_at, form.accession_number.strip(),
                     lv.now(), wrong)
    errors = _specimen_fr(field_errors(wrong, ORDER_INPUTS))
    if not errors:
        try:
            lv.lab.receive_specimen(user.actor, order.order_id, spec, tube_is_filler=True,
                                    awaited=True)
        except FillerNumberTaken as exc:
            errors = {"accession_number": [number_taken_fr(exc.number)]}
        except (InvalidRecord, InvalidField) as exc:
            errors = _specimen_fr(field_errors(_refused(exc), ORDER_INPUTS))
    if errors:
        if errors.get("accession_number") and not spec["accession_number"]:
            errors["accession_number"] = ["est obligatoire : le numéro de l'étiquette du tube"]
        return _reception_page(user, order, _identity(user, lv, order.patient_id),
                               form.model_dump(exclude={"csrf"}), errors, 422)
    return RedirectResponse(f"/console/patients/{order.patient_id}#{order.order_id}",
                            status_code=303, headers=NO_STORE)
