"""Foundation: tenants, tenant keys, sealed patients, data keys, blind indexes, shred log.

Revision ID: 0001_foundation
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_foundation"
down_revision = None
branch_labels = ("foundation",)
depends_on = None

ID = sa.String(40)
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("finess", sa.String(9), nullable=False),
        sa.Column("status", sa.String(20), nullable=False, server_default="active"),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_tenants"),
    )
    op.create_index("ix_tenants_finess", "tenants", ["finess"], unique=True)
    op.create_table(
        "tenant_keys",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("purpose", sa.String(20), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("root_id", sa.String(40), nullable=False),
        sa.Column("wrapped", sa.LargeBinary, nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "purpose", "version", name="pk_tenant_keys"),
    )
    op.create_table(
        "patients",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("patient_id", ID, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("identity", sa.LargeBinary, nullable=True),
        sa.Column("contact", sa.LargeBinary, nullable=True),
        sa.Column("coverage", sa.LargeBinary, nullable=True),
        sa.Column("clinical", sa.LargeBinary, nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "patient_id", name="pk_patients"),
    )
    op.create_index("ix_patients_patient_id", "patients", ["patient_id"], unique=True)
    op.create_table(
        "patient_keys",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("patient_id", ID, nullable=False),
        sa.Column("kek_version", sa.Integer, nullable=False),
        sa.Column("wrapped", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "patient_id", name="pk_patient_keys"),
    )
    op.create_table(
        "blind_index",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("digest", sa.LargeBinary(8), nullable=False),
        sa.Column("patient_id", ID, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "kind", "digest", "patient_id",
                                name="pk_blind_index"),
    )
    op.create_index("ix_blind_index_tenant_id_patient_id", "blind_index",
                    ["tenant_id", "patient_id"])
    op.create_table(
        "shred_log",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("patient_id", ID, nullable=False),
        sa.Column("shredded_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "patient_id", name="pk_shred_log"),
    )


def downgrade() -> None:
    for name in ("shred_log", "blind_index", "patient_keys", "patients", "tenant_keys", "tenants"):
        op.drop_table(name)
