"""FHIR door: practitioner directory.

Revision ID: 0006_fhir
Revises: 0001_foundation
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_fhir"
down_revision = "0001_foundation"
branch_labels = ("fhir",)
depends_on = None

ID = sa.String(40)
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "practitioners",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("practitioner_id", ID, nullable=False),
        sa.Column("rpps_digest", sa.LargeBinary(8), nullable=True),
        sa.Column("data_sealed", sa.LargeBinary, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "practitioner_id", name="pk_practitioners"),
    )
    op.create_index("ix_practitioners_tenant_id_rpps_digest", "practitioners",
                    ["tenant_id", "rpps_digest"])


def downgrade() -> None:
    op.drop_index("ix_practitioners_tenant_id_rpps_digest", table_name="practitioners")
    op.drop_table("practitioners")
