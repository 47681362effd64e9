"""Patients: a duplicate record merged into another keeps a tombstone pointing at it.

Identity vigilance merges a duplicate patient record into the one kept (the survivor):
the duplicate's orders, results, reports, messages... move to the survivor, and the
duplicate's row stays, emptied, with ``status = 'merged'`` and ``merged_into`` = the
survivor's id (a random id, not personal: clear). A read of the old id can then say
where the record went (docs/security-model.md, "Merging duplicates").

Revision ID: 0014_patient_merged_into
Revises: 0001_foundation
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_patient_merged_into"
down_revision = "0001_foundation"
branch_labels = None
depends_on = None


INDEX = "ix_patients_tenant_id_merged_into"


def upgrade() -> None:
    op.add_column("patients", sa.Column("merged_into", sa.String(40), nullable=True))
    # "who saw my record" finds the tombstones pointing at a record by this index
    op.create_index(INDEX, "patients", ["tenant_id", "merged_into"])


def downgrade() -> None:
    op.drop_index(INDEX, "patients")
    with op.batch_alter_table("patients") as batch:
        batch.drop_column("merged_into")
