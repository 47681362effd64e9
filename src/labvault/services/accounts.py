"""Accounts and authentication: named accounts, login (password + TOTP), sessions,
throttling, MFA enrolment, administration (disable, unlock, reset MFA, roles).

Personal data of an account (name, e-mail) and its secrets (password hash, TOTP
secret) are sealed with the laboratory's ``data`` key (platform accounts: the
``platform`` pseudo-tenant's own keys); the login e-mail is found through a keyed
blind index. Every authentication event is written to the audit hook (ids only).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection

from labvault.access import accounts as acc
from labvault.access import mfa, passwords, throttle
from labvault.access import sessions as sess
from labvault.crypto import blind_index as bi
from labvault.domain.actors import Actor
from labvault.domain.categories import Action, Category
from labvault.errors import (
    AccessDenied,
    AuthenticationFailed,
    Conflict,
    InvalidField,
    NotFound,
    UserError,
)
from labvault.services.gate import Access
from labvault.store import repositories as repo
from labvault.store import repositories_access as arepo
from labvault.store.ids import new_id

if TYPE_CHECKING:
    from labvault.services.app import Labvault

PLATFORM = acc.PLATFORM_TENANT
EMAIL_KIND = "account_email"
ACCOUNT_CATS = frozenset({Category.ACCOUNT})
LOGIN_FAILED = ("login failed",
                "check your e-mail, password and authenticator code; after repeated failures "
                "wait a few minutes or ask your laboratory administrator")


class LoginThrottled(AuthenticationFailed):
    """Too many failed attempts from this client address (says nothing about accounts)."""

    code = "too-many-attempts"
    http_status = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__("too many login attempts", "wait before trying again")
        self.retry_after = retry_after


class ReauthenticationRequired(AccessDenied):
    code = "reauthentication-required"
    http_status = 401


@dataclass(frozen=True)
class LoginResult:
    token: str
    expires_at: datetime
    account_id: str
    scope: str


def _anonymous(client: str | None) -> Actor:
    """Who a failed login is recorded under: no roles, so the gate denies it everything."""
    return Actor(kind="staff", id="anonymous", tenant_id=None, client=client,
                 display="unauthenticated")


class AccountService:
    def __init__(self, lv: Labvault) -> None:
        self.lv = lv
        st = lv.settings
        hours = timedelta(hours=float(st.get("LABVAULT_SESSION_HOURS")))
        self.session_policy = sess.SessionPolicy(
            idle=timedelta(minutes=float(st.get("LABVAULT_SESSION_IDLE_MINUTES"))),
            absolute_staff=hours, absolute_patient=hours)
        self.public_url = st.get("LABVAULT_PUBLIC_URL").rstrip("/")
        self._client_secret: bytes | None = None
        lv.patients.erase_hooks.append(self.on_patient_erased)

    def on_patient_erased(self, conn: Connection, tenant_id: str, patient_id: str) -> None:
        """An erased patient's portal accounts go with the record (erasure and replay of the
        shred log): their name, e-mail and password hash are personal data the erasure was
        asked for, and a live account would keep logging in to a portal with nothing in it."""
        for account_id in arepo.delete_patient_accounts(conn, tenant_id, patient_id):
            arepo.clear_throttle(conn, tenant_id, throttle.account_subject(account_id))

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read-only connection (no BEGIN/COMMIT of a write transaction)."""
        bound = self.lv._bound
        if bound is not None:
            yield bound
        else:
            with self.lv.engine.connect() as conn:
                yield conn

    # -- keys ----------------------------------------------------------------------------------
    def _ensure_platform_keys(self, conn: Connection) -> None:
        if repo.current_key_version(conn, PLATFORM, "data") is None:
            for purpose in ("kek", "index", "data"):
                repo.insert_tenant_key(conn, self.lv.keyring.new_tenant_key(PLATFORM, purpose, 1))

    def _key_tenant(self, tenant_id: str | None) -> str:
        return tenant_id or PLATFORM

    def _email_digest(self, conn: Connection, key_tenant: str, version: int, email: str) -> bytes:
        self.lv.load_tenant_keys(conn, key_tenant)
        return bi.digest(self.lv.keyring.blind_index_key(key_tenant, version), EMAIL_KIND,
                         bi.normalise_email(email))

    def _candidates(self, conn: Connection, email: str,
                    extra: tuple[str, int] | None = None) -> list[dict[str, Any]]:
        pairs = set(arepo.index_versions(conn))
        if extra:
            pairs.add(extra)
        digests = []
        for tenant_id, version in sorted(pairs):
            try:
                digests.append(self._email_digest(conn, tenant_id, version, email))
            except UserError:
                continue          # a tenant whose keys are gone has no usable accounts
        rows = arepo.accounts_by_digests(conn, digests)
        out = []
        for r in rows:      # the digest is per tenant key: keep rows whose own digest matches
            try:
                if self._email_digest(conn, r["tenant_id"], r["index_version"],
                                      email) == r["email_digest"]:
                    out.append(r)
            except UserError:
                continue
        return out

    def _seal(self, conn: Connection, key_tenant: str, column: str, account_id: str,
              value: bytes) -> bytes:
        return self.lv.gate.seal_tenant_value(conn, key_tenant, "accounts", column, account_id,
                                              value)

    def _open(self, conn: Connection, row: Mapping[str, Any], column: str) -> bytes:
        return self.lv.gate.open_tenant_value_checked(conn, row["tenant_id"], "accounts", column,
                                                      row["account_id"], row[column])

    def _client_subject(self, conn: Connection, client: str | None) -> str:
        if self._client_secret is None:
            self._ensure_platform_keys(conn)
            self.lv.load_tenant_keys(conn, PLATFORM)
            self._client_secret = self.lv.keyring.tenant_secret(PLATFORM, "index", 1,
                                                                "throttle-client")
        return throttle.client_subject(client, self._client_secret)

    # -- creation -----------------------------------------------------------------------------
    def create(self, actor: Actor, tenant_id: str | None, roles: list[str] | tuple[str, ...],
               name: str, email: str, password: str | None = None,
               patient_id: str | None = None, totp_secret: str | None = None) -> dict[str, Any]:
        """A named personal account. With ``password``: active at once, TOTP secret returned
        (shown once). Without: pending, with a one-time enrolment link.
        ``totp_secret`` is for seeding demo data only (``labvault demo``)."""
        kind = "patient" if list(roles) == ["patient"] else "staff"
        roles = acc.validate_roles(kind, list(roles))
        name, email = acc.validate_person(name, email)
        if "platform_operator" in roles and tenant_id is not None:
            raise InvalidField("tenant", "platform_operator accounts belong to no laboratory",
                               "omit --tenant for a platform operator")
        if "platform_operator" not in roles and tenant_id is None:
            raise InvalidField("tenant", "is required for laboratory and patient accounts",
                               "give --tenant ID")
        if kind == "patient" and not patient_id:
            raise InvalidField("patient_id", "is required for a patient account",
                               "give the id of the patient's record")
        if password is not None:
            passwords.check_password(password, [name, email])
        lv = self.lv
        key_tenant = self._key_tenant(tenant_id)
        account_id = new_id("acct")
        now = lv.now()
        with lv.begin() as conn:
            lv.gate.check(conn, Access(actor, Action.WRITE, tenant_id, ACCOUNT_CATS,
                                       purpose="administration", resource="user",
                                       patient_ids=(patient_id,) if patient_id else ()))
            if tenant_id is not None and repo.get_tenant(conn, tenant_id) is None:
                raise NotFound(f"no laboratory {tenant_id}", "use `labvault tenant list`")
            if patient_id and repo.patient_tenant(conn, patient_id) != tenant_id:
                raise NotFound("no such patient", "check the patient id")
            if tenant_id is None:
                self._ensure_platform_keys(conn)
            lv.load_tenant_keys(conn, key_tenant)
            version = repo.current_key_version(conn, key_tenant, "index")
            assert version is not None
            if self._candidates(conn, email, (key_tenant, version)):
                raise Conflict("an account with this e-mail address exists",
                               "each person has one account; reuse or disable the existing one")
            row: dict[str, Any] = {
                "tenant_id": key_tenant, "account_id": account_id, "kind": kind,
                "status": "active" if password is not None else "pending",
                "roles": ",".join(roles), "patient_id": patient_id,
                "email_digest": self._email_digest(conn, key_tenant, version, email),
                "index_version": version,
                "profile_sealed": self._seal(conn, key_tenant, "profile_sealed", account_id,
                                             json.dumps({"name": name, "email": email}).encode()),
                "created_at": now, "updated_at": now, "mfa_enabled": 0, "totp_last_step": 0,
            }
            out: dict[str, Any] = {"id": account_id, "tenant_id": tenant_id, "kind": kind,
                                   "roles": list(roles), "status": row["status"]}
            if password is not None:
                row["password_sealed"] = self._seal(conn, key_tenant, "password_sealed",
                                                    account_id,
                                                    passwords.hash_password(password).encode())
                row["password_changed_at"] = now
                if kind == "staff":
                    secret = totp_secret or mfa.new_secret()
                    row["mfa_sealed"] = self._seal(conn, key_tenant, "mfa_sealed", account_id,
                                                   secret.encode())
                    row["mfa_enabled"] = 1
                    out["otpauth_uri"] = mfa.otpauth_uri(secret, email)
                    out["recovery_codes"] = self._new_recovery(conn, key_tenant, account_id)
                else:
                    out["otpauth_uri"] = None
            arepo.insert_account(conn, row)
            if password is None:
                out.update(self._enrolment_link(conn, key_tenant, account_id, now))
            lv.gate.audit.event(conn, actor, "user.create", "success", tenant_id,
                                {"account_id": account_id, "roles": list(roles)})
        return out

    def _enrolment_link(self, conn: Connection, key_tenant: str, account_id: str,
                        now: datetime) -> dict[str, str]:
        """A one-time enrolment link (72 h): the token is shown once, only its digest kept."""
        token, digest = sess.new_token()
        arepo.insert_session(conn, {
            "tenant_id": key_tenant, "session_id": new_id("ses"), "token_digest": digest,
            "account_id": account_id, "scope": sess.ENROL_LINK_SCOPE, "created_at": now,
            "last_seen_at": now, "auth_at": now, "expires_at": now + sess.ENROL_LINK})
        return {"enrolment_link": f"{self.public_url}/enrol#token={token}",
                "enrolment_token": token,
                "enrolment_expires_at": (now + sess.ENROL_LINK).isoformat()}

    def _new_recovery(self, conn: Connection, key_tenant: str, account_id: str) -> list[str]:
        codes = mfa.new_recovery_codes()
        arepo.replace_recovery_codes(conn, key_tenant, account_id,
                                     [mfa.recovery_digest(c) for c in codes])
        return codes

    def enrol(self, token: str, password: str, client: str | None = None) -> dict[str, Any]:
        """Complete a one-time enrolment link: set the password; staff without a second
        factor get their TOTP secret (after ``reset_password`` they keep the one they have)."""
        lv = self.lv
        now = lv.now()
        with lv.begin() as conn:
            s = arepo.session_with_account(conn, sess.token_digest(token or ""))
            if (s is None or s["scope"] != sess.ENROL_LINK_SCOPE
                    or not sess.is_live(s, now, self.session_policy) or s["status"] != "pending"):
                raise AuthenticationFailed("this enrolment link is not valid",
                                           "ask your administrator for a new link")
            row = arepo.get_account(conn, s["account_id"])
            assert row is not None
            profile = json.loads(self._open(conn, row, "profile_sealed"))
            passwords.check_password(password, [profile["name"], profile["email"]])
            values: dict[str, Any] = {
                "password_sealed": self._seal(conn, row["tenant_id"], "password_sealed",
                                              row["account_id"],
                                              passwords.hash_password(password).encode()),
                "password_changed_at": now, "status": "active", "updated_at": now}
            out: dict[str, Any] = {"id": row["account_id"], "otpauth_uri": None,
                                   # a password chosen before: this link came from a reset
                                   "password_reset": row["password_changed_at"] is not None}
            if row["kind"] == "staff" and not row["mfa_enabled"]:
                secret = mfa.new_secret()
                values["mfa_sealed"] = self._seal(conn, row["tenant_id"], "mfa_sealed",
                                                  row["account_id"], secret.encode())
                values["mfa_enabled"] = 1
                out["otpauth_uri"] = mfa.otpauth_uri(secret, profile["email"])
                out["recovery_codes"] = self._new_recovery(conn, row["tenant_id"],
                                                           row["account_id"])
            arepo.update_account(conn, row["account_id"], **values)
            arepo.revoke_session(conn, s["tenant_id"], s["session_id"], now)
            # failures against the password just replaced say nothing about the new one
            arepo.clear_throttle(conn, row["tenant_id"],
                                 throttle.account_subject(row["account_id"]))
            lv.gate.audit.event(conn, self._actor_of(row, client), "user.enrol", "success",
                                self._public_tenant(row["tenant_id"]),
                                {"account_id": row["account_id"]})
        return out

    # -- login ------------------------------------------------------------------------------------
    @staticmethod
    def _public_tenant(tenant_id: str) -> str | None:
        return None if tenant_id == PLATFORM else tenant_id

    def _actor_of(self, row: Mapping[str, Any], client: str | None,
                  session_id: str | None = None) -> Actor:
        return Actor(kind="patient" if row["kind"] == "patient" else "staff",
                     id=row["account_id"],
                     tenant_id=self._public_tenant(row["tenant_id"]),
                     roles=frozenset(r for r in row["roles"].split(",") if r),
                     display=row["account_id"], client=client, session_id=session_id,
                     patient_id=row["patient_id"])

    def login(self, email: str, password: str, totp: str | None = None,
              client: str | None = None) -> LoginResult:
        """Password (+ TOTP for accounts that enrolled it) -> a new session token.

        Every failure says the same thing; failures are counted per account and per
        client address (exponential backoff, then lockout)."""
        lv = self.lv
        now = lv.now()
        failure: str | None = None
        result: LoginResult | None = None
        email = (email or "")[:320]
        password = password or ""
        with lv.begin() as conn:
            client_key = (PLATFORM, self._client_subject(conn, client))
            crow = arepo.throttle_rows(conn, [client_key]).get(client_key)
            wait = throttle.retry_at(crow, throttle.CLIENT_RULES)
            if wait is not None and wait > now:
                failure = "client-throttled"
                retry = max(1, int((wait - now).total_seconds()) + 1)
            else:
                retry = 0
                try:
                    candidates = self._candidates(conn, email) if "@" in email else []
                except UserError:
                    candidates = []
                row = candidates[0] if len(candidates) == 1 else None
                if row is None:
                    passwords.dummy_verify(password)
                    failure = "unknown-account"
                else:
                    akey = (row["tenant_id"], throttle.account_subject(row["account_id"]))
                    arow = arepo.throttle_rows(conn, [akey]).get(akey)
                    wait_a = throttle.retry_at(arow, throttle.ACCOUNT_RULES)
                    if wait_a is not None and wait_a > now:
                        passwords.dummy_verify(password)
                        failure = "account-locked"
                    elif row["status"] != "active" or row["password_sealed"] is None:
                        passwords.dummy_verify(password)
                        failure = f"account-{row['status']}"
                    else:
                        stored = self._open(conn, row, "password_sealed").decode()
                        if not passwords.verify_password(stored, password):
                            failure = "wrong-password"
                        elif lv.guard.is_suspended(conn, row["account_id"], row["tenant_id"]):
                            # A read-budget breach suspended the account (guard): only a
                            # lab_admin release lifts it; the answer stays the generic one.
                            failure = "account-suspended"
                        else:
                            failure = self._second_factor(conn, row, totp, now)
                            if failure is None and passwords.needs_rehash(stored):
                                arepo.update_account(conn, row["account_id"], password_sealed=(
                                    self._seal(conn, row["tenant_id"], "password_sealed",
                                               row["account_id"],
                                               passwords.hash_password(password).encode())))
                    if failure is None:
                        arepo.clear_throttle(conn, *akey)
                        result = self._open_session(conn, row, now, client)
                        lv.gate.audit.event(conn, self._actor_of(row, client, None), "login",
                                            "success", self._public_tenant(row["tenant_id"]),
                                            {"account_id": row["account_id"],
                                             "scope": result.scope})
                    elif failure != "account-locked":
                        n, locked = throttle.after_failure(arow, now, throttle.ACCOUNT_RULES)
                        arepo.upsert_throttle(conn, *akey, n, now, locked)
                        if locked is not None and (arow is None or arow.get("locked_until") is None):
                            lv.gate.audit.event(conn, self._actor_of(row, client), "account.lock",
                                                "locked", self._public_tenant(row["tenant_id"]),
                                                {"account_id": row["account_id"]})
                if failure is not None:
                    n, locked = throttle.after_failure(crow, now, throttle.CLIENT_RULES)
                    arepo.upsert_throttle(conn, *client_key, n, now, locked)
                    tenant = self._public_tenant(row["tenant_id"]) if row else None
                    lv.gate.audit.event(conn, self._actor_of(row, client) if row
                                        else _anonymous(client), "login", "failure", tenant,
                                        {"reason": failure,
                                         "account_id": row["account_id"] if row else None})
        if failure == "client-throttled":
            raise LoginThrottled(retry)
        if failure is not None or result is None:
            raise AuthenticationFailed(*LOGIN_FAILED)
        return result

    def _second_factor(self, conn: Connection, row: Mapping[str, Any], code: str | None,
                       now: datetime) -> str | None:
        if not row["mfa_enabled"]:
            return None
        code = (code or "").strip()
        if not code:
            return "totp-missing"
        if len(code.replace("-", "").replace(" ", "")) == 12:     # a recovery code
            ok = arepo.use_recovery_code(conn, row["tenant_id"], row["account_id"],
                                         mfa.recovery_digest(code), now)
            return None if ok else "recovery-code-invalid"
        secret = self._open(conn, row, "mfa_sealed").decode()
        step = mfa.matching_step(secret, code, now.timestamp())
        if step is None:
            return "totp-invalid"
        if not arepo.advance_totp_step(conn, row["account_id"], step):
            return "totp-replayed"
        return None

    def _open_session(self, conn: Connection, row: Mapping[str, Any], now: datetime,
                      client: str | None) -> LoginResult:
        staff = row["kind"] == "staff"
        scope = sess.MFA_ENROL if staff and not row["mfa_enabled"] else sess.FULL
        life = self.session_policy.absolute_staff if staff else self.session_policy.absolute_patient
        token, digest = sess.new_token()
        expires = now + life
        arepo.insert_session(conn, {
            "tenant_id": row["tenant_id"], "session_id": new_id("ses"), "token_digest": digest,
            "account_id": row["account_id"], "scope": scope, "created_at": now,
            "last_seen_at": now, "auth_at": now, "expires_at": expires})
        return LoginResult(token, expires, row["account_id"], scope)

    # -- sessions -----------------------------------------------------------------------------------
    def resolve(self, token: str, client: str | None = None,
                scopes: tuple[str, ...] = (sess.FULL,)) -> Actor:
        """The actor behind a session token, with the account's roles *now*."""
        if not token or len(token) > 200:
            raise AuthenticationFailed("authentication required", "log in at /api/v1/auth/login")
        lv = self.lv
        now = lv.now()
        with self._read() as conn:          # read-only: no write transaction per request
            s = arepo.session_with_account(conn, sess.token_digest(token))
            suspended = s is not None and lv.guard.suspended_cached(
                conn, s["tenant_id"], s["account_id"], time.time())
        if (s is None or s["scope"] not in scopes or s["status"] != "active" or suspended
                or not sess.is_live(s, now, self.session_policy)):
            raise AuthenticationFailed("session expired or invalid",
                                       "log in again at /api/v1/auth/login")
        if sess.aware(s["last_seen_at"]) + sess.TOUCH_EVERY <= now:
            with lv.begin() as conn:        # idle clock: written at most every TOUCH_EVERY
                arepo.touch_session(conn, s["tenant_id"], s["session_id"], now)
        return Actor(kind="patient" if s["kind"] == "patient" else "staff",
                     id=s["account_id"], tenant_id=self._public_tenant(s["tenant_id"]),
                     roles=frozenset(r for r in s["roles"].split(",") if r),
                     display=s["account_id"], client=client, session_id=s["session_id"],
                     patient_id=s["patient_id"])

    def _session_tenant(self, actor: Actor) -> str:
        return self._key_tenant(actor.tenant_id)

    def logout(self, actor: Actor) -> None:
        if actor.session_id is None:
            return
        with self.lv.begin() as conn:
            arepo.revoke_session(conn, self._session_tenant(actor), actor.session_id,
                                 self.lv.now())
            self.lv.gate.audit.event(conn, actor, "logout", "success", actor.tenant_id,
                                     {"account_id": actor.id, "session_id": actor.session_id})

    def revoke_all(self, actor: Actor, keep_current: bool = False) -> int:
        with self.lv.begin() as conn:
            n = arepo.revoke_account_sessions(conn, self._session_tenant(actor), actor.id,
                                              self.lv.now(),
                                              actor.session_id if keep_current else None)
            self.lv.gate.audit.event(conn, actor, "session.revoke-all", "success",
                                     actor.tenant_id, {"account_id": actor.id, "revoked": n})
        return n

    def name_of(self, actor: Actor) -> str:
        """The acting person's own name, to sign what they validate (a report names the
        biologist who validated it). Not a gate read: it is the caller's own account.
        Actors without a profile (CLI operator, system jobs) give their display."""
        if actor.kind not in ("staff", "patient"):
            return actor.display or actor.id
        with self.lv.begin() as conn:
            row = arepo.get_account(conn, actor.id)
            if row is None:
                return actor.display or actor.id
            return str(json.loads(self._open(conn, row, "profile_sealed"))["name"])

    def staff_names(self, conn: Connection, tenant_id: str,
                    account_ids: Iterable[str]) -> dict[str, str]:
        """The names of the staff accounts of laboratory ``tenant_id`` among
        ``account_ids`` (account id -> name), for a record the caller was already allowed
        to read that names who acted on it (who acknowledged an alert), in the caller's
        transaction after its gate decision. Accounts of another laboratory, patients'
        accounts and accounts gone since are left out: the page shows their id."""
        ids = sorted({i for i in account_ids if i})
        out: dict[str, str] = {}
        for row in arepo.staff_accounts(conn, tenant_id, ids):
            out[row["account_id"]] = str(json.loads(self._open(conn, row,
                                                               "profile_sealed"))["name"])
        return out

    def own_account(self, actor: Actor) -> dict[str, Any]:
        """The caller's own account as its holder may have it (the patient's data download,
        GDPR art. 15/20): e-mail and name as stored for the account, when it was created,
        enrolled (first password chosen) and its password last changed, whether a second
        factor is on -- never a secret, a hash or a recovery code. Not a gate read: it is
        the caller's own account (like ``name_of``)."""
        from labvault.audit.entry import us_to_datetime
        from labvault.store import repositories_audit as audrepo
        with self.lv.begin() as conn:
            row = self._own_row(conn, actor)
            profile = json.loads(self._open(conn, row, "profile_sealed"))
            enrolled = audrepo.first_at_us(conn, row["account_id"], "user.enrol", "success")
        changed = row["password_changed_at"]
        return {"email": profile["email"], "name": profile["name"],
                "created_at": sess.aware(row["created_at"]).isoformat(),
                "enrolled_at": us_to_datetime(enrolled).isoformat() if enrolled else None,
                "password_changed_at": sess.aware(changed).isoformat() if changed else None,
                "second_factor": bool(row["mfa_enabled"])}

    def _own_row(self, conn: Connection, actor: Actor) -> dict[str, Any]:
        row = arepo.get_account(conn, actor.id)
        if row is None or row["status"] != "active":
            raise AuthenticationFailed("session expired or invalid", "log in again")
        return row

    def _verify_own(self, conn: Connection, row: Mapping[str, Any], password: str,
                    totp: str | None, now: datetime) -> bool:
        """Password + second factor of a logged-in account, under the same per-account
        throttle as the login (a stolen session cannot brute-force the password)."""
        akey = (row["tenant_id"], throttle.account_subject(row["account_id"]))
        arow = arepo.throttle_rows(conn, [akey]).get(akey)
        wait = throttle.retry_at(arow, throttle.ACCOUNT_RULES)
        if wait is not None and wait > now:
            passwords.dummy_verify(password or "")
            return False
        stored = self._open(conn, row, "password_sealed").decode()
        ok = (passwords.verify_password(stored, password or "")
              and self._second_factor(conn, row, totp, now) is None)
        if not ok:
            n, locked = throttle.after_failure(arow, now, throttle.ACCOUNT_RULES)
            arepo.upsert_throttle(conn, *akey, n, now, locked)
        return ok

    def reauthenticate(self, actor: Actor, password: str, totp: str | None = None) -> None:
        """Re-authentication before a sensitive operation (break-glass, export, keys)."""
        lv = self.lv
        now = lv.now()
        ok = False
        with lv.begin() as conn:
            row = self._own_row(conn, actor)
            ok = self._verify_own(conn, row, password, totp, now)
            if ok and actor.session_id:
                arepo.set_session_auth(conn, row["tenant_id"], actor.session_id, now)
            lv.gate.audit.event(conn, actor, "reauth", "success" if ok else "failure",
                                actor.tenant_id, {"account_id": actor.id})
        if not ok:
            raise ReauthenticationRequired("re-authentication failed",
                                           "give your password and a fresh authenticator code")

    def require_recent_auth(self, actor: Actor) -> None:
        """For sensitive operations (bulk export, break-glass, key operations): the session
        must have (re-)authenticated within the last ``sessions.REAUTH_WINDOW`` (5 min).
        The CLI operator and system jobs run on the host holding the keys: exempt."""
        if actor.kind in ("operator", "system"):
            return
        ok = False
        if actor.session_id is not None:
            with self._read() as conn:
                s = arepo.get_session(conn, self._session_tenant(actor), actor.session_id)
            ok = (s is not None and s["revoked_at"] is None
                  and sess.aware(s["auth_at"]) + sess.REAUTH_WINDOW > self.lv.now())
        if not ok:
            raise ReauthenticationRequired("this operation needs a fresh authentication",
                                           "POST /api/v1/auth/reauth with your password and "
                                           "a new authenticator code, then retry")

    def change_password(self, actor: Actor, current: str, new: str,
                        totp: str | None = None) -> None:
        """Change one's own password; every other session of the account is revoked."""
        lv = self.lv
        now = lv.now()
        with lv.begin() as conn:
            row = self._own_row(conn, actor)
            good = self._verify_own(conn, row, current, totp, now)
            if good:
                profile = json.loads(self._open(conn, row, "profile_sealed"))
                passwords.check_password(new, [profile["name"], profile["email"]],
                                         field="new_password")
                arepo.update_account(conn, row["account_id"], updated_at=now,
                                     password_changed_at=now,
                                     password_sealed=self._seal(
                                         conn, row["tenant_id"], "password_sealed",
                                         row["account_id"], passwords.hash_password(new).encode()))
                arepo.revoke_account_sessions(conn, row["tenant_id"], row["account_id"], now,
                                              except_session=actor.session_id)
            lv.gate.audit.event(conn, actor, "password.change", "success" if good else "failure",
                                actor.tenant_id, {"account_id": actor.id})
        if not good:
            raise ReauthenticationRequired("current password or authenticator code is wrong",
                                           "give your current password and a fresh code")

    # -- MFA enrolment --------------------------------------------------------------------------------
    def mfa_enrol(self, actor: Actor) -> dict[str, Any]:
        """Start TOTP enrolment (staff after a reset, or a patient who opts in)."""
        lv = self.lv
        with lv.begin() as conn:
            row = self._own_row(conn, actor)
            if row["mfa_enabled"]:
                raise Conflict("two-factor authentication is already enrolled",
                               "ask your administrator to reset it if you lost your device")
            profile = json.loads(self._open(conn, row, "profile_sealed"))
            secret = mfa.new_secret()
            arepo.update_account(conn, row["account_id"], updated_at=lv.now(),
                                 mfa_sealed=self._seal(conn, row["tenant_id"], "mfa_sealed",
                                                       row["account_id"], secret.encode()))
            lv.gate.audit.event(conn, actor, "mfa.enrol", "started", actor.tenant_id,
                                {"account_id": actor.id})
        return {"otpauth_uri": mfa.otpauth_uri(secret, profile["email"]), "secret": secret}

    def mfa_verify(self, actor: Actor, code: str) -> dict[str, Any]:
        """Confirm enrolment with a first code; returns one-time recovery codes."""
        lv = self.lv
        now = lv.now()
        with lv.begin() as conn:
            row = self._own_row(conn, actor)
            if row["mfa_enabled"] or row["mfa_sealed"] is None:
                raise Conflict("no enrolment in progress", "start with POST /api/v1/auth/mfa")
            secret = self._open(conn, row, "mfa_sealed").decode()
            step = mfa.matching_step(secret, code, now.timestamp())
            ok = step is not None and arepo.advance_totp_step(conn, row["account_id"], step)
            codes: list[str] = []
            if ok:
                arepo.update_account(conn, row["account_id"], mfa_enabled=1, updated_at=now)
                codes = self._new_recovery(conn, row["tenant_id"], row["account_id"])
                if actor.session_id:
                    arepo.revoke_session(conn, row["tenant_id"], actor.session_id, now)
            lv.gate.audit.event(conn, actor, "mfa.verify", "success" if ok else "failure",
                                actor.tenant_id, {"account_id": actor.id})
        if not ok:
            raise AuthenticationFailed("the authenticator code is not valid",
                                       "type the 6-digit code your app shows now")
        return {"recovery_codes": codes, "next": "log in again with your authenticator code"}

    # -- administration ------------------------------------------------------------------------------
    def _admin_row(self, conn: Connection, actor: Actor, account_id: str,
                   action: Action) -> dict[str, Any]:
        row = arepo.get_account(conn, account_id)
        if row is None or (actor.kind != "operator" and actor.kind != "system"
                           and self._public_tenant(row["tenant_id"]) != actor.tenant_id):
            # other laboratories' accounts: same answer as "absent"
            self.lv.gate.check(conn, Access(actor, action, actor.tenant_id, ACCOUNT_CATS,
                                            purpose="administration", resource="user"))
            raise NotFound("no such account", "check the account id")
        self.lv.gate.check(conn, Access(actor, action, self._public_tenant(row["tenant_id"]),
                                        ACCOUNT_CATS, purpose="administration", resource="user"))
        return row

    def _view(self, conn: Connection, row: Mapping[str, Any]) -> dict[str, Any]:
        profile = json.loads(self._open(conn, row, "profile_sealed"))
        return {"id": row["account_id"], "tenant_id": self._public_tenant(row["tenant_id"]),
                "kind": row["kind"], "status": row["status"],
                "roles": [r for r in row["roles"].split(",") if r],
                "patient_id": row["patient_id"], "name": profile["name"],
                "email": profile["email"], "mfa_enabled": bool(row["mfa_enabled"]),
                "created_at": sess.aware(row["created_at"]).isoformat()}

    def get(self, actor: Actor, account_id: str) -> dict[str, Any]:
        with self.lv.begin() as conn:
            row = self._admin_row(conn, actor, account_id, Action.READ)
            return self._view(conn, row)

    def list_accounts(self, actor: Actor, tenant_id: str, limit: int = 50,
             offset: int = 0) -> list[dict[str, Any]]:
        limit = max(1, min(limit, 100))
        with self.lv.begin() as conn:
            self.lv.gate.check(conn, Access(actor, Action.READ, tenant_id, ACCOUNT_CATS,
                                            purpose="administration", resource="user"))
            return [self._view(conn, r)
                    for r in arepo.tenant_accounts(conn, tenant_id, limit, max(0, offset))]

    def _admin_update(self, actor: Actor, account_id: str, event: str,
                      **values: Any) -> dict[str, Any]:
        lv = self.lv
        now = lv.now()
        with lv.begin() as conn:
            row = self._admin_row(conn, actor, account_id, Action.WRITE)
            if event == "user.enable" and row["password_sealed"] is None:
                values["status"] = "pending"    # never enrolled: its link must still work
            if values:
                arepo.update_account(conn, account_id, updated_at=now, **values)
            detail: dict[str, Any] = {"account_id": account_id}
            if event in ("user.disable", "user.reset-mfa"):
                detail["sessions_revoked"] = arepo.revoke_account_sessions(
                    conn, row["tenant_id"], account_id, now)
            if event == "user.unlock":
                arepo.clear_throttle(conn, row["tenant_id"], throttle.account_subject(account_id))
            if event == "user.roles":
                detail["roles"] = values["roles"].split(",")
            lv.gate.audit.event(conn, actor, event, "success",
                                self._public_tenant(row["tenant_id"]), detail)
            row = {**row, **values}
            return self._view(conn, row)

    def disable(self, actor: Actor, account_id: str) -> dict[str, Any]:
        return self._admin_update(actor, account_id, "user.disable", status="disabled")

    def enable(self, actor: Actor, account_id: str) -> dict[str, Any]:
        return self._admin_update(actor, account_id, "user.enable", status="active")

    def unlock(self, actor: Actor, account_id: str) -> dict[str, Any]:
        return self._admin_update(actor, account_id, "user.unlock")

    def reset_mfa(self, actor: Actor, account_id: str) -> dict[str, Any]:
        """Forget the TOTP secret and recovery codes; the user enrols again at next login."""
        out = self._admin_update(actor, account_id, "user.reset-mfa", mfa_enabled=0,
                                 mfa_sealed=None)
        with self.lv.begin() as conn:
            row = arepo.get_account(conn, account_id)
            assert row is not None
            arepo.replace_recovery_codes(conn, row["tenant_id"], account_id, [])
        return out

    def reissue_enrolment(self, actor: Actor, account_id: str) -> dict[str, Any]:
        """A new one-time enrolment link for an account that has not finished enrolment
        (its link expired or was lost); every earlier link stops working."""
        return self._new_link(actor, account_id, "user.reissue-enrolment")

    def reset_password(self, actor: Actor, account_id: str) -> dict[str, Any]:
        """The holder forgot the password: it stops working at once, every session and
        earlier link ends, and a one-time link lets the holder choose a new one (through
        the enrolment page). The second factor is kept (``reset_mfa`` forgets it)."""
        return self._new_link(actor, account_id, "user.reset-password", password_sealed=None)

    def _new_link(self, actor: Actor, account_id: str, event: str,
                  **values: Any) -> dict[str, Any]:
        """The account back to ``pending`` (which also heals one re-enabled as 'active'
        before it ever enrolled) with a fresh enrolment link; its sessions and earlier
        links end. A disabled account gets none: that would undo the disabling."""
        lv = self.lv
        now = lv.now()
        with lv.begin() as conn:
            row = self._admin_row(conn, actor, account_id, Action.WRITE)
            if row["status"] == "disabled":
                raise Conflict(f"account {account_id} is disabled",
                               "enable it first if its holder may log in again "
                               "(labvault user enable / POST …/enable), then retry")
            if "password_sealed" not in values and row["password_sealed"] is not None:
                raise Conflict(f"account {account_id} has finished enrolment",
                               "to let its holder choose a new password, reset it "
                               "(labvault user reset-password / POST …/reset-password)")
            arepo.update_account(conn, account_id, status="pending", updated_at=now, **values)
            revoked = arepo.revoke_account_sessions(conn, row["tenant_id"], account_id, now)
            link = self._enrolment_link(conn, row["tenant_id"], account_id, now)
            lv.gate.audit.event(conn, actor, event, "success",
                                self._public_tenant(row["tenant_id"]),
                                {"account_id": account_id, "sessions_revoked": revoked})
            return {**self._view(conn, {**row, "status": "pending"}), **link}

    def set_roles(self, actor: Actor, account_id: str, roles: list[str]) -> dict[str, Any]:
        """Takes effect on live sessions at their next request (roles are read per request)."""
        with self.lv.begin() as conn:
            row = arepo.get_account(conn, account_id)
        kind = row["kind"] if row else "staff"
        valid = acc.validate_roles(kind, roles)
        if row is not None and ("platform_operator" in valid) != (row["tenant_id"] == PLATFORM):
            raise InvalidField("role", "platform_operator is for platform accounts only",
                               "create a separate account")
        return self._admin_update(actor, account_id, "user.roles", roles=",".join(valid))
