"""Results keyed by (tenant, order, result): an order's results share index pages.

A result's primary key was ``(tenant_id, observation_id)`` (a random id) beside an index
on ``(tenant_id, order_id)``; the five results of an analyser's message dirtied five
random pages of the key and one of the index. Results are read by order or by their id
(the unique ``observation_id`` index, kept), so the primary key now leads with the order
and that index goes (docs/benchmarks.md, lab).

Revision ID: 0011_lab_results_key
Revises: 0010_lab_history_key
"""

from __future__ import annotations

from alembic import op

revision = "0011_lab_results_key"
down_revision = "0010_lab_history_key"
branch_labels = None
depends_on = None

TABLE = "lab_observations"
PK = "pk_lab_observations"
INDEX = "ix_lab_observations_tenant_id_order_id"


def upgrade() -> None:
    op.drop_index(INDEX, TABLE)
    with op.batch_alter_table(TABLE, recreate="always") as batch:   # SQLite: copy the table
        batch.drop_constraint(PK, type_="primary")
        batch.create_primary_key(PK, ["tenant_id", "order_id", "observation_id"])


def downgrade() -> None:
    with op.batch_alter_table(TABLE, recreate="always") as batch:
        batch.drop_constraint(PK, type_="primary")
        batch.create_primary_key(PK, ["tenant_id", "observation_id"])
    op.create_index(INDEX, TABLE, ["tenant_id", "order_id"])
