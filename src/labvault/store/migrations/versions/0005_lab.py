"""Lab workflow: orders, specimens, observations (+ history), reports, HL7 message
archive, import issues, per-lab catalogues.

Revision ID: 0005_lab
Revises: 0001_foundation
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_lab"
down_revision = "0001_foundation"
branch_labels = ("lab",)
depends_on = None

ID = sa.String(40)
TS = sa.DateTime(timezone=True)
DIGEST = sa.LargeBinary(8)


def upgrade() -> None:
    op.create_table(
        "lab_orders",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("order_id", ID, nullable=False),
        sa.Column("patient_id", ID, nullable=False),
        sa.Column("status", sa.String(30), nullable=False),
        sa.Column("priority", sa.String(10), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("placer_digest", DIGEST, nullable=True),
        sa.Column("filler_digest", DIGEST, nullable=True),
        sa.Column("request_sealed", sa.LargeBinary, nullable=False),
        sa.Column("workflow_sealed", sa.LargeBinary, nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "order_id", name="pk_lab_orders"),
    )
    op.create_index("ix_lab_orders_order_id", "lab_orders", ["order_id"], unique=True)
    op.create_index("ix_lab_orders_tenant_id_filler_digest", "lab_orders",
                    ["tenant_id", "filler_digest"], unique=False)
    op.create_index("ix_lab_orders_tenant_id_patient_id", "lab_orders",
                    ["tenant_id", "patient_id"], unique=False)
    op.create_index("ix_lab_orders_tenant_id_placer_digest", "lab_orders",
                    ["tenant_id", "placer_digest"], unique=False)
    op.create_index("ix_lab_orders_tenant_id_status_created_at", "lab_orders",
                    ["tenant_id", "status", "created_at"], unique=False)
    op.create_table(
        "lab_specimens",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("specimen_id", ID, nullable=False),
        sa.Column("order_id", ID, nullable=False),
        sa.Column("patient_id", ID, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("accession_digest", DIGEST, nullable=True),
        sa.Column("specimen_sealed", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "specimen_id", name="pk_lab_specimens"),
    )
    op.create_index("ix_lab_specimens_specimen_id", "lab_specimens", ["specimen_id"], unique=True)
    op.create_index("ix_lab_specimens_tenant_id_accession_digest", "lab_specimens",
                    ["tenant_id", "accession_digest"], unique=False)
    op.create_index("ix_lab_specimens_tenant_id_order_id", "lab_specimens",
                    ["tenant_id", "order_id"], unique=False)
    op.create_table(
        "lab_observations",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("observation_id", ID, nullable=False),
        sa.Column("order_id", ID, nullable=False),
        sa.Column("patient_id", ID, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("result_sealed", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "observation_id", name="pk_lab_observations"),
    )
    op.create_index("ix_lab_observations_observation_id", "lab_observations", ["observation_id"], unique=True)
    op.create_index("ix_lab_observations_tenant_id_order_id", "lab_observations",
                    ["tenant_id", "order_id"], unique=False)
    op.create_index("ix_lab_observations_tenant_id_patient_id", "lab_observations",
                    ["tenant_id", "patient_id"], unique=False)
    op.create_table(
        "lab_observation_history",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("history_id", ID, nullable=False),
        sa.Column("observation_id", ID, nullable=False),
        sa.Column("patient_id", ID, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("changed_at", TS, nullable=False),
        sa.Column("change_sealed", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "history_id", name="pk_lab_observation_history"),
    )
    op.create_index("ix_lab_observation_history_tenant_id_observation_id", "lab_observation_history",
                    ["tenant_id", "observation_id"], unique=False)
    op.create_table(
        "lab_reports",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("report_id", ID, nullable=False),
        sa.Column("order_id", ID, nullable=False),
        sa.Column("patient_id", ID, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("issued_at", TS, nullable=True),
        sa.Column("report_sealed", sa.LargeBinary, nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "report_id", name="pk_lab_reports"),
    )
    op.create_index("ix_lab_reports_report_id", "lab_reports", ["report_id"], unique=True)
    op.create_index("ix_lab_reports_tenant_id_order_id", "lab_reports",
                    ["tenant_id", "order_id"], unique=True)
    op.create_index("ix_lab_reports_tenant_id_patient_id", "lab_reports",
                    ["tenant_id", "patient_id"], unique=False)
    op.create_table(
        "lab_hl7_messages",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("message_id", ID, nullable=False),
        sa.Column("control_digest", DIGEST, nullable=False),
        sa.Column("patient_id", ID, nullable=True),
        sa.Column("message_type", sa.String(20), nullable=False),
        sa.Column("status", sa.String(2), nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("raw_sealed", sa.LargeBinary, nullable=False),
        sa.Column("ack_sealed", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "message_id", name="pk_lab_hl7_messages"),
    )
    op.create_index("ix_lab_hl7_messages_tenant_id_control_digest", "lab_hl7_messages",
                    ["tenant_id", "control_digest"], unique=True)
    op.create_table(
        "lab_import_issues",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("issue_id", ID, nullable=False),
        sa.Column("message_id", ID, nullable=True),
        sa.Column("patient_id", ID, nullable=True),
        sa.Column("kind", sa.String(30), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("resolved_at", TS, nullable=True),
        sa.Column("issue_sealed", sa.LargeBinary, nullable=False),
        sa.Column("resolution_sealed", sa.LargeBinary, nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "issue_id", name="pk_lab_import_issues"),
    )
    op.create_index("ix_lab_import_issues_tenant_id_status_created_at", "lab_import_issues",
                    ["tenant_id", "status", "created_at"], unique=False)
    op.create_table(
        "lab_catalogues",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("catalogue_id", ID, nullable=False),
        sa.Column("version", ID, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("loaded_at", TS, nullable=False),
        sa.Column("catalogue_sealed", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "catalogue_id", name="pk_lab_catalogues"),
    )
    op.create_index("ix_lab_catalogues_tenant_id_status", "lab_catalogues",
                    ["tenant_id", "status"], unique=False)


def downgrade() -> None:
    for name in ("lab_catalogues", "lab_import_issues", "lab_hl7_messages", "lab_reports",
                 "lab_observation_history", "lab_observations", "lab_specimens", "lab_orders"):
        op.drop_table(name)
