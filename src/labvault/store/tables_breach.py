"""Breach-response tables (docs/breach.md).

- ``breach_cases`` / ``breach_events``: the GDPR Art. 33(5) register. A case is
  platform-level (one incident may touch many laboratories), so it is filed under the
  pseudo tenant ``platform`` (``services.breach.PLATFORM``), whose keys live in
  ``tenant_keys`` like any tenant's; every free-text field is sealed under its
  ``data`` key. Clear columns: ids, status, kind and timestamps only.
- ``breach_encodings``: per patient, the keyed Bloom-filter encoding (CLK, balanced,
  2 × 1024 bits) and keyed blocking digests (64-bit HMAC) used by the fuzzy tier of dump
  triage, keyed with secrets derived from the tenant's index key, and **sealed** together
  under the tenant's ``data`` key (migration 0016): a stolen database gives no encoding
  to mine for frequent bit patterns (docs/breach.md, "Known attacks").
"""

from __future__ import annotations

from sqlalchemy import Column, Integer, PrimaryKeyConstraint, String, Table

from labvault.store.schema import ID, TS, Blob, metadata

breach_cases = Table(
    "breach_cases", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("case_id", ID, nullable=False),
    Column("status", String(20), nullable=False),          # open | notified | closed
    Column("aware_at", TS, nullable=False),                # starts the 72 h clock (Art. 33(1))
    Column("deadline_at", TS, nullable=False),
    Column("opened_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("title_sealed", Blob, nullable=False),
    Column("description_sealed", Blob, nullable=True),
    PrimaryKeyConstraint("tenant_id", "case_id"),
)

# Timeline of a case: evidence, triage, severity, decision, notification, measure, note.
breach_events = Table(
    "breach_events", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("case_id", ID, nullable=False),
    Column("event_id", ID, nullable=False),
    Column("kind", String(20), nullable=False),
    Column("at", TS, nullable=False),
    Column("body_sealed", Blob, nullable=False),
    PrimaryKeyConstraint("tenant_id", "case_id", "event_id"),
)

breach_encodings = Table(
    "breach_encodings", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("patient_id", ID, nullable=False),
    Column("key_version", Integer, nullable=False),        # version of the tenant index key
    # sealed (tenant data key): the encoding (256 bytes) then the patient's blocking keys
    # (8 bytes each): read only in bulk by triage, so one value per patient (0008, 0016)
    Column("sealed", Blob, nullable=False),
    PrimaryKeyConstraint("tenant_id", "patient_id"),
)
