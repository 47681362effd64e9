"""Audit trail tables (labvault.audit; scheme in docs/audit.md).

``audit_entries`` is append-only: one row per gate decision or security event, chained
per tenant (``tenant_id`` is the chain id; ``_platform`` for platform-level events) by
forward-secure MACs. Clear columns are ids, the chain position, the time, the action and
its outcome; ``body`` is canonical JSON of ids and codes only (free text and client
addresses are sealed inside it through the gate). ``audit_heads`` holds each chain's
head: next position, last leaf hash, Merkle frontier and the *current* MAC key, sealed
under the tenant's audit key (the first key, k_0, is never stored: the verifier derives it).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    literal_column,
)

from labvault.store.schema import ID, TS, Blob, metadata

CHAIN = ID

audit_entries = Table(
    "audit_entries", metadata,
    Column("tenant_id", CHAIN, nullable=False),          # chain id: tenant or "_platform"
    Column("seq", BigInteger, nullable=False),           # position in the chain (0, 1, ...)
    Column("entry_id", ID, nullable=False),              # random id, what reports cite (not
    #   indexed: only `audit prove` looks an entry up by id, and it walks the chain anyway;
    #   every index is paid on every audited read)
    Column("at_us", BigInteger, nullable=False),         # UTC time, µs since the epoch
    Column("actor_id", String(200), nullable=False),     # account id / os:user@host / system:job
    Column("patient_id", ID, nullable=True),             # first patient touched (random id)
    Column("action", String(40), nullable=False),
    Column("outcome", String(20), nullable=False),       # allowed | denied | success | failure
    Column("body", Text, nullable=False),                # canonical JSON (ids, codes, sealed b64)
    Column("mac", Blob(32), nullable=False),      # HMAC-SHA256(k_seq, entry bytes)
    PrimaryKeyConstraint("tenant_id", "seq"),
    Index(None, "actor_id", "at_us"),
)

# "Who saw my record": patients are found through (chain, bucket of 2**PATIENT_BUCKET_BITS
# positions, patient). A plain (chain, patient) index puts every audited read on a random
# page of a structure as large as the whole log (in SQLite each commit rewrote ~200
# index pages for 200 reads); with the bucket first, a commit touches only the newest
# bucket's few pages, and a report probes each bucket once (~1,000 probes per 1M entries).
PATIENT_BUCKET_BITS = 10
Index("ix_audit_entries_patient_bucket", audit_entries.c.tenant_id,
      audit_entries.c.seq.op(">>")(literal_column(str(PATIENT_BUCKET_BITS))),
      audit_entries.c.patient_id)

# Further patients of an entry touching several (searches): the first is in audit_entries.
audit_refs = Table(
    "audit_refs", metadata,
    Column("tenant_id", CHAIN, nullable=False),
    Column("patient_id", ID, nullable=False),
    Column("seq", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant_id", "patient_id", "seq"),
)

audit_heads = Table(
    "audit_heads", metadata,
    Column("tenant_id", CHAIN, nullable=False),
    Column("next_seq", BigInteger, nullable=False),
    Column("last_hash", Blob(32), nullable=False),
    Column("key_sealed", Blob, nullable=False),    # current MAC key, sealed (audit key)
    Column("frontier", Blob, nullable=False),      # RFC 6962 compact range of [0, next_seq)
    Column("pruned_below", BigInteger, nullable=False, server_default="0"),
    Column("updated_at", TS, nullable=False),
    PrimaryKeyConstraint("tenant_id"),
)
