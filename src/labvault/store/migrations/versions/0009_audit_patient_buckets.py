"""Audit entries found by patient through (chain, bucket of 1,024 positions, patient).

The (chain, patient) index made every audited read write a random page of an index as
large as the log; bucketing by position keeps each commit's index writes on the newest
bucket's pages (store/tables_audit.py, docs/audit.md).

Revision ID: 0009_audit_patient_buckets
Revises: 0004_audit
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_audit_patient_buckets"
down_revision = "0004_audit"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_audit_entries_tenant_id_patient_id", "audit_entries")
    op.create_index("ix_audit_entries_patient_bucket", "audit_entries",
                    ["tenant_id", sa.text("(seq >> 10)"), "patient_id"])


def downgrade() -> None:
    op.drop_index("ix_audit_entries_patient_bucket", "audit_entries")
    op.create_index("ix_audit_entries_tenant_id_patient_id", "audit_entries",
                    ["tenant_id", "patient_id"])
