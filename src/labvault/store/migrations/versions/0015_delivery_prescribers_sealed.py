"""Delivery: a destination keeps its prescribers' RPPS numbers, sealed.

Routes hold only blind-index digests of the numbers; rotating the laboratory's index key
(`labvault keys rotate --index`) recomputes every digest from its plaintext, so the
numbers are kept sealed under the laboratory's ``data`` key beside the destination.
Destinations added before this column have NULL: the rotation recovers their numbers
from the laboratory's directory and orders (docs/security-model.md, "Blind indexes").

Revision ID: 0015_delivery_prescribers_sealed
Revises: 0013_delivery_by_report
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015_delivery_prescribers_sealed"
down_revision = "0013_delivery_by_report"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("delivery_destinations",
                  sa.Column("prescribers_sealed", sa.LargeBinary, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("delivery_destinations") as batch:
        batch.drop_column("prescribers_sealed")
