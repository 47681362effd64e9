"""Result delivery tables: where a laboratory's reports go (HL7 v2 ORU^R01 over MLLP)
and the outbox of messages waiting to go there.

Clear columns are ids, tenant, status, counters, times, the receiver's network address
(host, port and the paths of the TLS files: not personal data) and truncated HMAC
digests of prescribers' RPPS numbers (blind indexes under the tenant's index key). The
destination's label is sealed under the tenant's ``data`` key (it may be a doctor's
name); a composed message is sealed under the *patient's* data key, like every other
clinical row, so erasing the patient erases the messages not yet sent too.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, PrimaryKeyConstraint, String, Table

from labvault.store.schema import ID, TS, Blob, metadata

DIGEST = Blob(8)

delivery_destinations = Table(
    "delivery_destinations", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("destination_id", ID, nullable=False),
    Column("status", String(10), nullable=False),        # active | removed
    Column("host", String(255), nullable=False),
    Column("port", Integer, nullable=False),
    Column("transport", String(10), nullable=False),     # tls | plaintext
    Column("tls_ca", String(1024), nullable=True),        # PEM file paths on the sending host
    Column("tls_cert", String(1024), nullable=True),
    Column("tls_key", String(1024), nullable=True),
    Column("routing", String(10), nullable=False),       # all | rpps
    Column("created_at", TS, nullable=False),
    Column("removed_at", TS, nullable=True),
    Column("label_sealed", Blob, nullable=False),  # the name given at `delivery add`
    # the RPPS numbers of its routes (JSON list): an index-key rotation recomputes the
    # routes' digests from them (migration 0015; NULL for destinations added before)
    Column("prescribers_sealed", Blob, nullable=True),
    PrimaryKeyConstraint("tenant_id", "destination_id"),
)

# Which prescribers' reports go to a destination: HMAC of the RPPS number, never the number.
delivery_routes = Table(
    "delivery_routes", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("rpps_digest", DIGEST, nullable=False),
    Column("destination_id", ID, nullable=False),
    PrimaryKeyConstraint("tenant_id", "rpps_digest", "destination_id"),
)

# One row per message to send: composed and sealed in the transaction that published or
# amended the report, then sent (and marked) by `labvault delivery send`.
delivery_outbox = Table(
    "delivery_outbox", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("outbox_id", ID, nullable=False),             # also the message's MSH-10
    Column("destination_id", ID, nullable=False),
    Column("report_id", ID, nullable=False),
    Column("order_id", ID, nullable=False),
    Column("patient_id", ID, nullable=False),
    Column("kind", String(10), nullable=False),          # final | corrected
    Column("status", String(10), nullable=False),        # pending | delivered | failed
    Column("attempts", Integer, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("next_attempt_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("delivered_at", TS, nullable=True),
    Column("ack_code", String(2), nullable=True),        # MSA-1 received: AA | CA | AE | AR
    Column("message_sealed", Blob, nullable=False),
    Column("error_sealed", Blob, nullable=True),  # why it failed (tenant data key)
    PrimaryKeyConstraint("tenant_id", "outbox_id"),
    Index(None, "status", "next_attempt_at"),
    Index(None, "tenant_id", "status", "created_at"),
    Index(None, "tenant_id", "report_id"),                # a report's deliveries (console)
)
