"""Delivery: the outbox found by report (the console's patient page says, for each
report, whether it reached the prescriber's system).

Revision ID: 0013_delivery_by_report
Revises: 0012_delivery
"""

from __future__ import annotations

from alembic import op

revision = "0013_delivery_by_report"
down_revision = "0012_delivery"
branch_labels = None
depends_on = None

INDEX = "ix_delivery_outbox_tenant_id_report_id"


def upgrade() -> None:
    op.create_index(INDEX, "delivery_outbox", ["tenant_id", "report_id"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name="delivery_outbox")
