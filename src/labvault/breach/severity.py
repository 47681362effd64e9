"""Severity of a personal-data breach by the ENISA method (2013):

    SE = DPC × EI + CB

- DPC, data processing context (1 simple, 2 behavioural, 3 financial, 4 sensitive),
  adjusted by the context (volume, credentials, national identifier, inference);
- EI, ease of identification (0.25 negligible, 0.5 limited, 0.75 significant, 1 maximum);
- CB, circumstances: loss of confidentiality (0 / 0.25 known recipients / 0.5 unknown),
  integrity, availability, malicious intent (+0.5).

Level: SE < 2 low, < 3 medium, < 4 high, else very high. The function also answers
GDPR Art. 34(3)(a): if every exposed personal value was unintelligible (sealed
ciphertext), data subjects need not be told, whatever the score.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

IDENTIFYING = frozenset({"nir", "email", "phone", "last_name", "first_name", "birth_date",
                         "address"})
HEALTH = frozenset({"clinical_note", "blood_group", "prescriber", "rpps"})


RECIPIENTS = ("none", "known", "unknown")      # who got the data (ENISA CB)


@dataclass(frozen=True)
class Circumstances:
    recipients: str = "unknown"       # none | known | unknown (published / sold)
    malicious: bool = True
    integrity: float = 0.0            # 0, 0.25, 0.5
    availability: float = 0.0         # 0, 0.25, 0.5


def _fr(x: float) -> str:
    """A score as French text writes it: a decimal comma (1,75)."""
    return f"{x:g}".replace(".", ",")


def level_of(score: float) -> str:
    if score < 2:
        return "low"
    if score < 3:
        return "medium"
    if score < 4:
        return "high"
    return "very high"


LEVEL_FR = {"low": "faible", "medium": "moyen", "high": "élevé", "very high": "très élevé"}


def assess(meanings: Collection[str], persons: int, records: int,
           circumstances: Circumstances | None = None,
           sealed_columns: int = 0) -> dict[str, Any]:
    """``meanings``: detected meanings with intelligible values in matched rows."""
    c = circumstances or Circumstances()
    m = set(meanings)
    why: list[str] = []
    unintelligible = not (m - {"sealed"}) and (sealed_columns > 0 or "sealed" in m)
    # No patient of the platform found in a clear file: nothing of theirs is exposed — which
    # is not "unintelligible data" (Art. 34(3)(a)), the rationale must not say so.
    nobody = not m and not unintelligible
    # -- DPC ------------------------------------------------------------------------------
    adjustments: list[tuple[float, str]] = []
    if "clinical_note" in m:
        base = 4.0
        why.append("notes cliniques en texte libre (données de santé, Art. 9 RGPD : statut VIH, "
                   "cancers, maladies génétiques, grossesses, traitements) : données sensibles, "
                   "DPC de base 4")
    elif m & HEALTH:
        base = 4.0
        adjustments.append((-1.0, "données de santé d'inférence limitée (groupe sanguin, "
                                  "prescripteur) : -1"))
        why.append("données de santé (groupe sanguin, prescripteur, analyses) : données sensibles, "
                   "DPC de base 4")
    elif "insurer" in m or "member_id" in m:
        base = 2.0
        why.append("organismes d'assurance maladie et numéros d'adhérent : DPC de base 2")
    elif unintelligible:
        base = 1.0
        why.append("seules des valeurs chiffrées (inintelligibles) sont exposées : DPC 1")
    elif nobody:
        base = 1.0
        why.append("aucune donnée d'un patient identifié n'est exposée : DPC 1")
    else:
        base = 1.0
        why.append("données d'identification et de contact : données simples, DPC de base 1")
    if base < 4 and "nir" in m:
        adjustments.append((1.0, "NIR exposé (identifiant national, usurpation d'identité) : +1"))
    if base < 4 and ("password" in m):
        adjustments.append((1.0, "mots de passe en clair (prise de contrôle de comptes) : +1"))
    if base < 4 and persons >= 10_000 and not unintelligible and not nobody:
        adjustments.append((0.5, f"volume ({persons} personnes) permettant le profilage : +0,5"))
    dpc = max(1.0, min(4.0, base + sum(a for a, _ in adjustments)))
    # -- EI -------------------------------------------------------------------------------
    if unintelligible:
        ei, ei_why = 0.25, "négligeable : valeurs chiffrées, aucune clé divulguée"
    elif nobody:
        ei, ei_why = 0.25, "négligeable : aucun patient identifié dans le fichier"
    elif "nir" in m or ({"last_name", "birth_date"} <= m) or ({"last_name", "address"} <= m):
        ei, ei_why = 1.0, "maximale : NIR ou nom avec date de naissance / adresse"
    elif {"last_name", "first_name"} <= m or "email" in m:
        ei, ei_why = 0.75, "importante : nom et prénom ou adresse électronique"
    elif m & IDENTIFYING:
        ei, ei_why = 0.5, "limitée : identifiant partiel"
    else:
        ei, ei_why = 0.25, "négligeable : aucun identifiant direct"
    # -- CB -------------------------------------------------------------------------------
    conf = {"none": 0.0, "known": 0.25, "unknown": 0.5}.get(c.recipients, 0.5)
    cb = conf + c.integrity + c.availability + (0.5 if c.malicious else 0.0)
    score = round(dpc * ei + cb, 2)
    level = level_of(score)
    art34_required = level in ("high", "very high") and not unintelligible and not nobody
    rationale = (
        f"Méthode ENISA 2013 : SE = DPC × EI + CB = {_fr(dpc)} × {_fr(ei)} + {_fr(cb)} = "
        f"{_fr(score)} (niveau {LEVEL_FR[level]}). DPC : "
        + " ; ".join(why + [t for _, t in adjustments])
        + f". EI {ei_why}. CB : perte de confidentialité "
        + {"none": "sans diffusion", "known": "vers des destinataires connus",
           "unknown": "vers des destinataires inconnus (fichier diffusé)"}.get(c.recipients, "")
        + (", intention malveillante (+0,5)" if c.malicious else "") + ". "
        + (f"{persons} personnes et {records} enregistrements concernés. ")
        + ("Art. 34(3)(a) : les données exposées étaient inintelligibles (chiffrées, clés non "
           "compromises) : la communication aux personnes n'est pas requise."
           if unintelligible else
           "Aucun patient de la plateforme n'a été retrouvé dans le fichier : aucune personne "
           "à informer (Art. 34)."
           if nobody else
           ("Risque élevé pour les droits et libertés : communication aux personnes requise "
            "(Art. 34(1))." if art34_required else
            "Risque non élevé : notification à la CNIL (Art. 33) sans communication "
            "individuelle obligatoire (Art. 34)."))
    )
    return {
        "method": "ENISA 2013",
        "dpc": {"base": base, "adjustments": [{"delta": a, "reason": t} for a, t in adjustments],
                "score": dpc},
        "ei": {"score": ei, "reason": ei_why},
        "cb": {"confidentiality": conf, "integrity": c.integrity,
               "availability": c.availability, "malicious": 0.5 if c.malicious else 0.0,
               "score": cb},
        "score": score,
        "level": level,
        "rationale": rationale,
        "art34_3a": {"unintelligible": unintelligible,
                     "reason": ("toutes les valeurs exposées sont des blobs chiffrés"
                                if unintelligible else
                                "aucun patient identifié" if nobody else
                                "des valeurs lisibles sont exposées")},
        # Art. 33(1): no notification if the breach is unlikely to result in a risk -
        # the case when every exposed value is unintelligible (keys not compromised).
        "notify_authority": not unintelligible and not nobody,
        "notify_subjects": art34_required,
        "persons": persons,
        "records": records,
    }
