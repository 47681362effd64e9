"""Breach encodings: sealed under the tenant's data key.

The keyed Bloom-filter encodings and blocking keys of dump triage were stored as they
are computed: keyed (no one without the tenant's index key can compute one), but a thief
holding every encoding of a laboratory could still mine frequent bit patterns for
frequent names (docs/breach.md, "Known attacks"). They are now one sealed value per
patient (``sealed``: the encoding then the blocking keys), opened only inside triage.

The encodings are derived data: the upgrade drops the stored ones instead of sealing
them (a migration holds no keys), and ``labvault breach backfill`` computes them again
from the sealed identities; until it has run, a triage says how many patients it could
not match by the fuzzy tier. The downgrade leaves the older, unsealed table empty, for
the same command of that version to fill.

Revision ID: 0016_breach_sealed_encodings
Revises: 0008_breach_packed_blocks
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016_breach_sealed_encodings"
down_revision = "0008_breach_packed_blocks"
branch_labels = None
depends_on = None

ID = sa.String(40)


def upgrade() -> None:
    op.drop_table("breach_encodings")
    op.create_table(
        "breach_encodings",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("patient_id", ID, nullable=False),
        sa.Column("key_version", sa.Integer, nullable=False),
        sa.Column("sealed", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "patient_id", name="pk_breach_encodings"),
    )


def downgrade() -> None:
    op.drop_table("breach_encodings")
    op.create_table(
        "breach_encodings",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("patient_id", ID, nullable=False),
        sa.Column("key_version", sa.Integer, nullable=False),
        sa.Column("clk", sa.LargeBinary(256), nullable=False),
        sa.Column("blocks", sa.LargeBinary, nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "patient_id", name="pk_breach_encodings"),
    )
