"""Retention rules: how long each record type is kept after the patient's last activity.

A patient is crypto-shredded (data key destroyed: ``lv.patients.erase``) when the
longest rule that applies to any of their records has run out, counted from the last
change to the patient's record (``patients.updated_at``). Identity, contact and
coverage are kept exactly as long as the clinical records they identify (a report
without its patient's identity is useless to the patient and the prescriber), so the
rules are stated per *clinical* record type and the other categories follow.

Defaults and what they rest on (French law, checked 2026; a lab may lengthen or
shorten them with ``labvault guard config --tenant ID --set retention.<type>=<years>``
after its own legal review, down to the type's floor — see ``minimum`` below):

- ``lab_report`` — 10 years. Code de la santé publique art. L1142-28 (10-year
  limitation of liability actions against health professionals, in force since law
  2016-1917); the medical-biology profession (SDBIO, ministry answer) applies it to
  reports of medical-biology examinations, replacing the 5 years of the 1999 GBEA.
- ``genetic_report`` — 30 years. CSP art. R1131-20: reports of examinations of a
  person's genetic characteristics are kept by the laboratory for thirty years.
- ``amp_report`` — 20 years: labs in public establishments or doing medically
  assisted procreation (same SDBIO note); opt-in per lab.

Every patient has ``lab_report`` records; other record types come from the modules
that store them (``RetentionRegistry.add_source``).

Floors. A retention period is the one setting that erases data on its own: a period
shorter than the patients' idle time crypto-shreds them at the next purge, backups
included, and ``0`` (which reads as "forever" elsewhere, e.g. the audit retention)
would shred the whole lab. So each type has a floor no lab setting may go below, the
shortest period any French text has set for that record: 5 years for medical-biology
reports (the 1999 GBEA, before the profession moved to 10), 30 for genetic reports
(R1131-20 leaves no shorter period). There is no override: a lab whose legal review
finds a shorter period changes ``minimum`` here, in review, not with a CLI flag.
``MAXIMUM_YEARS`` bounds the other side (a typo of 1000 years would overflow dates).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy.engine import Connection


@dataclass(frozen=True, slots=True)
class RetentionRule:
    record_type: str
    years: int
    source: str
    minimum: int      # the floor a lab setting may not go below (module docstring)


DEFAULT_RULES: dict[str, RetentionRule] = {r.record_type: r for r in (
    RetentionRule("lab_report", 10, "CSP L1142-28; SDBIO (LBM reports: 10 years)", 5),
    RetentionRule("genetic_report", 30, "CSP R1131-20 (genetic examination reports: 30 years)",
                  30),
    RetentionRule("amp_report", 20, "public establishments / AMP labs: 20 years (SDBIO)", 5),
)}
MAXIMUM_YEARS = 100

BASE_TYPE = "lab_report"

# (conn, tenant_id, patient ids) -> {patient id: record types it holds}
TypeSource = Callable[[Connection, str, Sequence[str]], Mapping[str, set[str]]]


def years_for(record_type: str, config: Mapping[str, str]) -> int:
    default = DEFAULT_RULES[record_type].years if record_type in DEFAULT_RULES else \
        DEFAULT_RULES[BASE_TYPE].years
    return int(config.get(f"retention.{record_type}", default))


class RetentionRegistry:
    """Which record types each patient holds (modules owning records register a source)."""

    def __init__(self) -> None:
        self.sources: list[TypeSource] = []

    def add_source(self, source: TypeSource) -> None:
        self.sources.append(source)

    def types_of(self, conn: Connection, tenant_id: str,
                 patient_ids: Sequence[str]) -> dict[str, set[str]]:
        out = {pid: {BASE_TYPE} for pid in patient_ids}
        for source in self.sources:
            for pid, types in source(conn, tenant_id, patient_ids).items():
                if pid in out:
                    out[pid] |= set(types)
        return out

    def years(self, types: set[str], config: Mapping[str, str]) -> int:
        return max(years_for(t, config) for t in types)
