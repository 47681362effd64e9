"""Breach blocking keys packed into the patient's encoding row.

One ``blocks`` column (8-byte keys, concatenated) instead of a ``breach_blocks`` row and
two index entries per key: patient writes (imports) were paying for those index inserts,
and triage reads a lab's keys in bulk anyway.

Revision ID: 0008_breach_packed_blocks
Revises: 0007_breach
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_breach_packed_blocks"
down_revision = "0007_breach"
branch_labels = None
depends_on = None

ID = sa.String(40)


def upgrade() -> None:
    op.add_column("breach_encodings", sa.Column("blocks", sa.LargeBinary, nullable=True))
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT tenant_id, patient_id, block FROM breach_blocks "
                                "ORDER BY tenant_id, patient_id, block"))
    packed: dict[tuple[str, str], list[bytes]] = {}
    for tenant_id, patient_id, block in rows:
        packed.setdefault((tenant_id, patient_id), []).append(bytes(block))
    if packed:
        conn.execute(sa.text("UPDATE breach_encodings SET blocks = :b "
                             "WHERE tenant_id = :t AND patient_id = :p"),
                     [{"t": t, "p": p, "b": b"".join(bs)} for (t, p), bs in packed.items()])
    op.drop_index("ix_breach_blocks_tenant_id_patient_id", "breach_blocks")
    op.drop_table("breach_blocks")


def downgrade() -> None:
    op.create_table(
        "breach_blocks",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("block", sa.LargeBinary(8), nullable=False),
        sa.Column("patient_id", ID, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "block", "patient_id", name="pk_breach_blocks"),
    )
    op.create_index("ix_breach_blocks_tenant_id_patient_id", "breach_blocks",
                    ["tenant_id", "patient_id"])
    conn = op.get_bind()
    rows = [{"t": t, "p": p, "b": bytes(blob)[i:i + 8]}
            for t, p, blob in conn.execute(sa.text(
                "SELECT tenant_id, patient_id, blocks FROM breach_encodings "
                "WHERE blocks IS NOT NULL"))
            for i in range(0, len(bytes(blob)), 8)]
    if rows:
        conn.execute(sa.text("INSERT INTO breach_blocks (tenant_id, block, patient_id) "
                             "VALUES (:t, :b, :p)"), rows)
    with op.batch_alter_table("breach_encodings") as batch:
        batch.drop_column("blocks")
