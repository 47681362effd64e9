"""Guard alerts: the subject a clinical alert is about.

A panic value was merged into any open ``panic-value`` alert of the same account (an
analyser sends every result as one account), so later patients were never named nor
sent. Clinical alerts now merge only with an alert about the same subject: a keyed
HMAC (tenant ``guard`` key) of the result and its value, kept clear so the lookup is
one index search; the value itself stays out of the database.

Revision ID: 0011_guard_alert_subject
Revises: 0006_guard
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_guard_alert_subject"
down_revision = "0006_guard"
branch_labels = None
depends_on = None

INDEX = "ix_guard_alerts_tenant_id_kind_subject_digest"


def upgrade() -> None:
    op.add_column("guard_alerts", sa.Column("subject_digest", sa.LargeBinary(16), nullable=True))
    op.create_index(INDEX, "guard_alerts", ["tenant_id", "kind", "subject_digest"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name="guard_alerts")
    with op.batch_alter_table("guard_alerts") as batch:
        batch.drop_column("subject_digest")
