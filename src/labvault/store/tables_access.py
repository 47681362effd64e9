"""Tables of the access module: accounts, MFA recovery codes, sessions, login throttling.

Clear columns are ids, tenant, status, roles (job titles, not personal data), counters
and timestamps. The person's name and e-mail, the password hash and the TOTP secret
are sealed with the tenant's ``data`` key (platform accounts: the ``platform``
pseudo-tenant's key); the login e-mail is found through a keyed blind index
(``email_digest``), never stored in clear.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
)

from labvault.store.schema import ID, TS, Blob, metadata

# Staff (one tenant, one or more roles), patient portal (one tenant + one patient) and
# platform accounts (tenant_id = "platform").
accounts = Table(
    "accounts", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("account_id", ID, nullable=False),
    Column("kind", String(20), nullable=False),          # staff | patient
    Column("status", String(20), nullable=False),        # pending | active | disabled
    Column("roles", String(200), nullable=False),        # comma-separated role names
    Column("patient_id", ID, nullable=True),             # portal accounts: their own record
    Column("email_digest", Blob(16), nullable=False),
    Column("index_version", Integer, nullable=False),    # index key version of email_digest
    Column("profile_sealed", Blob, nullable=False),   # {"name", "email"}
    Column("password_sealed", Blob, nullable=True),   # Argon2id PHC string, sealed
    Column("mfa_sealed", Blob, nullable=True),        # TOTP secret, sealed
    Column("mfa_enabled", Integer, nullable=False, server_default="0"),
    Column("totp_last_step", BigInteger, nullable=False, server_default="0"),  # replay guard
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("password_changed_at", TS, nullable=True),
    PrimaryKeyConstraint("tenant_id", "account_id"),
    Index(None, "account_id", unique=True),
    Index(None, "email_digest"),
)

# One-time recovery codes (random, 60 bits): stored as SHA-256 digests only.
recovery_codes = Table(
    "recovery_codes", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("account_id", ID, nullable=False),
    Column("code_digest", Blob(32), nullable=False),
    Column("used_at", TS, nullable=True),
    PrimaryKeyConstraint("tenant_id", "account_id", "code_digest"),
)

# Sessions and one-time enrolment links: only the SHA-256 of the opaque token is kept.
sessions = Table(
    "sessions", metadata,
    Column("tenant_id", ID, nullable=False),
    Column("session_id", ID, nullable=False),
    Column("token_digest", Blob(32), nullable=False),
    Column("account_id", ID, nullable=False),
    Column("scope", String(20), nullable=False),          # full | mfa-enrol | enrol-link
    Column("created_at", TS, nullable=False),
    Column("last_seen_at", TS, nullable=False),
    Column("expires_at", TS, nullable=False),             # absolute limit
    Column("auth_at", TS, nullable=False),                # last (re-)authentication
    Column("revoked_at", TS, nullable=True),
    PrimaryKeyConstraint("tenant_id", "session_id"),
    Index(None, "token_digest", unique=True),
    Index(None, "account_id"),
)

# Failed-login counters per account and per client address (keyed digest of the address).
login_throttle = Table(
    "login_throttle", metadata,
    Column("tenant_id", ID, nullable=False),              # "platform" for client addresses
    Column("subject", String(80), nullable=False),        # acct:<id> | ip:<hex digest>
    Column("failures", Integer, nullable=False),
    Column("last_failure_at", TS, nullable=False),
    Column("locked_until", TS, nullable=True),
    PrimaryKeyConstraint("tenant_id", "subject"),
)
