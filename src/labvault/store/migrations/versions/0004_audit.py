"""Audit trail: chained entries, patient references, chain heads.

Revision ID: 0004_audit
Revises: 0001_foundation
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_audit"
down_revision = "0001_foundation"
branch_labels = ("audit",)
depends_on = None

ID = sa.String(40)
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "audit_entries",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("entry_id", ID, nullable=False),
        sa.Column("at_us", sa.BigInteger, nullable=False),
        sa.Column("actor_id", sa.String(200), nullable=False),
        sa.Column("patient_id", ID, nullable=True),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("mac", sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "seq", name="pk_audit_entries"),
    )
    op.create_index("ix_audit_entries_tenant_id_patient_id", "audit_entries",
                    ["tenant_id", "patient_id"])
    op.create_index("ix_audit_entries_actor_id_at_us", "audit_entries", ["actor_id", "at_us"])
    op.create_table(
        "audit_refs",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("patient_id", ID, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "patient_id", "seq", name="pk_audit_refs"),
    )
    op.create_table(
        "audit_heads",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("next_seq", sa.BigInteger, nullable=False),
        sa.Column("last_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("key_sealed", sa.LargeBinary, nullable=False),
        sa.Column("frontier", sa.LargeBinary, nullable=False),
        sa.Column("pruned_below", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_audit_heads"),
    )


def downgrade() -> None:
    for name in ("audit_heads", "audit_refs", "audit_entries"):
        op.drop_table(name)
