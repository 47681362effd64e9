"""Accounts and login: named accounts only, wrong password, lockout, TOTP, sessions, rehash."""

from __future__ import annotations

import pyotp
import pytest
from sqlalchemy import select

from labvault.access import passwords as pw
from labvault.access.sessions import SessionPolicy
from labvault.domain.actors import Actor
from labvault.errors import AccessDenied, AuthenticationFailed, Conflict, InvalidField, NotFound
from labvault.services.accounts import LoginThrottled
from labvault.services.app import Labvault
from labvault.store.tables_access import accounts, sessions
from tests.access.conftest import PASSWORD, SECRET, Clock, World

GENERIC_NAMES = ["admin", "Accueil", "labo", "test", "user1", "Secretariat", "Accueil Lille",
                 "Labo Lille", "Admin Système", "Test User", "Poste 3"]
GENERIC_EMAILS = ["accueil@labo.fr", "admin@example.org", "user1@example.org",
                  "secretariat@example.org", "labo-lille@example.org", "test2@example.org"]


@pytest.mark.parametrize("name", GENERIC_NAMES)
def test_generic_names_refused(alv: Labvault, tenant_id: str, name: str) -> None:
    with pytest.raises(InvalidField):
        alv.accounts.create(Actor.operator(), tenant_id, ["reception"], name,
                            "jeanne.martin@example.org", password=PASSWORD)


@pytest.mark.parametrize("email", GENERIC_EMAILS)
def test_generic_emails_refused(alv: Labvault, tenant_id: str, email: str) -> None:
    with pytest.raises(InvalidField):
        alv.accounts.create(Actor.operator(), tenant_id, ["reception"], "Jeanne Martin", email,
                            password=PASSWORD)


def test_name_and_email_required(alv: Labvault, tenant_id: str) -> None:
    for name, email in (("", "a.b@example.org"), ("Jeanne Martin", ""), ("Jeanne", "j.m@x.org")):
        with pytest.raises(InvalidField):
            alv.accounts.create(Actor.operator(), tenant_id, ["reception"], name, email,
                                password=PASSWORD)


def test_account_data_sealed_and_email_unique(world: World) -> None:
    lv = world.lv
    email = world.a.emails["reception"]
    with lv.begin() as conn:
        rows = [dict(r) for r in conn.execute(select(accounts)).mappings()]
    blob = repr(rows).encode()
    assert email.encode() not in blob and b"Camille" not in blob and b"argon2" not in blob
    assert SECRET.encode() not in blob
    with pytest.raises(Conflict):   # one person, one account — across laboratories too
        lv.accounts.create(Actor.operator(), world.b.tenant_id, ["reception"], "Camille Durand",
                           email.upper(), password=PASSWORD)


def test_login_ok_and_wrong_password(world: World) -> None:
    lv, email = world.lv, world.a.emails["biologist"]
    res = lv.accounts.login(email, PASSWORD, world.clock.code())
    assert len(res.token) >= 40 and res.scope == "full"
    with lv.begin() as conn:
        stored = conn.execute(select(sessions.c.token_digest)).scalars().all()
    assert res.token.encode() not in b"".join(stored)
    with pytest.raises(AuthenticationFailed) as e1:
        lv.accounts.login(email, "Wrong-Password-123!", world.clock.code())
    with pytest.raises(AuthenticationFailed) as e2:
        lv.accounts.login("nobody.here@example.org", PASSWORD, world.clock.code())
    assert (e1.value.message, e1.value.hint) == (e2.value.message, e2.value.hint)  # no enumeration
    events = [(e[1], e[2]) for e in lv.gate.audit.events]  # type: ignore[attr-defined]
    assert ("login", "success") in events and events.count(("login", "failure")) == 2


def test_totp_missing_wrong_replayed(world: World) -> None:
    lv, email, clock = world.lv, world.a.emails["technician"], world.clock
    with pytest.raises(AuthenticationFailed):
        lv.accounts.login(email, PASSWORD, None)
    with pytest.raises(AuthenticationFailed):
        lv.accounts.login(email, PASSWORD, "000000")
    code = clock.code()
    lv.accounts.login(email, PASSWORD, code)
    with pytest.raises(AuthenticationFailed):          # same code, same step: replay
        lv.accounts.login(email, PASSWORD, code)
    clock.advance(seconds=5)
    with pytest.raises(AuthenticationFailed):          # still within the used step
        lv.accounts.login(email, PASSWORD, pyotp.TOTP(SECRET).at(int(clock.t.timestamp())))


def test_lockout_then_unlock_by_admin_or_time(world: World) -> None:
    lv, clock = world.lv, world.clock
    email = world.a.emails["reception"]
    for _ in range(10):
        with pytest.raises(AuthenticationFailed):
            lv.accounts.login(email, "Wrong-Password-123!", clock.code(), client="10.9.9.9")
        clock.advance(minutes=5)     # past each backoff delay
    with pytest.raises(AuthenticationFailed):            # locked: even the right password fails
        lv.accounts.login(email, PASSWORD, clock.code(), client="10.1.1.1")
    admin = world.actor(world.a.emails["lab_admin"])
    lv.accounts.unlock(admin, world.a.accounts["reception"])
    lv.accounts.login(email, PASSWORD, clock.code(), client="10.1.1.1")
    # timed unlock
    for _ in range(10):
        with pytest.raises(AuthenticationFailed):
            lv.accounts.login(email, "Wrong-Password-123!", clock.code(), client="10.9.9.8")
        clock.advance(minutes=5)
    with pytest.raises(AuthenticationFailed):
        lv.accounts.login(email, PASSWORD, clock.code(), client="10.1.1.1")
    clock.advance(minutes=31)
    lv.accounts.login(email, PASSWORD, clock.code(), client="10.1.1.1")


def test_backoff_and_client_throttle(world: World) -> None:
    lv, clock = world.lv, world.clock
    email = world.a.emails["dpo"]
    for _ in range(3):
        with pytest.raises(AuthenticationFailed):
            lv.accounts.login(email, "Wrong-Password-123!", clock.code(), client="10.2.2.2")
    clock.advance(seconds=5)
    with pytest.raises(AuthenticationFailed):
        lv.accounts.login(email, "Wrong-Password-123!", clock.code(), client="10.2.2.2")
    # the 4th failure imposes a delay: the right password is refused until it passes
    now_code = pyotp.TOTP(SECRET).at(int(clock.t.timestamp()))
    with pytest.raises(AuthenticationFailed):
        lv.accounts.login(email, PASSWORD, now_code, client="10.2.2.3")
    clock.advance(seconds=2)
    lv.accounts.login(email, PASSWORD, now_code, client="10.2.2.3")
    # a client address spraying many accounts is throttled as a whole
    kinds = []
    for i in range(40):
        with pytest.raises(AuthenticationFailed) as exc:
            lv.accounts.login(f"someone{i}.x@example.org", "Wrong-Password-123!", None,
                              client="10.3.3.3")
        kinds.append(type(exc.value))
        clock.advance(seconds=1)
    assert LoginThrottled not in kinds[:20] and LoginThrottled in kinds[20:]


def test_sessions_idle_absolute_logout_revoke(world: World) -> None:
    lv, clock = world.lv, world.clock
    lv.accounts.session_policy = SessionPolicy()    # 15 min idle, 8 h absolute
    email = world.a.emails["biologist"]
    tok = lv.accounts.login(email, PASSWORD, clock.code()).token
    clock.advance(minutes=14)
    lv.accounts.resolve(tok)
    clock.advance(minutes=14)
    lv.accounts.resolve(tok)                    # activity keeps it alive
    clock.advance(minutes=16)
    with pytest.raises(AuthenticationFailed):   # idle
        lv.accounts.resolve(tok)
    tok = lv.accounts.login(email, PASSWORD, clock.code()).token
    for _ in range(8 * 6):
        clock.advance(minutes=10)
        try:
            lv.accounts.resolve(tok)
        except AuthenticationFailed:
            break
    else:
        pytest.fail("session outlived its absolute lifetime")
    tok = lv.accounts.login(email, PASSWORD, clock.code()).token
    actor = lv.accounts.resolve(tok)
    lv.accounts.logout(actor)
    with pytest.raises(AuthenticationFailed):
        lv.accounts.resolve(tok)
    t1 = lv.accounts.login(email, PASSWORD, clock.code()).token
    t2 = lv.accounts.login(email, PASSWORD, clock.code()).token
    lv.accounts.revoke_all(lv.accounts.resolve(t1))
    for t in (t1, t2):
        with pytest.raises(AuthenticationFailed):
            lv.accounts.resolve(t)


def test_role_change_and_disable_apply_to_live_sessions(world: World) -> None:
    lv = world.lv
    tok = world.login(world.a.emails["reception"])
    assert lv.accounts.resolve(tok).roles == {"reception"}
    admin = world.actor(world.a.emails["lab_admin"])
    lv.accounts.set_roles(admin, world.a.accounts["reception"], ["reception", "technician"])
    assert lv.accounts.resolve(tok).roles == {"reception", "technician"}
    lv.accounts.disable(admin, world.a.accounts["reception"])
    with pytest.raises(AuthenticationFailed):
        lv.accounts.resolve(tok)


def test_admin_of_lab_a_cannot_touch_lab_b_accounts(world: World) -> None:
    admin = world.actor(world.a.emails["lab_admin"])
    for fn in (world.lv.accounts.get, world.lv.accounts.disable, world.lv.accounts.unlock):
        with pytest.raises(NotFound):
            fn(admin, world.b.accounts["reception"])


@pytest.mark.real_argon2
def test_rehash_on_login(world: World) -> None:
    lv, email = world.lv, world.a.emails["patient"]
    acct = world.a.accounts["patient"]
    weak = pw.hasher(time_cost=1, memory_kib=8192).hash(PASSWORD)
    with lv.begin() as conn:
        row = conn.execute(select(accounts).where(accounts.c.account_id == acct)).mappings().one()
        sealed = lv.gate.seal_tenant_value(conn, row["tenant_id"], "accounts", "password_sealed",
                                           acct, weak.encode())
        conn.execute(accounts.update().where(accounts.c.account_id == acct)
                     .values(password_sealed=sealed))
    lv.accounts.login(email, PASSWORD, None)       # patients: MFA optional, not enrolled here
    with lv.begin() as conn:
        row = conn.execute(select(accounts).where(accounts.c.account_id == acct)).mappings().one()
        stored = lv.gate.open_tenant_value_checked(conn, row["tenant_id"], "accounts",
                                                   "password_sealed", acct,
                                                   row["password_sealed"]).decode()
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")


def test_password_change_revokes_other_sessions(world: World) -> None:
    lv, clock = world.lv, world.clock
    email = world.a.emails["dpo"]
    t1 = lv.accounts.login(email, PASSWORD, clock.code()).token
    t2 = lv.accounts.login(email, PASSWORD, clock.code()).token
    actor = lv.accounts.resolve(t1)
    with pytest.raises(InvalidField):
        lv.accounts.change_password(actor, PASSWORD, "Password1234!", clock.code())
    new = "Granit-Mouette-Cerfeuil-73"
    lv.accounts.change_password(actor, PASSWORD, new, clock.code())
    lv.accounts.resolve(t1)
    with pytest.raises(AuthenticationFailed):
        lv.accounts.resolve(t2)
    lv.accounts.login(email, new, clock.code())


def test_enrolment_link_and_mfa_reset(alv: Labvault, clock: Clock, tenant_id: str) -> None:
    lv = alv
    out = lv.accounts.create(Actor.operator(), tenant_id, ["technician"], "Inès Caron",
                             "ines.caron@example.org")
    assert out["status"] == "pending" and "enrolment_link" in out
    with pytest.raises(AuthenticationFailed):           # pending: cannot log in yet
        lv.accounts.login("ines.caron@example.org", PASSWORD, None)
    enrolled = lv.accounts.enrol(out["enrolment_token"], PASSWORD)
    secret = enrolled["otpauth_uri"].split("secret=")[1].split("&")[0]
    assert len(enrolled["recovery_codes"]) == 10
    with pytest.raises(AuthenticationFailed):           # the link works once
        lv.accounts.enrol(out["enrolment_token"], PASSWORD)
    clock.advance(seconds=30)
    lv.accounts.login("ines.caron@example.org", PASSWORD,
                      pyotp.TOTP(secret).at(int(clock.t.timestamp())))
    # a recovery code works once
    code = enrolled["recovery_codes"][0]
    lv.accounts.login("ines.caron@example.org", PASSWORD, code)
    with pytest.raises(AuthenticationFailed):
        lv.accounts.login("ines.caron@example.org", PASSWORD, code)
    # reset MFA: next login gets an enrolment-only session
    lv.accounts.reset_mfa(Actor.operator(), out["id"])
    res = lv.accounts.login("ines.caron@example.org", PASSWORD, None)
    assert res.scope == "mfa-enrol"
    with pytest.raises(AuthenticationFailed):
        lv.accounts.resolve(res.token)               # not a full session
    actor = lv.accounts.resolve(res.token, scopes=("full", "mfa-enrol"))
    started = lv.accounts.mfa_enrol(actor)
    clock.advance(seconds=30)
    done = lv.accounts.mfa_verify(actor, pyotp.TOTP(started["secret"]).at(int(clock.t.timestamp())))
    assert len(done["recovery_codes"]) == 10
    clock.advance(seconds=30)
    assert lv.accounts.login("ines.caron@example.org", PASSWORD, pyotp.TOTP(
        started["secret"]).at(int(clock.t.timestamp()))).scope == "full"


NEW_PASSWORD = "Grenadine-Marmotte-Cerf-Volant-77"


def _events(lv: Labvault, name: str) -> list[dict[str, object]]:
    return [dict(e[4]) for e in lv.gate.audit.events  # type: ignore[attr-defined]
            if e[1] == name and e[2] == "success"]


def test_reissue_enrolment_link(alv: Labvault, clock: Clock, tenant_id: str) -> None:
    """An expired or lost enrolment link left the account stuck: a new link revokes the
    earlier ones, and a disabled then re-enabled pending account can enrol too."""
    lv, op = alv, Actor.operator()
    out = lv.accounts.create(op, tenant_id, ["technician"], "Inès Caron",
                             "ines.caron@example.org")
    clock.advance(hours=73)                                 # the 72 h link expired
    with pytest.raises(AuthenticationFailed):
        lv.accounts.enrol(out["enrolment_token"], PASSWORD)
    again = lv.accounts.reissue_enrolment(op, out["id"])
    third = lv.accounts.reissue_enrolment(op, out["id"])
    assert again["status"] == "pending" and again["enrolment_link"].endswith(
        "#token=" + again["enrolment_token"])
    with pytest.raises(AuthenticationFailed):               # an earlier link stops working
        lv.accounts.enrol(again["enrolment_token"], PASSWORD)
    enrolled = lv.accounts.enrol(third["enrolment_token"], PASSWORD)
    secret = enrolled["otpauth_uri"].split("secret=")[1].split("&")[0]
    clock.advance(seconds=30)
    assert lv.accounts.login("ines.caron@example.org", PASSWORD, pyotp.TOTP(secret).at(
        int(clock.t.timestamp()))).scope == "full"
    assert [e["account_id"] for e in _events(lv, "user.reissue-enrolment")] == [out["id"]] * 2
    with pytest.raises(Conflict, match="finished enrolment"):  # enrolled: reset-password
        lv.accounts.reissue_enrolment(op, out["id"])

    # disabled before enrolling, then re-enabled: pending again (was 'active' with no
    # password, which neither a link nor a login could ever complete)
    other = lv.accounts.create(op, tenant_id, ["reception"], "Hugo Lefebvre",
                               "hugo.lefebvre@example.org")
    lv.accounts.disable(op, other["id"])
    with pytest.raises(Conflict, match="is disabled"):
        lv.accounts.reissue_enrolment(op, other["id"])
    assert lv.accounts.enable(op, other["id"])["status"] == "pending"
    link = lv.accounts.reissue_enrolment(op, other["id"])["enrolment_token"]
    assert lv.accounts.enrol(link, PASSWORD)["otpauth_uri"]
    assert lv.accounts.get(op, other["id"])["status"] == "active"


def test_reset_password(world: World) -> None:
    """A forgotten password: the old one stops working at once, sessions end, the one-time
    link sets a new one; staff keep their TOTP; a disabled account is refused."""
    lv, clock, op = world.lv, world.clock, Actor.operator()
    email, account = world.a.emails["biologist"], world.a.accounts["biologist"]
    token = world.login(email)
    for _ in range(10):                                     # the holder kept trying: locked
        clock.advance(minutes=2)
        with pytest.raises(AuthenticationFailed):
            lv.accounts.login(email, "Forgotten-Password-1!", clock.code())
    with pytest.raises(AuthenticationFailed):
        lv.accounts.login(email, PASSWORD, clock.code())
    assert any(e[1] == "account.lock" for e in lv.gate.audit.events)  # type: ignore[attr-defined]
    out = lv.accounts.reset_password(op, account)
    assert out["status"] == "pending" and out["enrolment_link"]
    with pytest.raises(AuthenticationFailed):               # live session ended
        lv.accounts.resolve(token)
    with pytest.raises(AuthenticationFailed):               # old password refused at once
        lv.accounts.login(email, PASSWORD, clock.code())
    assert lv.accounts.reset_password(op, account)["enrolment_token"] != out["enrolment_token"]
    with pytest.raises(AuthenticationFailed):               # the first link was replaced
        lv.accounts.enrol(out["enrolment_token"], NEW_PASSWORD)
    link = lv.accounts.reset_password(op, account)["enrolment_token"]
    done = lv.accounts.enrol(link, NEW_PASSWORD)
    assert done["otpauth_uri"] is None and "recovery_codes" not in done  # TOTP kept
    with pytest.raises(AuthenticationFailed):
        lv.accounts.enrol(link, NEW_PASSWORD)               # once
    with pytest.raises(AuthenticationFailed):
        lv.accounts.login(email, PASSWORD, clock.code())
    with pytest.raises(AuthenticationFailed):               # the second factor still asked
        lv.accounts.login(email, NEW_PASSWORD, None)
    # the lockout earned against the forgotten password does not outlive it
    assert lv.accounts.login(email, NEW_PASSWORD, clock.code()).scope == "full"
    resets = _events(lv, "user.reset-password")
    assert [e["account_id"] for e in resets] == [account] * 3
    assert resets[0]["sessions_revoked"] == 1
    assert account in [e["account_id"] for e in _events(lv, "user.enrol")]
    lv.accounts.disable(op, account)
    with pytest.raises(Conflict, match="is disabled"):
        lv.accounts.reset_password(op, account)


def test_recovery_is_for_the_own_laboratory_admin(world: World) -> None:
    lv = world.lv
    admin = world.actor(world.a.emails["lab_admin"])
    dpo = world.actor(world.a.emails["dpo"])
    for action in (lv.accounts.reset_password, lv.accounts.reissue_enrolment):
        with pytest.raises(NotFound):                       # another laboratory's account
            action(admin, world.b.accounts["technician"])
        with pytest.raises(AccessDenied):                   # dpo: read only
            action(dpo, world.a.accounts["technician"])
    assert lv.accounts.reset_password(admin, world.a.accounts["technician"])["enrolment_token"]
    assert lv.accounts.get(Actor.operator(), world.b.accounts["technician"])["status"] == "active"


def test_recent_authentication_window(world: World) -> None:
    from labvault.services.accounts import ReauthenticationRequired
    lv, clock = world.lv, world.clock
    actor = world.actor(world.a.emails["biologist"])
    lv.accounts.require_recent_auth(actor)              # just logged in
    clock.advance(minutes=6)
    with pytest.raises(ReauthenticationRequired):
        lv.accounts.require_recent_auth(actor)
    lv.accounts.reauthenticate(actor, PASSWORD, clock.code())
    lv.accounts.require_recent_auth(actor)
    with pytest.raises(ReauthenticationRequired):
        lv.accounts.reauthenticate(actor, "Wrong-Password-123!", clock.code())
    lv.accounts.require_recent_auth(Actor.operator())


def test_reauth_failures_are_throttled(world: World) -> None:
    from labvault.services.accounts import ReauthenticationRequired
    lv, clock = world.lv, world.clock
    actor = world.actor(world.a.emails["technician"])
    for _ in range(10):
        with pytest.raises(ReauthenticationRequired):
            lv.accounts.reauthenticate(actor, "Wrong-Password-123!", clock.code())
        clock.advance(minutes=5)
    with pytest.raises(ReauthenticationRequired):      # locked: the right password fails too
        lv.accounts.reauthenticate(actor, PASSWORD, clock.code())
    with pytest.raises(AuthenticationFailed):
        lv.accounts.login(world.a.emails["technician"], PASSWORD, clock.code())


def test_suspended_account_cannot_log_in_nor_use_its_sessions(world: World) -> None:
    """A read-budget breach (guard) suspends the account: its live sessions stop working at
    once and a new login is refused with the generic answer, until a lab_admin releases it."""
    lv, email = world.lv, world.a.emails["reception"]
    token = world.login(email)
    actor = lv.accounts.resolve(token)
    with lv.begin() as conn:
        lv.guard.suspend(conn, world.a.tenant_id, actor, "budget.distinct-10min", {})
    with pytest.raises(AuthenticationFailed):
        lv.accounts.resolve(token)
    world.clock.advance(seconds=31)
    with pytest.raises(AuthenticationFailed):
        world.login(email)
    lv.guard.release(Actor.operator(), world.a.tenant_id, actor.id)
    world.clock.advance(seconds=31)
    assert lv.accounts.resolve(world.login(email)).id == actor.id
