"""Result delivery: destinations (where reports go), their RPPS routes, the outbox.

Revision ID: 0012_delivery
Revises: 0001_foundation
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_delivery"
down_revision = "0001_foundation"
branch_labels = ("delivery",)
depends_on = None

ID = sa.String(40)
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "delivery_destinations",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("destination_id", ID, nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer, nullable=False),
        sa.Column("transport", sa.String(10), nullable=False),
        sa.Column("tls_ca", sa.String(1024), nullable=True),
        sa.Column("tls_cert", sa.String(1024), nullable=True),
        sa.Column("tls_key", sa.String(1024), nullable=True),
        sa.Column("routing", sa.String(10), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("removed_at", TS, nullable=True),
        sa.Column("label_sealed", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "destination_id", name="pk_delivery_destinations"),
    )
    op.create_table(
        "delivery_routes",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("rpps_digest", sa.LargeBinary(8), nullable=False),
        sa.Column("destination_id", ID, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "rpps_digest", "destination_id",
                                name="pk_delivery_routes"),
    )
    op.create_table(
        "delivery_outbox",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("outbox_id", ID, nullable=False),
        sa.Column("destination_id", ID, nullable=False),
        sa.Column("report_id", ID, nullable=False),
        sa.Column("order_id", ID, nullable=False),
        sa.Column("patient_id", ID, nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("next_attempt_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("delivered_at", TS, nullable=True),
        sa.Column("ack_code", sa.String(2), nullable=True),
        sa.Column("message_sealed", sa.LargeBinary, nullable=False),
        sa.Column("error_sealed", sa.LargeBinary, nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "outbox_id", name="pk_delivery_outbox"),
    )
    op.create_index("ix_delivery_outbox_status_next_attempt_at", "delivery_outbox",
                    ["status", "next_attempt_at"], unique=False)
    op.create_index("ix_delivery_outbox_tenant_id_status_created_at", "delivery_outbox",
                    ["tenant_id", "status", "created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_delivery_outbox_tenant_id_status_created_at", table_name="delivery_outbox")
    op.drop_index("ix_delivery_outbox_status_next_attempt_at", table_name="delivery_outbox")
    op.drop_table("delivery_outbox")
    op.drop_table("delivery_routes")
    op.drop_table("delivery_destinations")
