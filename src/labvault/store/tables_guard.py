"""Guard tables: alerts, read marks, suspensions, known clients, per-lab settings,
honeytokens, governed exports and deletion records (docs/guard.md).

Clear columns are ids, tenant, status, kinds, counts and timestamps only. Alert
details and export manifests are sealed with the tenant ``data`` key; client
addresses and honeytoken ids are kept only as keyed HMAC digests.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
)

from labvault.store.schema import ID, TS, Blob, metadata

# Alerts. Security alerts are deduplicated (same tenant + kind + actor within a window
# bumps ``count``); clinical alerts only with the same subject (``subject_digest``: a keyed
# HMAC of e.g. one result's value, never the value itself).
guard_alerts = Table(
    "guard_alerts", metadata,
    Column("tenant_id", ID, nullable=False),         # "platform" for alerts without a lab
    Column("alert_id", ID, nullable=False),
    Column("kind", String(60), nullable=False),
    Column("severity", String(10), nullable=False),  # info | low | medium | high | critical
    Column("status", String(10), nullable=False),    # open | acked
    Column("actor_id", String(120), nullable=True),  # account id of who triggered it
    Column("count", Integer, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("last_seen_at", TS, nullable=False),
    Column("acked_at", TS, nullable=True),
    Column("acked_by", String(120), nullable=True),
    Column("detail_sealed", Blob, nullable=True),
    Column("subject_digest", Blob(16), nullable=True),
    PrimaryKeyConstraint("tenant_id", "alert_id"),
    Index(None, "tenant_id", "kind", "actor_id", "last_seen_at"),
    Index(None, "tenant_id", "status", "created_at"),
    Index(None, "tenant_id", "kind", "subject_digest"),
)

# Sliding-window marks: one row per (account, kind, item); ``item`` is a patient id for
# reads, a random event id for searches, misses and denials.
guard_marks = Table(
    "guard_marks", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("account_id", String(120), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("item", ID, nullable=False),
    Column("last_at", TS, nullable=False),
    Column("worker", String(16), nullable=False),   # which process wrote it (random id)
    PrimaryKeyConstraint("tenant_id", "account_id", "kind", "item"),
    Index(None, "tenant_id", "account_id", "kind", "last_at"),
)

# An account suspended by a budget breach; the session layer refuses it until released.
guard_suspensions = Table(
    "guard_suspensions", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("suspension_id", ID, nullable=False),
    Column("account_id", String(120), nullable=False),
    Column("status", String(10), nullable=False),    # active | released
    Column("rule", String(60), nullable=False),      # which budget/rule suspended it
    Column("created_at", TS, nullable=False),
    Column("released_at", TS, nullable=True),
    Column("released_by", String(120), nullable=True),
    PrimaryKeyConstraint("tenant_id", "suspension_id"),
    Index(None, "account_id", "status"),
)

# Client addresses an account has used (HMAC digest under the tenant guard secret).
guard_clients = Table(
    "guard_clients", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("account_id", String(120), nullable=False),
    Column("client_digest", Blob(16), nullable=False),
    Column("first_seen_at", TS, nullable=False),
    PrimaryKeyConstraint("tenant_id", "account_id", "client_digest"),
)

# Per-lab guard settings (budgets, opening hours, retention, export allow-list).
guard_config = Table(
    "guard_config", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("setting", String(80), nullable=False),
    Column("value", String(200), nullable=False),
    Column("updated_at", TS, nullable=False),
    PrimaryKeyConstraint("tenant_id", "setting"),
)

# Honeytoken patients: HMAC digest of the patient id (tenant guard secret) + the id sealed.
guard_canaries = Table(
    "guard_canaries", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("digest", Blob(16), nullable=False),
    Column("ref_sealed", Blob, nullable=False),
    Column("created_at", TS, nullable=False),
    PrimaryKeyConstraint("tenant_id", "digest"),
)

# Governed exports; the manifest (purpose, fields, range, recipient, approvers) is sealed.
guard_exports = Table(
    "guard_exports", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("export_id", ID, nullable=False),
    Column("status", String(20), nullable=False),   # pending_approval | ready | purged
    Column("requested_by", String(120), nullable=False),
    Column("approved_by", String(120), nullable=True),
    Column("patient_count", Integer, nullable=False),
    Column("row_count", Integer, nullable=True),
    Column("file_sha256", String(64), nullable=True),
    Column("created_at", TS, nullable=False),
    Column("approved_at", TS, nullable=True),
    Column("expires_at", TS, nullable=False),
    Column("purged_at", TS, nullable=True),
    Column("manifest_sealed", Blob, nullable=False),
    PrimaryKeyConstraint("tenant_id", "export_id"),
    Index(None, "status", "expires_at"),
)

# Decoy rows of an export: blind-index-style digests of their identifiers.
guard_export_decoys = Table(
    "guard_export_decoys", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("kind", String(20), nullable=False),
    Column("digest", Blob(8), nullable=False),
    Column("export_id", ID, nullable=False),
    PrimaryKeyConstraint("tenant_id", "kind", "digest", "export_id"),
)

# What was deleted, when, by whom (exports purged, patients shredded by retention).
guard_deletions = Table(
    "guard_deletions", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("deletion_id", ID, nullable=False),
    Column("kind", String(20), nullable=False),     # export | patient
    Column("object_id", ID, nullable=False),
    Column("rule", String(60), nullable=False),     # expiry | retention:<type>
    Column("actor_id", String(120), nullable=False),
    Column("deleted_at", TS, nullable=False),
    PrimaryKeyConstraint("tenant_id", "deletion_id"),
)
