"""Tables of the FHIR door's own records: the practitioner directory.

Prescribers are named inside orders (sealed, clinical); the directory lets a FHIR
client create a ``Practitioner`` once and reference it. The name is sealed with the
tenant's data key; the RPPS number is found through a blind index (``rpps_digest``).
"""

from __future__ import annotations

from sqlalchemy import Column, Index, PrimaryKeyConstraint, Table

from labvault.store.schema import ID, TS, Blob, metadata

practitioners = Table(
    "practitioners", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("practitioner_id", ID, nullable=False),
    Column("rpps_digest", Blob(8), nullable=True),   # HMAC of the RPPS number
    Column("data_sealed", Blob, nullable=False),     # name, RPPS, telecom
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    PrimaryKeyConstraint("tenant_id", "practitioner_id"),
    Index(None, "tenant_id", "rpps_digest"),
)
