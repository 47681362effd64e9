"""Orders, specimens and reports keyed by what they are read by.

Each kept a primary key on its own random id beside an index it is actually read by, so
every row dirtied two random pages (docs/benchmarks.md, lab). The ids stay unique and
indexed (lookups by id); the primary keys now lead with the reading path:

- an order:    (tenant_id, patient_id, order_id)  -- the index by patient goes;
- a specimen:  (tenant_id, order_id, specimen_id) -- the index by order goes;
- a report:    (tenant_id, order_id)              -- one report per order; its unique
  index goes.

Revision ID: 0012_lab_order_keys
Revises: 0011_lab_results_key
"""

from __future__ import annotations

from alembic import op

revision = "0012_lab_order_keys"
down_revision = "0011_lab_results_key"
branch_labels = None
depends_on = None

# table -> (former key, new key, the index the new key replaces, whether it was unique)
CHANGES = {
    "lab_orders": (["tenant_id", "order_id"], ["tenant_id", "patient_id", "order_id"],
                   "ix_lab_orders_tenant_id_patient_id", ["tenant_id", "patient_id"], False),
    "lab_specimens": (["tenant_id", "specimen_id"], ["tenant_id", "order_id", "specimen_id"],
                      "ix_lab_specimens_tenant_id_order_id", ["tenant_id", "order_id"], False),
    "lab_reports": (["tenant_id", "report_id"], ["tenant_id", "order_id"],
                    "ix_lab_reports_tenant_id_order_id", ["tenant_id", "order_id"], True),
}


def upgrade() -> None:
    for table, (_, new, index, _cols, _unique) in CHANGES.items():
        op.drop_index(index, table)
        with op.batch_alter_table(table, recreate="always") as batch:  # SQLite: copy
            batch.drop_constraint(f"pk_{table}", type_="primary")
            batch.create_primary_key(f"pk_{table}", new)


def downgrade() -> None:
    for table, (old, _, index, cols, unique) in CHANGES.items():
        with op.batch_alter_table(table, recreate="always") as batch:
            batch.drop_constraint(f"pk_{table}", type_="primary")
            batch.create_primary_key(f"pk_{table}", old)
        op.create_index(index, table, cols, unique=unique)
