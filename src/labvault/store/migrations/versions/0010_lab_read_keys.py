"""Lab rows keyed by what they are read by.

Each lab table kept a primary key on its own random id beside an index it is actually
read by, so every row an HL7 message or a FHIR Bundle writes dirtied two random pages
(docs/benchmarks.md, lab). The ids stay unique and indexed (lookups by id); the primary
keys now lead with the reading path, and the index each one replaces goes:

- a result's history: (tenant_id, observation_id, history_id) -- read by result;
- a result:           (tenant_id, order_id, observation_id)   -- an order's results share
  pages;
- an order:           (tenant_id, patient_id, order_id);
- a specimen:         (tenant_id, order_id, specimen_id);
- a report:           (tenant_id, order_id)                   -- one report per order.

Revision ID: 0010_lab_read_keys
Revises: 0005_lab
"""

from __future__ import annotations

from alembic import op

revision = "0010_lab_read_keys"
down_revision = "0005_lab"
branch_labels = None
depends_on = None

# table -> (former key, new key, the index the new key replaces: name, columns, unique)
CHANGES = {
    "lab_observation_history": (
        ["tenant_id", "history_id"], ["tenant_id", "observation_id", "history_id"],
        ("ix_lab_observation_history_tenant_id_observation_id",
         ["tenant_id", "observation_id"], False)),
    "lab_observations": (
        ["tenant_id", "observation_id"], ["tenant_id", "order_id", "observation_id"],
        ("ix_lab_observations_tenant_id_order_id", ["tenant_id", "order_id"], False)),
    "lab_orders": (
        ["tenant_id", "order_id"], ["tenant_id", "patient_id", "order_id"],
        ("ix_lab_orders_tenant_id_patient_id", ["tenant_id", "patient_id"], False)),
    "lab_specimens": (
        ["tenant_id", "specimen_id"], ["tenant_id", "order_id", "specimen_id"],
        ("ix_lab_specimens_tenant_id_order_id", ["tenant_id", "order_id"], False)),
    "lab_reports": (
        ["tenant_id", "report_id"], ["tenant_id", "order_id"],
        ("ix_lab_reports_tenant_id_order_id", ["tenant_id", "order_id"], True)),
}


def _rekey(table: str, key: list[str]) -> None:
    # SQLite cannot change a primary key in place: batch mode copies the table
    with op.batch_alter_table(table, recreate="always") as batch:
        batch.drop_constraint(f"pk_{table}", type_="primary")
        batch.create_primary_key(f"pk_{table}", key)


def upgrade() -> None:
    for table, (_, new, (index, _, _)) in CHANGES.items():
        op.drop_index(index, table)
        _rekey(table, new)


def downgrade() -> None:
    for table, (old, _, (index, columns, unique)) in CHANGES.items():
        _rekey(table, old)
        op.create_index(index, table, columns, unique=unique)
