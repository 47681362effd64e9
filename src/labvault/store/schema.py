"""SQLAlchemy Core schema.

Timestamps (``TS``) are UTC: written as UTC and read back aware (UTC) on every backend.

Rules (DESIGN §4, §8), checked by tests:
- every table keys on ``tenant_id`` first (distributes by tenant on Citus unchanged);
- identifiers are random (``ids.new_id``), never sequential;
- clear columns are only ids, tenant id, status, workflow timestamps and key ids;
  everything personal is a sealed ``LargeBinary`` (suffix ``_sealed`` or a category
  name) or a truncated HMAC digest.

Each module owning tables declares them on this ``metadata`` in its own
``store/tables_<area>.py`` and ships an Alembic revision on its own branch.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect

metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
})


class UtcOnSqlite(TypeDecorator[datetime]):
    """SQLite keeps timestamps as text without an offset, and hands them back naive.
    labvault writes UTC only, so: an aware value is stored as its UTC time, and every
    value read is UTC again (aware) -- the same as PostgreSQL's ``timestamptz`` gives, so
    no caller ever sees a naive time (and prints UTC as if it were local time)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None,
                             dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Blob(LargeBinary):
    """``LargeBinary`` (BLOB / bytea, the same DDL) whose values go to the driver as the
    bytes they are. SQLAlchemy wraps each value in ``dbapi.Binary`` (a ``memoryview`` on
    sqlite3), which sqlite3 and psycopg do not need (its own comment says so for sqlite3):
    ~1 µs a value, and a sealed record has many (14 per patient imported, ~15 per ORU^R01
    stored) -- +6 % sealed imports (docs/benchmarks.md, session 11). A dialect that maps
    binary to its own type keeps its own processing."""

    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> None:
        return None


ID = String(40)
# PostgreSQL: timestamptz, as is (no per-row cost); SQLite: UTC both ways (above).
TS = DateTime(timezone=True).with_variant(UtcOnSqlite(), "sqlite")

# A laboratory. Its name and FINESS number are public facts about a legal entity,
# not personal data, so they stay clear.
tenants = Table(
    "tenants", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("name", String(200), nullable=False),
    Column("finess", String(9), nullable=False),  # FINESS: French health-facility number
    Column("status", String(20), nullable=False, server_default="active"),
    Column("created_at", TS, nullable=False),
    PrimaryKeyConstraint("tenant_id"),
    Index(None, "finess", unique=True),
)

# Tenant keys, wrapped by the root key held by the key provider.
tenant_keys = Table(
    "tenant_keys", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("purpose", String(20), nullable=False),
    Column("version", Integer, nullable=False),
    Column("root_id", String(40), nullable=False),
    Column("wrapped", Blob, nullable=True),   # NULL once destroyed
    Column("status", String(20), nullable=False),    # active | retired | destroyed
    Column("created_at", TS, nullable=False),
    PrimaryKeyConstraint("tenant_id", "purpose", "version"),
)

patients = Table(
    "patients", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("patient_id", ID, nullable=False),
    Column("status", String(20), nullable=False),    # active | erased | merged
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("identity", Blob, nullable=True),
    Column("contact", Blob, nullable=True),
    Column("coverage", Blob, nullable=True),
    Column("clinical", Blob, nullable=True),
    # a merged duplicate's tombstone: the record kept (services/merge.py; migration 0014)
    Column("merged_into", ID, nullable=True),
    PrimaryKeyConstraint("tenant_id", "patient_id"),
    Index(None, "patient_id", unique=True),
    # "who saw my record" follows the tombstones back to the survivor: found by pointer,
    # not by reading every patient of the laboratory
    Index(None, "tenant_id", "merged_into"),
)

# One wrapped data key per patient. Deleting the row erases the patient (crypto-shredding).
patient_keys = Table(
    "patient_keys", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("patient_id", ID, nullable=False),
    Column("kek_version", Integer, nullable=False),
    Column("wrapped", Blob, nullable=False),
    PrimaryKeyConstraint("tenant_id", "patient_id"),
)

blind_index = Table(
    "blind_index", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("kind", String(20), nullable=False),
    Column("digest", Blob(8), nullable=False),
    Column("patient_id", ID, nullable=False),
    PrimaryKeyConstraint("tenant_id", "kind", "digest", "patient_id"),
    Index(None, "tenant_id", "patient_id"),
)

# Mirror of the shred log file kept outside the database; a restore replays the file.
shred_log = Table(
    "shred_log", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("patient_id", ID, nullable=False),
    Column("shredded_at", TS, nullable=False),
    PrimaryKeyConstraint("tenant_id", "patient_id"),
)
from labvault.store import tables_access  # noqa: E402,F401,I001
from labvault.store import tables_audit  # noqa: E402,F401
from labvault.store import tables_fhir  # noqa: E402,F401
from labvault.store import tables_guard  # noqa: E402,F401
from labvault.store import tables_lab  # noqa: E402,F401
from labvault.store import tables_breach  # noqa: E402,F401
from labvault.store import tables_delivery  # noqa: E402,F401
