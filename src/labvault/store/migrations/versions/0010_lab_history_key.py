"""A result's history keyed by (tenant, result, history id): one B-tree, not two.

Every result written adds a history row; its primary key was ``(tenant_id, history_id)``
(a random id) beside an index on ``(tenant_id, observation_id)`` (another random key),
so each row dirtied two random pages. The history is only ever read by result, so the
primary key now leads with the result and the index goes (docs/benchmarks.md, lab).

Revision ID: 0010_lab_history_key
Revises: 0005_lab
"""

from __future__ import annotations

from alembic import op

revision = "0010_lab_history_key"
down_revision = "0005_lab"
branch_labels = None
depends_on = None

TABLE = "lab_observation_history"
PK = "pk_lab_observation_history"
INDEX = "ix_lab_observation_history_tenant_id_observation_id"


def upgrade() -> None:
    op.drop_index(INDEX, TABLE)
    # SQLite cannot change a primary key in place: batch mode copies the table
    with op.batch_alter_table(TABLE, recreate="always") as batch:
        batch.drop_constraint(PK, type_="primary")
        batch.create_primary_key(PK, ["tenant_id", "observation_id", "history_id"])


def downgrade() -> None:
    with op.batch_alter_table(TABLE, recreate="always") as batch:
        batch.drop_constraint(PK, type_="primary")
        batch.create_primary_key(PK, ["tenant_id", "history_id"])
    op.create_index(INDEX, TABLE, ["tenant_id", "observation_id"])
