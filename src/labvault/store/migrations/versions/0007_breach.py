"""Breach response: case register, timeline events, keyed matching encodings and blocks.

Revision ID: 0007_breach
Revises: 0001_foundation
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_breach"
down_revision = "0001_foundation"
branch_labels = ("breach",)
depends_on = None

ID = sa.String(40)
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "breach_cases",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("case_id", ID, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("aware_at", TS, nullable=False),
        sa.Column("deadline_at", TS, nullable=False),
        sa.Column("opened_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("title_sealed", sa.LargeBinary, nullable=False),
        sa.Column("description_sealed", sa.LargeBinary, nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "case_id", name="pk_breach_cases"),
    )
    op.create_table(
        "breach_events",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("case_id", ID, nullable=False),
        sa.Column("event_id", ID, nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("body_sealed", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "case_id", "event_id", name="pk_breach_events"),
    )
    op.create_table(
        "breach_encodings",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("patient_id", ID, nullable=False),
        sa.Column("key_version", sa.Integer, nullable=False),
        sa.Column("clk", sa.LargeBinary(256), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "patient_id", name="pk_breach_encodings"),
    )
    op.create_table(
        "breach_blocks",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("block", sa.LargeBinary(8), nullable=False),
        sa.Column("patient_id", ID, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "block", "patient_id", name="pk_breach_blocks"),
    )
    op.create_index("ix_breach_blocks_tenant_id_patient_id", "breach_blocks",
                    ["tenant_id", "patient_id"])


def downgrade() -> None:
    op.drop_index("ix_breach_blocks_tenant_id_patient_id", "breach_blocks")
    op.drop_table("breach_blocks")
    op.drop_table("breach_encodings")
    op.drop_table("breach_events")
    op.drop_table("breach_cases")
