"""Notices: the CNIL notification (GDPR Art. 33), the ARS / CERT Santé incident report,
the letters to patients (Art. 34) with their mail-merge file, or the reasoned exemption.

Pure builders (dicts) + rendering (WeasyPrint for PDFs, ``csv`` with formula
neutralisation for the mail-merge file). The service supplies the case, the triage
results and the patients' contact data it opened through the gate.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import Environment, select_autoescape

from labvault.breach.severity import LEVEL_FR

# The notices are read in France: their dates are the laboratories' (Paris) dates, not
# UTC ones — a leak learnt at 00:30 in Paris was learnt that day, not the day before.
PARIS = ZoneInfo("Europe/Paris")

# GDPR Art. 33(3): the items a notification must at least contain, and where each is.
ART33_ITEMS: dict[str, tuple[str, ...]] = {
    "a_nature": ("nature", "data_subject_categories", "persons_approx", "data_categories",
                 "records_approx"),
    "b_dpo": ("dpo",),
    "c_consequences": ("consequences",),
    "d_measures": ("measures_taken", "measures_proposed"),
}

MEANING_FR = {
    "nir": "numéro de sécurité sociale (NIR)", "last_name": "nom", "first_name": "prénom",
    "birth_date": "date de naissance", "sex": "sexe", "email": "adresse électronique",
    "phone": "numéro de téléphone", "address": "adresse postale", "postcode": "code postal",
    "city": "ville", "insurer": "caisse d'assurance maladie ou mutuelle",
    "member_id": "numéro d'adhérent", "blood_group": "groupe sanguin",
    "clinical_note": "notes médicales (diagnostics, traitements, états de santé)",
    "prescriber": "médecin prescripteur", "rpps": "numéro RPPS du prescripteur",
    "password": "mot de passe du portail patient (en clair)",
    "password_hash": "empreinte du mot de passe du portail patient",
    "login": "identifiant du portail patient",
    "sealed": "valeurs chiffrées (inintelligibles)",
}
CATEGORY_FR = {"identity": "identité", "contact": "coordonnées", "coverage": "couverture sociale",
               "clinical": "données de santé", "account": "compte du portail patient"}

CONSEQUENCES = {
    "nir": "usurpation d'identité et fraude aux prestations sociales à l'aide du NIR",
    "email": "hameçonnage (phishing) ciblé se prévalant du laboratoire",
    "phone": "appels ou SMS frauduleux ciblés",
    "address": "sollicitations ou démarchage frauduleux à domicile",
    "clinical_note": "divulgation d'informations de santé (statut VIH, cancers, maladies "
                     "génétiques, grossesses) : discrimination, atteinte à la vie privée, chantage",
    "blood_group": "divulgation d'une donnée de santé (groupe sanguin)",
    "prescriber": "divulgation du suivi médical (médecin prescripteur)",
    "password": "prise de contrôle du compte du portail et d'autres comptes où le même mot de "
                "passe est utilisé",
    "password_hash": "cassage des mots de passe faibles et prise de contrôle de comptes",
    "insurer": "fraude à l'assurance maladie ou à la mutuelle",
}
ADVICE = {
    "email": "Méfiez-vous des courriels qui citent le laboratoire ou vos analyses et vous "
             "demandent de cliquer sur un lien ou de payer : nous ne vous demanderons jamais "
             "vos identifiants.",
    "phone": "Ne donnez aucune information personnelle par téléphone à un interlocuteur qui se "
             "présente comme le laboratoire ou l'assurance maladie.",
    "password": "Changez votre mot de passe du portail patient et tout compte où vous utilisez "
                "le même mot de passe.",
    "password_hash": "Changez votre mot de passe du portail patient.",
    "nir": "Surveillez vos relevés de remboursement (compte ameli) et signalez toute "
           "prestation que vous n'avez pas reçue.",
}
DEFAULT_PROPOSED = (
    "signalement du fichier aux plateformes qui le diffusent et au portail PHAROS, "
    "demandes de retrait",
    "dépôt de plainte",
    "réinitialisation forcée des mots de passe des comptes du portail concernés",
    "surveillance renforcée des accès (budgets de lecture, alertes) et revue des exports",
)


def safe_cell(value: object) -> str:
    """Neutralise spreadsheet formulas (CSV injection): a cell starting with = + - @ tab
    or carriage return is prefixed with an apostrophe (OWASP)."""
    s = "" if value is None else str(value)
    if s and s[0] in "=+-@\t\r\n|%":
        return "'" + s
    return s


def _private(path: str, flags: int) -> int:
    """``open``'s opener for notice files: mode 0600 from their creation (letters and the
    mail-merge file hold names and addresses), an older file's mode narrowed too."""
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def write_private_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", opener=_private) as fh:
        fh.write(text)


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> int:
    n = 0
    with open(path, "w", newline="", encoding="utf-8-sig", opener=_private) as fh:
        w = csv.writer(fh, delimiter=";", quoting=csv.QUOTE_ALL)
        w.writerow([safe_cell(h) for h in header])
        for r in rows:
            w.writerow([safe_cell(c) for c in r])
            n += 1
    return n


def date_fr(value: datetime | str) -> str:
    """``29/11/2026``, the Paris date of an instant (ISO text or aware datetime)."""
    d = datetime.fromisoformat(value) if isinstance(value, str) else value
    return d.astimezone(PARIS).strftime("%d/%m/%Y")


def datetime_fr(value: datetime | str) -> str:
    """``29/11/2026 à 00:30 (heure de Paris)``."""
    d = datetime.fromisoformat(value) if isinstance(value, str) else value
    return d.astimezone(PARIS).strftime("%d/%m/%Y à %H:%M (heure de Paris)")


@lru_cache(maxsize=1)
def _env() -> Environment:
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["datetime_fr"] = datetime_fr
    return env


def _template(name: str) -> str:
    return resources.files("labvault.breach").joinpath("templates", name).read_text("utf-8")


def render_html(name: str, **ctx: Any) -> str:
    return _env().from_string(_template(name)).render(css=_template("base.css"), **ctx)


def render_pdf(name: str, path: Path, **ctx: Any) -> int:
    """Render a template to PDF; returns the page count."""
    from weasyprint import HTML
    doc = HTML(string=render_html(name, **ctx)).render()
    with open(path, "wb", opener=_private) as fh:
        doc.write_pdf(target=fh)
    return len(doc.pages)


def meanings_fr(meanings: Iterable[str]) -> list[dict[str, str]]:
    from labvault.breach.columns import CATEGORY_OF
    return [{"meaning": m, "category": CATEGORY_OF.get(m, "unintelligible"),
             "label": MEANING_FR.get(m, m)} for m in sorted(set(meanings)) if m in MEANING_FR]


def consequences(meanings: Iterable[str]) -> list[str]:
    m = set(meanings)
    out = [text for key, text in CONSEQUENCES.items() if key in m]
    if not out:
        out.append("risque faible : aucune donnée directement exploitable exposée")
    return out


def cnil_notification(*, case: Mapping[str, Any], kind: str, labs: Sequence[Mapping[str, Any]],
                      meanings: Iterable[str], persons: int, records: int,
                      severity: Mapping[str, Any], dpo: Mapping[str, str],
                      measures_taken: Sequence[str], measures_proposed: Sequence[str],
                      notified_at: datetime, origin: str, delay_reasons: str | None
                      ) -> dict[str, Any]:
    aware = datetime.fromisoformat(str(case["aware_at"]))
    deadline = datetime.fromisoformat(str(case["deadline_at"]))
    within = notified_at <= deadline
    meanings = sorted(set(meanings))
    n: dict[str, Any] = {
        "type": kind,
        "case_id": case["case_id"],
        "controllers": [dict(lab) for lab in labs],
        "timeline": {"aware_at": aware.isoformat(), "deadline_at": deadline.isoformat(),
                     "notified_at": notified_at.isoformat(), "within_72h": within,
                     "delay_reasons": None if within else (
                         delay_reasons or "analyse du fichier et identification des "
                                          "laboratoires et des personnes concernés")},
        "nature": {"description": case.get("description") or case["title"],
                   "title": case["title"],
                   "breach_types": ["confidentialité"],
                   "origin": origin},
        "data_subject_categories": ["patients de laboratoires de biologie médicale"]
        + (["utilisateurs du portail patient"] if {"password", "password_hash", "login"}
           & set(meanings) else []),
        "persons_approx": persons,
        "records_approx": records,
        "data_categories": meanings_fr(meanings),
        "sensitive_data": bool({"clinical_note", "blood_group", "prescriber"} & set(meanings)),
        "dpo": {"name": dpo.get("name", ""), "email": dpo.get("email", ""),
                "phone": dpo.get("phone", "")},
        "consequences": consequences(meanings),
        "measures_taken": list(measures_taken),
        "measures_proposed": list(measures_proposed) or list(DEFAULT_PROPOSED),
        "severity": {"method": severity["method"], "score": severity["score"],
                     "level": severity["level"], "level_fr": LEVEL_FR[severity["level"]],
                     "rationale": severity["rationale"]},
        "subjects_informed": {
            "required": bool(severity["notify_subjects"]),
            "reason": ("Risque élevé : chaque personne concernée reçoit un courrier (article 34)."
                       if severity["notify_subjects"] else
                       "Pas de communication individuelle : " + (
                           "données inintelligibles (article 34(3)(a))."
                           if severity["art34_3a"]["unintelligible"]
                           else "risque non élevé pour les droits et libertés."))},
    }
    n["art33_3"] = {item: list(fields) for item, fields in ART33_ITEMS.items()}
    return n


def missing_art33_items(n: Mapping[str, Any]) -> list[str]:
    """Fields of Art. 33(3) that are absent or empty in a notification (should be [])."""
    missing = []
    for fields in ART33_ITEMS.values():
        for f in fields:
            v = n.get(f)
            if v in (None, "", [], {}) or (f == "dpo" and not all(v.values())):
                missing.append(f)
    if not n.get("nature", {}).get("description"):
        missing.append("nature.description")
    return missing


def ars_report(*, case: Mapping[str, Any], labs: Sequence[Mapping[str, Any]],
               meanings: Iterable[str], persons: int, dpo: Mapping[str, str],
               measures_taken: Sequence[str], origin: str, cnil_kind: str) -> dict[str, Any]:
    m = set(meanings)
    health = [MEANING_FR[k] for k in ("clinical_note", "blood_group", "prescriber") if k in m]
    return {
        "case_id": case["case_id"],
        "structures": [{"name": lab["name"], "finess": lab["finess"]} for lab in labs],
        "detected_at": str(case["aware_at"]),
        "incident_type": "atteinte à la confidentialité de données de santé (fuite de données)",
        "description": case.get("description") or case["title"],
        "care_impact": "aucun impact sur la continuité des soins constaté ; "
                       "les systèmes de production ne sont pas indisponibles",
        "health_data": health,
        "persons_approx": persons,
        "origin": origin,
        "measures_taken": list(measures_taken) or ["analyse du fichier divulgué (triage)"],
        "cnil_notification": "notification {} adressée à la CNIL (article 33 RGPD)".format(
            "initiale" if cnil_kind == "initial" else "complémentaire"),
        "contact": {"name": dpo.get("name", ""), "email": dpo.get("email", ""),
                    "phone": dpo.get("phone", "")},
    }


def letter(*, case: Mapping[str, Any], lab: Mapping[str, Any], patient: Mapping[str, Any],
           meanings: Iterable[str], measures: Sequence[str], dpo: Mapping[str, str],
           today: datetime) -> dict[str, Any]:
    m = set(meanings)
    addr = patient.get("address") or {}
    first = (patient.get("first_names") or [""])[0]
    last = patient.get("used_name") or patient.get("birth_name") or ""
    civ = {"F": "Madame", "M": "Monsieur"}.get(str(patient.get("sex")), "Madame, Monsieur")
    return {
        "lab_name": lab["name"], "lab_finess": lab["finess"],
        "addressee": f"{civ if civ != 'Madame, Monsieur' else ''} {first} {last}".strip(),
        "address_line": addr.get("line", ""), "postcode": addr.get("postal_code", ""),
        "city": addr.get("city", ""),
        "salutation": civ,
        "date": date_fr(today),
        "aware_date": date_fr(str(case["aware_at"])),
        "categories": [MEANING_FR[k] for k in sorted(m) if k in MEANING_FR and k != "sealed"],
        "consequences": consequences(m),
        # Only what was done: with no measure recorded, the one certain step is the
        # notification to the CNIL written with this letter (no withdrawal claimed).
        "measures": list(measures) or ["nous avons notifié l'incident à la CNIL"],
        "advice": [ADVICE[k] for k in ADVICE if k in m] or
        ["Restez vigilant face aux sollicitations inhabituelles qui citent le laboratoire."],
        "dpo": dict(dpo),
        "reference": f"{case['case_id']}/{patient.get('id', '')}",
        "email": patient.get("email", ""), "phone": patient.get("phone", ""),
    }
