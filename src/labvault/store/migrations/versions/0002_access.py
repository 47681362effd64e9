"""Access: accounts, recovery codes, sessions, login throttling.

Revision ID: 0002_access
Revises: 0001_foundation
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_access"
down_revision = "0001_foundation"
branch_labels = ("access",)
depends_on = None

ID = sa.String(40)
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("account_id", ID, nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("roles", sa.String(200), nullable=False),
        sa.Column("patient_id", ID, nullable=True),
        sa.Column("email_digest", sa.LargeBinary(16), nullable=False),
        sa.Column("index_version", sa.Integer, nullable=False),
        sa.Column("profile_sealed", sa.LargeBinary, nullable=False),
        sa.Column("password_sealed", sa.LargeBinary, nullable=True),
        sa.Column("mfa_sealed", sa.LargeBinary, nullable=True),
        sa.Column("mfa_enabled", sa.Integer, nullable=False, server_default="0"),
        sa.Column("totp_last_step", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("password_changed_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "account_id", name="pk_accounts"),
    )
    op.create_index("ix_accounts_account_id", "accounts", ["account_id"], unique=True)
    op.create_index("ix_accounts_email_digest", "accounts", ["email_digest"])
    op.create_table(
        "recovery_codes",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("account_id", ID, nullable=False),
        sa.Column("code_digest", sa.LargeBinary(32), nullable=False),
        sa.Column("used_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "account_id", "code_digest",
                                name="pk_recovery_codes"),
    )
    op.create_table(
        "sessions",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("session_id", ID, nullable=False),
        sa.Column("token_digest", sa.LargeBinary(32), nullable=False),
        sa.Column("account_id", ID, nullable=False),
        sa.Column("scope", sa.String(20), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("last_seen_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("auth_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "session_id", name="pk_sessions"),
    )
    op.create_index("ix_sessions_token_digest", "sessions", ["token_digest"], unique=True)
    op.create_index("ix_sessions_account_id", "sessions", ["account_id"])
    op.create_table(
        "login_throttle",
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("subject", sa.String(80), nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("last_failure_at", TS, nullable=False),
        sa.Column("locked_until", TS, nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "subject", name="pk_login_throttle"),
    )


def downgrade() -> None:
    for name in ("login_throttle", "sessions", "recovery_codes", "accounts"):
        op.drop_table(name)
