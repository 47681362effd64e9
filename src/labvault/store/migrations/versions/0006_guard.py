"""Guard: alerts, read marks, suspensions, known clients, settings, honeytokens,
governed exports, deletion records.

Revision ID: 0006_guard
Revises: 0001_foundation
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_guard"
down_revision = "0001_foundation"
branch_labels = ("guard",)
depends_on = None

ID = sa.String(40)
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "guard_alerts",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("alert_id", ID, nullable=False),
        sa.Column("kind", sa.String(60), nullable=False),
        sa.Column("severity", sa.String(10), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("actor_id", sa.String(120), nullable=True),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("last_seen_at", TS, nullable=False),
        sa.Column("acked_at", TS, nullable=True),
        sa.Column("acked_by", sa.String(120), nullable=True),
        sa.Column("detail_sealed", sa.LargeBinary, nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "alert_id",
                                name="pk_guard_alerts"),
    )
    op.create_index("ix_guard_alerts_tenant_id_kind_actor_id_last_seen_at", "guard_alerts",
                    ["tenant_id", "kind", "actor_id", "last_seen_at"])
    op.create_index("ix_guard_alerts_tenant_id_status_created_at", "guard_alerts",
                    ["tenant_id", "status", "created_at"])
    op.create_table(
        "guard_marks",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("account_id", sa.String(120), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("item", ID, nullable=False),
        sa.Column("last_at", TS, nullable=False),
        sa.Column("worker", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "account_id", "kind", "item",
                                name="pk_guard_marks"),
    )
    op.create_index("ix_guard_marks_tenant_id_account_id_kind_last_at", "guard_marks",
                    ["tenant_id", "account_id", "kind", "last_at"])
    op.create_table(
        "guard_suspensions",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("suspension_id", ID, nullable=False),
        sa.Column("account_id", sa.String(120), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("rule", sa.String(60), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("released_at", TS, nullable=True),
        sa.Column("released_by", sa.String(120), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "suspension_id",
                                name="pk_guard_suspensions"),
    )
    op.create_index("ix_guard_suspensions_account_id_status", "guard_suspensions",
                    ["account_id", "status"])
    op.create_table(
        "guard_clients",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("account_id", sa.String(120), nullable=False),
        sa.Column("client_digest", sa.LargeBinary(16), nullable=False),
        sa.Column("first_seen_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "account_id", "client_digest",
                                name="pk_guard_clients"),
    )
    op.create_table(
        "guard_config",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("setting", sa.String(80), nullable=False),
        sa.Column("value", sa.String(200), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "setting",
                                name="pk_guard_config"),
    )
    op.create_table(
        "guard_canaries",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("digest", sa.LargeBinary(16), nullable=False),
        sa.Column("ref_sealed", sa.LargeBinary, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "digest",
                                name="pk_guard_canaries"),
    )
    op.create_table(
        "guard_exports",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("export_id", ID, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("requested_by", sa.String(120), nullable=False),
        sa.Column("approved_by", sa.String(120), nullable=True),
        sa.Column("patient_count", sa.Integer, nullable=False),
        sa.Column("row_count", sa.Integer, nullable=True),
        sa.Column("file_sha256", sa.String(64), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("approved_at", TS, nullable=True),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("purged_at", TS, nullable=True),
        sa.Column("manifest_sealed", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "export_id",
                                name="pk_guard_exports"),
    )
    op.create_index("ix_guard_exports_status_expires_at", "guard_exports",
                    ["status", "expires_at"])
    op.create_table(
        "guard_export_decoys",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("digest", sa.LargeBinary(8), nullable=False),
        sa.Column("export_id", ID, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "kind", "digest", "export_id",
                                name="pk_guard_export_decoys"),
    )
    op.create_table(
        "guard_deletions",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("deletion_id", ID, nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("object_id", ID, nullable=False),
        sa.Column("rule", sa.String(60), nullable=False),
        sa.Column("actor_id", sa.String(120), nullable=False),
        sa.Column("deleted_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "deletion_id",
                                name="pk_guard_deletions"),
    )


def downgrade() -> None:
    for name in ("guard_deletions", "guard_export_decoys", "guard_exports", "guard_canaries",
                 "guard_config", "guard_clients", "guard_suspensions", "guard_marks",
                 "guard_alerts"):
        op.drop_table(name)
