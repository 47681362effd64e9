"""Repositories of the access module (accounts, recovery codes, sessions, throttling)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.engine import Connection

from labvault.store.driver_sql import first, select_rows, select_sql
from labvault.store.tables_access import accounts, login_throttle, recovery_codes, sessions


# -- accounts ------------------------------------------------------------------------------
def insert_account(conn: Connection, row: dict[str, Any]) -> None:
    conn.execute(insert(accounts).values(**row))


_ACCOUNT = select_sql(accounts, "account_id = {p}")


def get_account(conn: Connection, account_id: str) -> dict[str, Any] | None:
    # driver SQL: every request's session check and every validation's signature read it
    rows = select_rows(conn, accounts, _ACCOUNT, (account_id,))
    return rows[0] if rows else None


def delete_patient_accounts(conn: Connection, tenant_id: str, patient_id: str) -> list[str]:
    """Delete the portal accounts of a patient with their sessions and recovery codes;
    their ids."""
    ids = [str(r[0]) for r in conn.execute(select(accounts.c.account_id).where(
        accounts.c.tenant_id == tenant_id, accounts.c.patient_id == patient_id))]
    if ids:
        for table in (sessions, recovery_codes, accounts):
            conn.execute(delete(table).where(table.c.tenant_id == tenant_id,
                                             table.c.account_id.in_(ids)))
    return ids


def accounts_by_digests(conn: Connection, digests: Sequence[bytes]) -> list[dict[str, Any]]:
    if not digests:
        return []
    rows = conn.execute(select(accounts).where(accounts.c.email_digest.in_(list(digests))))
    return [dict(r) for r in rows.mappings()]


def staff_accounts(conn: Connection, tenant_id: str, account_ids: Sequence[str]
                   ) -> list[dict[str, Any]]:
    """The staff accounts of ``tenant_id`` among ``account_ids`` (others left out)."""
    if not account_ids:
        return []
    rows = conn.execute(select(accounts).where(accounts.c.tenant_id == tenant_id,
                                               accounts.c.kind == "staff",
                                               accounts.c.account_id.in_(list(account_ids))))
    return [dict(r) for r in rows.mappings()]


def index_versions(conn: Connection) -> list[tuple[str, int]]:
    """(tenant, index key version) pairs that some account digest was computed with."""
    rows = conn.execute(select(accounts.c.tenant_id, accounts.c.index_version).distinct())
    return [(r[0], int(r[1])) for r in rows]


def update_account(conn: Connection, account_id: str, **values: Any) -> None:
    conn.execute(update(accounts).where(accounts.c.account_id == account_id).values(**values))


def advance_totp_step(conn: Connection, account_id: str, step: int) -> bool:
    """Record ``step`` as used; False if it (or a later one) was used already (replay)."""
    res = conn.execute(update(accounts)
                       .where(and_(accounts.c.account_id == account_id,
                                   accounts.c.totp_last_step < step))
                       .values(totp_last_step=step))
    return bool(res.rowcount)


def tenant_accounts(conn: Connection, tenant_id: str, limit: int, offset: int
                    ) -> list[dict[str, Any]]:
    rows = conn.execute(select(accounts).where(accounts.c.tenant_id == tenant_id)
                        .order_by(accounts.c.account_id).limit(limit).offset(offset))
    return [dict(r) for r in rows.mappings()]


# -- recovery codes -------------------------------------------------------------------------
def replace_recovery_codes(conn: Connection, tenant_id: str, account_id: str,
                           digests: Sequence[bytes]) -> None:
    conn.execute(delete(recovery_codes).where(and_(recovery_codes.c.tenant_id == tenant_id,
                                                   recovery_codes.c.account_id == account_id)))
    if digests:
        conn.execute(insert(recovery_codes), [
            {"tenant_id": tenant_id, "account_id": account_id, "code_digest": d} for d in digests])


def use_recovery_code(conn: Connection, tenant_id: str, account_id: str, digest: bytes,
                      at: datetime) -> bool:
    res = conn.execute(update(recovery_codes).where(and_(
        recovery_codes.c.tenant_id == tenant_id, recovery_codes.c.account_id == account_id,
        recovery_codes.c.code_digest == digest, recovery_codes.c.used_at.is_(None)))
        .values(used_at=at))
    return bool(res.rowcount)


# -- sessions ---------------------------------------------------------------------------------
def insert_session(conn: Connection, row: dict[str, Any]) -> None:
    conn.execute(insert(sessions).values(**row))


_SESSION_BY_DIGEST_SQL = (
    "SELECT s.tenant_id, s.session_id, s.account_id, s.scope, s.last_seen_at, s.expires_at, "
    "s.auth_at, s.revoked_at, a.kind, a.status, a.roles, a.patient_id FROM sessions s "
    "JOIN accounts a ON a.tenant_id = s.tenant_id AND a.account_id = s.account_id "
    "WHERE s.token_digest = {p}")
_SESSION_KEYS = ("tenant_id", "session_id", "account_id", "scope", "last_seen_at",
                 "expires_at", "auth_at", "revoked_at", "kind", "status", "roles", "patient_id")
_SESSION_TIMES = ("last_seen_at", "expires_at", "auth_at", "revoked_at")


def session_with_account(conn: Connection, token_digest: bytes) -> dict[str, Any] | None:
    """The session of a token joined with its account's live status and roles (one query,
    on every authenticated request: plain SQL)."""
    r = first(conn, _SESSION_BY_DIGEST_SQL, (token_digest,))
    if r is None:
        return None
    row = dict(zip(_SESSION_KEYS, r, strict=True))
    for k in _SESSION_TIMES:     # SQLite hands back the text SQLAlchemy wrote
        if isinstance(row[k], str):
            row[k] = datetime.fromisoformat(row[k])
    return row


def get_session(conn: Connection, tenant_id: str, session_id: str) -> dict[str, Any] | None:
    r = conn.execute(select(sessions).where(and_(sessions.c.tenant_id == tenant_id,
                                                 sessions.c.session_id == session_id))
                     ).mappings().first()
    return dict(r) if r else None


def touch_session(conn: Connection, tenant_id: str, session_id: str, at: datetime) -> None:
    conn.execute(update(sessions).where(and_(sessions.c.tenant_id == tenant_id,
                                             sessions.c.session_id == session_id))
                 .values(last_seen_at=at))


def revoke_session(conn: Connection, tenant_id: str, session_id: str, at: datetime) -> None:
    conn.execute(update(sessions).where(and_(sessions.c.tenant_id == tenant_id,
                                             sessions.c.session_id == session_id,
                                             sessions.c.revoked_at.is_(None)))
                 .values(revoked_at=at))


def revoke_account_sessions(conn: Connection, tenant_id: str, account_id: str, at: datetime,
                            except_session: str | None = None) -> int:
    cond = and_(sessions.c.tenant_id == tenant_id, sessions.c.account_id == account_id,
                sessions.c.revoked_at.is_(None))
    if except_session:
        cond = and_(cond, sessions.c.session_id != except_session)
    return int(conn.execute(update(sessions).where(cond).values(revoked_at=at)).rowcount)


def set_session_auth(conn: Connection, tenant_id: str, session_id: str, at: datetime) -> None:
    conn.execute(update(sessions).where(and_(sessions.c.tenant_id == tenant_id,
                                             sessions.c.session_id == session_id))
                 .values(auth_at=at))


def purge_sessions(conn: Connection, before: datetime) -> int:
    return int(conn.execute(delete(sessions).where(sessions.c.expires_at < before)).rowcount)


# -- throttling -------------------------------------------------------------------------------
def throttle_rows(conn: Connection, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str],
                                                                            dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for tenant_id, subject in keys:
        r = conn.execute(select(login_throttle).where(and_(
            login_throttle.c.tenant_id == tenant_id,
            login_throttle.c.subject == subject))).mappings().first()
        if r:
            out[(tenant_id, subject)] = dict(r)
    return out


def upsert_throttle(conn: Connection, tenant_id: str, subject: str, failures: int,
                    at: datetime, locked_until: datetime | None) -> None:
    res = conn.execute(update(login_throttle).where(and_(
        login_throttle.c.tenant_id == tenant_id, login_throttle.c.subject == subject))
        .values(failures=failures, last_failure_at=at, locked_until=locked_until))
    if not res.rowcount:
        conn.execute(insert(login_throttle).values(tenant_id=tenant_id, subject=subject,
                                                   failures=failures, last_failure_at=at,
                                                   locked_until=locked_until))


def clear_throttle(conn: Connection, tenant_id: str, subject: str) -> None:
    conn.execute(delete(login_throttle).where(and_(login_throttle.c.tenant_id == tenant_id,
                                                   login_throttle.c.subject == subject)))
