"""Lab workflow tables: orders, specimens, observations, reports, result history,
the HL7 message archive, the import-issues queue and the per-lab test catalogues.

Clear columns are ids, tenant, status, workflow timestamps, and truncated HMAC
digests (blind indexes under the tenant's index key). Everything clinical is sealed
under the *patient's* data key (AES-GCM, associated data = tenant/table/column/row),
so erasing a patient (destroying the data key) erases their orders and results too.
Values that belong to no known patient (an archived message, an issue whose patient
is unknown, a catalogue) are sealed under the tenant's ``data`` key.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, PrimaryKeyConstraint, String, Table

from labvault.store.schema import ID, TS, Blob, metadata

DIGEST = Blob(8)

lab_orders = Table(
    "lab_orders", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("order_id", ID, nullable=False),
    Column("patient_id", ID, nullable=False),
    Column("status", String(30), nullable=False),
    Column("priority", String(10), nullable=False),        # routine | urgent | stat (worklists)
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("placer_digest", DIGEST, nullable=True),        # HMAC of the placer order number
    Column("filler_digest", DIGEST, nullable=True),        # HMAC of the filler (lab) number
    Column("request_sealed", Blob, nullable=False),  # ServiceRequest + patient sex/birth
    Column("workflow_sealed", Blob, nullable=True),  # who/when of each step, reasons
    # keys lead with what rows are read by (a patient's orders; by id: the unique index),
    # so a row is not one random page for its key and another for that index (migration 0010_lab_read_keys)
    PrimaryKeyConstraint("tenant_id", "patient_id", "order_id"),
    Index(None, "order_id", unique=True),
    Index(None, "tenant_id", "status", "created_at"),
    Index(None, "tenant_id", "placer_digest"),
    Index(None, "tenant_id", "filler_digest"),
)

lab_specimens = Table(
    "lab_specimens", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("specimen_id", ID, nullable=False),
    Column("order_id", ID, nullable=False),
    Column("patient_id", ID, nullable=False),
    Column("status", String(20), nullable=False),          # available | rejected | cancelled
    Column("received_at", TS, nullable=False),
    Column("accession_digest", DIGEST, nullable=True),     # HMAC of the accession number
    Column("specimen_sealed", Blob, nullable=False),
    PrimaryKeyConstraint("tenant_id", "order_id", "specimen_id"),   # an order's specimens
    Index(None, "specimen_id", unique=True),
    Index(None, "tenant_id", "accession_digest"),
)

lab_observations = Table(
    "lab_observations", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("observation_id", ID, nullable=False),
    Column("order_id", ID, nullable=False),
    Column("patient_id", ID, nullable=False),
    Column("status", String(20), nullable=False),   # preliminary | final | amended | cancelled
    Column("seq", Integer, nullable=False),          # order of the result within its report
    Column("revision", Integer, nullable=False),     # 1, then +1 per correction
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("result_sealed", Blob, nullable=False),
    # read by order (the key's prefix) or by id (the unique index): an order's results
    # share the key's pages instead of one random page each (migration 0010_lab_read_keys)
    PrimaryKeyConstraint("tenant_id", "order_id", "observation_id"),
    Index(None, "observation_id", unique=True),
    Index(None, "tenant_id", "patient_id"),
)

# One row per change of a result: who, when, what (previous and new value), why. Sealed.
lab_observation_history = Table(
    "lab_observation_history", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("history_id", ID, nullable=False),
    Column("observation_id", ID, nullable=False),
    Column("patient_id", ID, nullable=False),
    Column("revision", Integer, nullable=False),
    Column("changed_at", TS, nullable=False),
    Column("change_sealed", Blob, nullable=False),
    # read only by result: the key leads with it (one random-keyed B-tree per row, not two)
    PrimaryKeyConstraint("tenant_id", "observation_id", "history_id"),
)

lab_reports = Table(
    "lab_reports", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("report_id", ID, nullable=False),
    Column("order_id", ID, nullable=False),
    Column("patient_id", ID, nullable=False),
    Column("status", String(20), nullable=False),    # FHIR DiagnosticReport.status
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("issued_at", TS, nullable=True),          # first publication
    Column("report_sealed", Blob, nullable=True),  # conclusion, validations (who/when)
    PrimaryKeyConstraint("tenant_id", "order_id"),     # one report per order
    Index(None, "report_id", unique=True),
    Index(None, "tenant_id", "patient_id"),
)

# Every accepted HL7 message, sealed as received, with the ACK that was sent (a resend
# of the same MSH-10 gets that ACK again). MSH-10 is kept only as an HMAC digest.
lab_hl7_messages = Table(
    "lab_hl7_messages", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("message_id", ID, nullable=False),
    Column("control_digest", DIGEST, nullable=False),
    Column("patient_id", ID, nullable=True),              # raw sealed under their key if set
    Column("message_type", String(20), nullable=False),   # ORU^R01, ADT^A04 ... (no data)
    Column("status", String(2), nullable=False),          # MSA-1 sent: AA | AE
    Column("received_at", TS, nullable=False),
    Column("raw_sealed", Blob, nullable=False),
    Column("ack_sealed", Blob, nullable=False),
    PrimaryKeyConstraint("tenant_id", "message_id"),
    Index(None, "tenant_id", "control_digest", unique=True),
)

# Results that could not be mapped (unknown patient, unknown code, unit mismatch...):
# kept, sealed, until someone resolves or discards them.
lab_import_issues = Table(
    "lab_import_issues", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("issue_id", ID, nullable=False),
    Column("message_id", ID, nullable=True),
    Column("patient_id", ID, nullable=True),       # set when the patient is known (sealed
                                                    # under their key then)
    Column("kind", String(30), nullable=False),    # unknown-patient | unknown-code | ...
    Column("status", String(20), nullable=False),  # open | resolved | discarded
    Column("created_at", TS, nullable=False),
    Column("resolved_at", TS, nullable=True),
    Column("issue_sealed", Blob, nullable=False),
    Column("resolution_sealed", Blob, nullable=True),
    PrimaryKeyConstraint("tenant_id", "issue_id"),
    Index(None, "tenant_id", "status", "created_at"),
)

# A laboratory's own test catalogue (overrides the shipped default), versioned.
lab_catalogues = Table(
    "lab_catalogues", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("catalogue_id", ID, nullable=False),
    Column("version", String(40), nullable=False),
    Column("status", String(20), nullable=False),  # active | retired
    Column("loaded_at", TS, nullable=False),
    Column("catalogue_sealed", Blob, nullable=False),
    PrimaryKeyConstraint("tenant_id", "catalogue_id"),
    Index(None, "tenant_id", "status"),
)
