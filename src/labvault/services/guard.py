"""The guard in the core: read budgets and anomaly rules (the gate's ``BudgetHook``),
suspensions, honeytoken patients, per-lab guard settings, retention purge.

``lv.guard`` always exists; ``lv.guard.install()`` (called by ``services/wiring.py``)
plugs the budget hook, the alert store and the denial observer into the gate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection

from labvault.crypto.digests import hmac_sha256
from labvault.domain.actors import Actor
from labvault.domain.categories import Action
from labvault.errors import (
    AccessDenied,
    BudgetExceeded,
    InvalidField,
    MassErasureRefused,
    NotFound,
)
from labvault.guard import budgets, rules
from labvault.guard.alerts import setting
from labvault.guard.canaries import canary_person
from labvault.guard.retention import RetentionRegistry
from labvault.services.gate import Access, Decision
from labvault.store import repositories as repo
from labvault.store import repositories_guard as grepo
from labvault.store.ids import new_id

if TYPE_CHECKING:
    from labvault.services.alerts import AlertService
    from labvault.services.app import Labvault
    from labvault.services.exports import ExportService

CONFIG_TTL = 30.0
CANARY_TTL = 30.0
WATCHED = frozenset({Action.READ, Action.SEARCH, Action.EXPORT})
ADMIN_ROLES = frozenset({"lab_admin", "dpo"})

class GuardService:
    def __init__(self, lv: Labvault) -> None:
        self.lv = lv
        redis_url = setting(lv.settings.extra, "LABVAULT_REDIS_URL")
        self.marks: budgets.MarkStore = (budgets.RedisMarkStore(redis_url) if redis_url
                                         else budgets.DbMarkStore())
        self.retention = RetentionRegistry()
        self._config: dict[str, tuple[float, dict[str, str]]] = {}
        self._hours: dict[str, tuple[dict[str, str], rules.OpeningHours]] = {}
        self._limits: dict[tuple[str, str, frozenset[str]], tuple[dict[str, str],
                                                                  budgets.Limits]] = {}
        self._canaries: dict[str, tuple[float, frozenset[bytes]]] = {}
        # per lab: (the digest set it was computed against, patient id -> is a honeytoken)
        self._verdicts: dict[str, tuple[frozenset[bytes], dict[str, bool]]] = {}
        self._open: dict[str, tuple[int, dict[str, str], bool]] = {}
        self._secrets: dict[tuple[str, str], bytes] = {}
        self._suspended: dict[tuple[str, str], tuple[float, bool]] = {}
        self._released: dict[tuple[str, str], datetime] = {}
        self._clients: set[tuple[str, str, bytes]] = set()
        self._seen_clients: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._exports: ExportService | None = None

    # -- wiring --------------------------------------------------------------------------------
    def install(self) -> None:
        """Plug the guard into the gate: budget hook (which also sees refusals), alert
        store, transaction observer."""
        from labvault.services.alerts import AlertService
        lv = self.lv
        if not isinstance(lv.alerts, AlertService):
            lv.alerts = AlertService(lv)
        lv.gate.alerts = lv.alerts          # the gate raises break-glass alerts itself
        lv.gate.budget = GuardBudget(self)
        if self not in lv.tx_observers:
            lv.tx_observers.append(self)

    @property
    def alerts(self) -> AlertService:
        """The alert store (``lv.alerts`` once installed)."""
        from labvault.services.alerts import AlertService
        if not isinstance(self.lv.alerts, AlertService):
            self.install()
        assert isinstance(self.lv.alerts, AlertService)
        return self.lv.alerts

    def start_purge_job(self, interval: float | None = None) -> Callable[[], None]:
        """Purge expired exports and retention-expired patients every ``interval`` seconds
        on a daemon thread (started by ``labvault serve``); returns a stop function."""
        import logging
        every = interval if interval is not None else float(
            setting(self.lv.settings.extra, "LABVAULT_PURGE_INTERVAL_SECONDS"))
        stop = threading.Event()
        if every <= 0:
            return stop.set
        log = logging.getLogger("labvault.guard")

        def run() -> None:
            while not stop.wait(every):
                try:
                    res = self.purge()
                    log.info("purge: %s exports, %s patients", res["exports"]["purged"],
                             res["patients"]["erased"])
                except MassErasureRefused as refused:
                    self.hold_mass_erasure(refused)
                except Exception:  # the job must keep running; the error is logged
                    log.exception("scheduled purge failed")

        threading.Thread(target=run, name="labvault-purge", daemon=True).start()
        return stop.set

    @property
    def exports(self) -> ExportService:
        if self._exports is None:
            from labvault.services.exports import ExportService
            self._exports = ExportService(self.lv)
        return self._exports

    def alert(self, conn: Connection, tenant_id: str | None, kind: str, actor: Actor | None,
              detail: Mapping[str, Any], durable: bool = False,
              severity: str | None = None, subject: str | None = None) -> str | None:
        """Raise an alert in the caller's transaction; ``durable``: also when that
        transaction rolls back (alerts raised on a path that refuses the request);
        ``subject``: merged only with an open alert about the same subject."""
        from labvault.services.alerts import AlertService
        sev = severity or rules.RULES[kind].severity
        sink = self.lv.alerts
        if not isinstance(sink, AlertService):
            return sink.raise_alert(conn, tenant_id, kind, sev, actor, detail)
        if sink.recently_raised(tenant_id, kind, actor.id if actor else None) \
                and sev != "critical":
            return None
        alert_id = sink._raise(conn, conn, tenant_id, kind, sev, actor, detail, subject=subject)
        if durable:
            self.on_rollback(lambda c: sink._raise(c, c, tenant_id, kind, sev, actor, detail,
                                                   dispatch=False, subject=subject))
        return alert_id

    # -- transactions (a TxObserver of ``lv.begin``) -------------------------------------------------
    # Security writes on a refused request (suspension, its alert, the repeated-denials alert)
    # are made in the request's transaction, which the refusal rolls back; they are then
    # written again in a transaction of their own. No second connection is ever used while
    # the request's transaction is open (it may hold the audit chain head or SQLite's lock).
    def _stack(self) -> list[list[Callable[[Connection], object]]]:
        stack: list[list[Callable[[Connection], object]]] | None = getattr(
            self._local, "stack", None)
        if stack is None:
            stack = []
            self._local.stack = stack
        return stack

    def tx_begin(self) -> None:
        self._stack().append([])

    def tx_flush(self, conn: Connection) -> None:
        pass                # refusals are kept only if the transaction rolls back

    def tx_end(self, lv: Labvault, committed: bool, savepoint: bool) -> None:
        stack = self._stack()
        if not stack:
            return
        rescue = stack.pop()
        if committed:
            if savepoint and stack:
                stack[-1].extend(rescue)     # durable only once the enclosing one commits
            return
        if not rescue or getattr(self._local, "rescuing", False):
            return
        self._local.rescuing = True
        try:
            with lv.begin() as conn:
                for fn in rescue:
                    fn(conn)
            if savepoint and stack:
                stack[-1].extend(rescue)
        except Exception:   # logged: the alert was already dispatched to the sinks
            import logging
            logging.getLogger("labvault.guard").exception(
                "could not write %d guard records after a rollback", len(rescue))
        finally:
            self._local.rescuing = False

    def on_rollback(self, fn: Callable[[Connection], object]) -> None:
        stack = self._stack()
        if stack:
            stack[-1].append(fn)

    # -- tenant secrets (HMAC keys derived from the lab's ``guard`` key) ---------------------------
    def secret(self, conn: Connection, tenant_id: str, label: str) -> bytes:
        k = (tenant_id, label)
        s = self._secrets.get(k)
        if s is not None:
            return s
        lv = self.lv
        from labvault.services.alerts import has_written
        version = repo.current_key_version(conn, tenant_id, "guard")
        cacheable = True
        if version is None and has_written(conn):
            # SQLite: a second connection would wait on this transaction's lock. Create the
            # key here; if this transaction rolls back, the next call creates it again.
            version, cacheable = 1, False
            repo.insert_tenant_key(conn, lv.keyring.new_tenant_key(tenant_id, "guard", 1))
        elif version is None:
            version = lv.tenants.ensure_key(tenant_id, "guard")
        if not lv.keyring.is_loaded(tenant_id, "guard", version):
            for rec in repo.tenant_key_records(conn, tenant_id):
                if rec.purpose == "guard":
                    lv.keyring.load(rec)
        s = lv.keyring.tenant_secret(tenant_id, "guard", version, f"guard/{label}")
        if cacheable:
            self._secrets[k] = s
        return s

    def digest(self, conn: Connection, tenant_id: str, label: str, value: str) -> bytes:
        return hmac_sha256(self.secret(conn, tenant_id, label), value.encode())[:16]

    # -- per-lab settings --------------------------------------------------------------------------
    def config(self, conn: Connection, tenant_id: str) -> dict[str, str]:
        now = time.monotonic()
        hit = self._config.get(tenant_id)
        if hit is not None and now - hit[0] < CONFIG_TTL:
            return hit[1]
        cfg = grepo.get_config(conn, tenant_id)
        self._config[tenant_id] = (now, cfg)
        return cfg

    def hours(self, tenant_id: str, cfg: dict[str, str]) -> rules.OpeningHours:
        hit = self._hours.get(tenant_id)
        if hit is None or hit[0] is not cfg:
            hit = (cfg, rules.OpeningHours.from_config(cfg))
            self._hours[tenant_id] = hit
        return hit[1]

    def limits(self, tenant_id: str, cfg: dict[str, str], actor: Actor) -> budgets.Limits:
        key = (tenant_id, actor.kind, actor.roles)
        hit = self._limits.get(key)
        if hit is None or hit[0] is not cfg:
            hit = (cfg, budgets.limits_for(actor.roles, cfg, actor.kind))
            self._limits[key] = hit
        return hit[1]

    def is_open(self, tenant_id: str, cfg: dict[str, str], now: float) -> bool:
        """Opening hours, evaluated once per minute per lab."""
        minute = int(now // 60)
        hit = self._open.get(tenant_id)
        if hit is None or hit[0] != minute or hit[1] is not cfg:
            from datetime import UTC
            hit = (minute, cfg, self.hours(tenant_id, cfg).is_open(datetime.fromtimestamp(now, UTC)))
            self._open[tenant_id] = hit
        return hit[2]

    def get_config(self, actor: Actor, tenant_id: str) -> dict[str, str]:
        self.require_lab(actor, tenant_id)
        with self.lv.begin() as conn:
            self._admin_check(conn, actor, tenant_id, Action.READ, "alert")
            return grepo.get_config(conn, tenant_id)

    def set_config(self, actor: Actor, tenant_id: str, name: str, value: str | None) -> None:
        """Set (``value``) or unset (None) one per-lab setting. Only known names: a
        misspelt role, rule or record type would be stored and silently do nothing."""
        kinds = setting_kinds()
        unknown = InvalidField(name, "is not a guard setting", "valid settings: "
                               + _settings_summary())
        if name not in kinds and value is not None:
            raise unknown
        if value is not None:
            _validate_config(name, kinds[name], value)
        lv = self.lv
        self.lv.tenants.get(tenant_id)
        with lv.begin() as conn:
            self._admin_check(conn, actor, tenant_id, Action.WRITE, "alert")
            # an unknown name stored before names were checked can still be unset
            if name not in kinds and name not in grepo.get_config(conn, tenant_id):
                raise unknown
            grepo.set_config(conn, tenant_id, name, value, lv.now())
            lv.gate.audit.event(conn, actor, "guard.config", "ok", tenant_id,
                                {"name": name, "value": value})
        self._config.pop(tenant_id, None)

    def require_lab(self, actor: Actor, tenant_id: str) -> None:
        """An operator's laboratory id names a laboratory (a typo is "no laboratory",
        exit 2, not an empty answer). Staff act on their own lab, checked by the policy."""
        if actor.kind in ("operator", "system"):
            self.lv.tenants.get(tenant_id)

    def _admin_check(self, conn: Connection, actor: Actor, tenant_id: str, action: Action,
                     resource: str) -> None:
        if actor.kind not in ("operator", "system") and (
                not (ADMIN_ROLES & actor.roles) or actor.tenant_id != tenant_id):
            raise AccessDenied("not allowed", "ask your lab administrator or DPO")
        self.lv.gate.check(conn, Access(actor, action, tenant_id, frozenset(),
                                        purpose="security", resource=resource))

    # -- suspensions ---------------------------------------------------------------------------------
    def is_suspended(self, conn: Connection, account_id: str, tenant_id: str | None = None) -> bool:
        """For the session layer: True while a budget breach suspends the account."""
        return grepo.active_suspension(conn, account_id, tenant_id) is not None

    def suspended_cached(self, conn: Connection, tenant_id: str, account_id: str,
                          now: float) -> bool:
        """``is_suspended`` cached for ``SYNC_SECONDS`` (the session layer asks per request)."""
        key = (tenant_id, account_id)
        hit = self._suspended.get(key)
        if hit is not None and now - hit[0] < budgets.SYNC_SECONDS:
            return hit[1]
        state, released = grepo.suspension_state(conn, account_id, tenant_id)
        if released is not None and self._released.get(key) != released:
            # Released since this process last looked — usually by `labvault guard release`,
            # another process: the windows this process holds still count the reads that
            # suspended the account and would suspend it again at once. They restart from
            # the table, which the release emptied.
            self.marks.forget(tenant_id, account_id)
            self._released[key] = released
        self._suspended[key] = (now, state)
        return state

    def suspend(self, conn: Connection, tenant_id: str, actor: Actor, rule: str,
                detail: Mapping[str, Any]) -> None:
        """Record the suspension and a critical alert; both survive the refused read's rollback."""
        lv = self.lv
        self._suspended[(tenant_id, actor.id)] = (time.time(), True)
        full = {**detail, "rule": rule, "session_id": actor.session_id}

        def write(c: Connection) -> None:
            if grepo.active_suspension(c, actor.id, tenant_id) is None:
                grepo.insert_suspension(c, {
                    "tenant_id": tenant_id, "suspension_id": new_id("susp"),
                    "account_id": actor.id, "status": "active", "rule": rule,
                    "created_at": lv.now()})
                lv.gate.audit.event(c, actor, "account.suspended", "ok", tenant_id,
                                    {"rule": rule, "session_id": actor.session_id})

        write(conn)
        self.on_rollback(write)
        self.alert(conn, tenant_id, "budget.exceeded", actor, full, durable=True)

    def suspensions(self, actor: Actor, tenant_id: str) -> list[dict[str, Any]]:
        self.require_lab(actor, tenant_id)
        with self.lv.begin() as conn:
            self._admin_check(conn, actor, tenant_id, Action.READ, "alert")
            return [{"id": r["suspension_id"], "account_id": r["account_id"],
                     "rule": r["rule"], "status": r["status"],
                     "created_at": r["created_at"].isoformat()}
                    for r in grepo.list_suspensions(conn, tenant_id)]

    def release(self, actor: Actor, tenant_id: str, account_id: str) -> int:
        """Lift a suspension (lab admin / DPO, or the operator); the windows restart empty."""
        lv = self.lv
        self.require_lab(actor, tenant_id)
        with lv.begin() as conn:
            self._admin_check(conn, actor, tenant_id, Action.WRITE, "alert")
            n = grepo.release_suspensions(conn, tenant_id, account_id, actor.id, lv.now())
            if not n:
                raise NotFound(f"account {account_id} is not suspended",
                               "list suspensions with `labvault guard suspensions`")
            grepo.delete_account_marks(conn, tenant_id, account_id)
            lv.gate.audit.event(conn, actor, "account.released", "ok", tenant_id,
                                {"account_id": account_id})
        self._suspended.pop((tenant_id, account_id), None)
        self.marks.forget(tenant_id, account_id)
        return n

    # -- honeytokens ---------------------------------------------------------------------------------
    def _canary_set(self, conn: Connection, tenant_id: str) -> frozenset[bytes]:
        now = time.monotonic()
        hit = self._canaries.get(tenant_id)
        if hit is not None and now - hit[0] < CANARY_TTL:
            return hit[1]
        digests = frozenset(d for d, _ in grepo.canary_rows(conn, tenant_id))
        self._canaries[tenant_id] = (now, digests)
        return digests

    def canary_hits(self, conn: Connection, tenant_id: str, patient_ids: Iterable[str]
                    ) -> list[str]:
        digests = self._canary_set(conn, tenant_id)
        if not digests:
            return []
        verdicts = self._verdicts.get(tenant_id)
        if verdicts is None or verdicts[0] is not digests:
            verdicts = self._verdicts[tenant_id] = (digests, {})
        known = verdicts[1]
        out = []
        for p in patient_ids:
            hit = known.get(p)
            if hit is None:
                hit = hmac_sha256(self.secret(conn, tenant_id, "canary"),
                                  p.encode())[:16] in digests
                if len(known) < 200_000:
                    known[p] = hit
            if hit:
                out.append(p)
        return out

    def is_canary(self, conn: Connection, tenant_id: str, patient_id: str) -> bool:
        """Exact (uncached) test: is this patient a honeytoken?"""
        digests = frozenset(d for d, _ in grepo.canary_rows(conn, tenant_id))
        return bool(digests) and self.digest(conn, tenant_id, "canary", patient_id) in digests

    def without_canaries(self, conn: Connection, tenant_id: str, patient_ids: Sequence[str]
                         ) -> list[str]:
        """Filter for every list shown to real users (worklists, statistics, reports)."""
        hits = set(self.canary_hits(conn, tenant_id, patient_ids))
        return [p for p in patient_ids if p not in hits]

    def canary_ids(self, conn: Connection, tenant_id: str) -> list[str]:
        """The honeytoken patients still active (opens their sealed references)."""
        ids = [self.lv.gate.open_tenant_value_checked(
            conn, tenant_id, "guard_canaries", "ref_sealed", d.hex(), sealed).decode()
            for d, sealed in grepo.canary_rows(conn, tenant_id)]
        return sorted(grepo.active_patient_ids(conn, tenant_id, ids))

    def patient_count(self, conn: Connection, tenant_id: str) -> int:
        """Active patients of a lab, honeytokens excluded (for every statistic)."""
        n = grepo.count_active(conn, tenant_id)
        if not grepo.canary_rows(conn, tenant_id):
            return n
        return n - len(self.canary_ids(conn, tenant_id))

    def plant(self, actor: Actor, tenant_id: str, count: int = 1) -> list[str]:
        """Create ``count`` honeytoken patients (registered like any patient)."""
        lv = self.lv
        lv.tenants.get(tenant_id)
        if not 1 <= count <= 1000:
            raise InvalidField("count", "must be between 1 and 1000", "plant a few per lab")
        with lv.begin() as conn:   # DPO (resource "canary") or the operator
            self._admin_check(conn, actor, tenant_id, Action.WRITE, "canary")
        planter = Actor.system("canary")
        made: list[str] = []
        for _ in range(count):
            for _attempt in range(20):
                person = canary_person()
                if not (lv.patients.find(Actor.system("guard"), tenant_id,
                                         phone=person["phone"], purpose="guard")
                        or lv.patients.find(Actor.system("guard"), tenant_id,
                                            email=person["email"], purpose="guard")):
                    break
            pid = lv.patients.register(planter, tenant_id, person, purpose="guard")
            try:
                with lv.begin() as conn:
                    d = self.digest(conn, tenant_id, "canary", pid)
                    sealed = lv.gate.seal_tenant_value(conn, tenant_id, "guard_canaries",
                                                       "ref_sealed", d.hex(), pid.encode())
                    grepo.insert_canary(conn, tenant_id, d, sealed, lv.now())
                    lv.gate.audit.event(conn, actor, "canary.planted", "ok", tenant_id, {})
            except Exception:
                lv.patients.erase(Actor.system("guard"), pid, reason="canary planting failed")
                raise
            made.append(pid)
        self._canaries.pop(tenant_id, None)
        return made

    # -- rules fed by denials ----------------------------------------------------------------------
    def on_denied(self, conn: Connection, access: Access, decision: Decision) -> None:
        actor = access.actor
        t = access.tenant_id or actor.tenant_id
        if t is None or actor.kind not in ("staff", "patient") \
                or decision.rule == BudgetExceeded.code:
            return
        short, _ = self.marks.add(conn, t, actor.id, "deny", [new_id("dn")], time.time())
        if short >= rules.threshold("access.denied.repeated", self.config(conn, t)):
            self.alert(conn, t, "access.denied.repeated", actor,
                       {"denials_10m": short, "resource": access.resource,
                        "action": str(access.action)}, durable=True)

    # -- purge (exports at expiry, patients at end of retention) -------------------------------------
    def purge(self, dry_run: bool = False,
              progress: Callable[[int, int], None] | None = None,
              confirm_mass_erasure: int | None = None) -> dict[str, Any]:
        """Delete expired exports, crypto-shred patients past retention. Refused whole
        (``MassErasureRefused``, nothing done) when a lab would lose more patients than
        ``mass_erasure_limit`` allows, unless ``confirm_mass_erasure`` is the exact count
        the run would erase (what a dry run reports)."""
        due = self._retention_due()
        held = self._mass_erasures(due)
        if held and not dry_run and confirm_mass_erasure != len(due):
            raise MassErasureRefused(len(due), held, confirm_mass_erasure)
        exports = self.exports.purge_expired(dry_run=dry_run)
        patients = self._erase_due(due, dry_run=dry_run, progress=progress)
        patients["mass_erasure"] = held
        if not dry_run:
            with self.lv.begin() as conn:
                grepo.delete_marks_before(conn, self.lv.now() - timedelta(days=2))
        return {"dry_run": dry_run, "exports": exports, "patients": patients}

    def purge_retention(self, dry_run: bool = False,
                        progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        return self._erase_due(self._retention_due(), dry_run=dry_run, progress=progress)

    def _retention_due(self) -> list[tuple[str, str, str]]:
        """(tenant, patient, rule) of every patient whose retention period has run out."""
        from labvault.guard.retention import DEFAULT_RULES, years_for
        lv = self.lv
        now = lv.now()
        due: list[tuple[str, str, str]] = []
        with lv.begin() as conn:
            for t in repo.list_tenants(conn):
                tid = t["tenant_id"]
                cfg = grepo.get_config(conn, tid)
                # Shortest rule bounds the candidates; each candidate then gets its own period.
                shortest = min(years_for(r, cfg) for r in DEFAULT_RULES)
                cands = grepo.patients_idle_since(conn, tid, now - timedelta(days=365 * shortest))
                types = self.retention.types_of(conn, tid, [p for p, _ in cands])
                for pid, last in cands:
                    years = self.retention.years(types[pid], cfg)
                    if last + _years(years) <= now:
                        rule = max(types[pid], key=lambda ty: years_for(ty, cfg))
                        due.append((tid, pid, f"retention:{rule}"))
        return due

    def mass_erasure_limit(self, active: int) -> int:
        """Patients of a lab one purge may erase unaided: the larger of
        LABVAULT_PURGE_MAX_ERASE_PATIENTS and LABVAULT_PURGE_MAX_ERASE_PERCENT % of its
        active patients. Retention expires a trickle a day; far more in one run is a
        misconfiguration (a retention period, a clock, a restored database) until a
        person says otherwise."""
        settings = self.lv.settings
        floor = settings.whole_number("LABVAULT_PURGE_MAX_ERASE_PATIENTS", 0)
        percent = settings.whole_number("LABVAULT_PURGE_MAX_ERASE_PERCENT", 0)
        return max(floor, active * percent // 100)

    def _mass_erasures(self, due: Sequence[tuple[str, str, str]]) -> dict[str, dict[str, int]]:
        """Labs whose erasures in this run exceed ``mass_erasure_limit``."""
        counts: dict[str, int] = {}
        for tid, _, _ in due:
            counts[tid] = counts.get(tid, 0) + 1
        held: dict[str, dict[str, int]] = {}
        with self.lv.begin() as conn:
            for tid, n in sorted(counts.items()):
                active = grepo.count_active(conn, tid)
                limit = self.mass_erasure_limit(active)
                if n > limit:
                    held[tid] = {"expired": n, "active": active, "limit": limit}
        return held

    def _erase_due(self, due: Sequence[tuple[str, str, str]], dry_run: bool,
                   progress: Callable[[int, int], None] | None) -> dict[str, Any]:
        lv = self.lv
        system = Actor.system("retention")
        by_tenant: dict[str, int] = {}
        for i, (tid, pid, rule) in enumerate(due, start=1):
            by_tenant[tid] = by_tenant.get(tid, 0) + 1
            if not dry_run:
                lv.patients.erase(system, pid, reason=rule)
                with lv.begin() as conn:
                    grepo.insert_deletion(conn, {
                        "tenant_id": tid, "deletion_id": new_id("del"), "kind": "patient",
                        "object_id": pid, "rule": rule, "actor_id": system.id,
                        "deleted_at": lv.now()})
            if progress:
                progress(i, len(due))
        return {"expired": len(due), "erased": 0 if dry_run else len(due),
                "by_tenant": by_tenant}

    def hold_mass_erasure(self, refused: MassErasureRefused) -> None:
        """The scheduled purge met a mass erasure: no patient was erased; say so loudly
        (a critical log line and a critical alert per lab, for the DPO's sinks). Expired
        exports are still deleted: their expiry is no retention decision."""
        import logging
        log = logging.getLogger("labvault.guard")
        log.critical("scheduled purge refused, no patient erased: %s", refused)
        try:
            self.exports.purge_expired()
        except Exception:
            log.exception("scheduled purge of expired exports failed")
        try:
            with self.lv.begin() as conn:
                for tid, figures in refused.held.items():
                    self.alert(conn, tid, "retention.mass_erasure", Actor.system("retention"),
                               {**figures, "confirm_with": "labvault purge "
                                f"--confirm-mass-erasure {refused.total}"})
        except Exception:  # the critical log line above stands; the job keeps running
            log.exception("could not raise the mass-erasure alert")


def _years(n: int) -> timedelta:
    return timedelta(days=round(365.25 * n))


def setting_kinds() -> dict[str, str]:
    """Every per-lab guard setting -> the kind of value it takes (docs/guard.md)."""
    from labvault.access.accounts import ROLES
    from labvault.guard.retention import DEFAULT_RULES
    kinds = {f"budget.{role}.{window}": "int" for role in (*ROLES, "*")
             for window in ("10m", "day")}
    kinds |= {r.setting: "int" for r in rules.RULES.values() if r.setting.startswith("rule.")}
    kinds |= {"hours.open": "time", "hours.close": "time", "hours.days": "days",
              "hours.tz": "tz", "export.fields": "fields"}
    kinds |= {f"retention.{t}": "retention" for t in DEFAULT_RULES}
    return kinds


def _settings_summary() -> str:
    """The valid setting names, compactly: budget.<role>.10m|day (roles: ...), ..."""
    from labvault.access.accounts import ROLES
    from labvault.guard.retention import DEFAULT_RULES
    rule_names = sorted(r.setting for r in rules.RULES.values() if r.setting.startswith("rule."))
    return (f"budget.<role>.10m|day (role: {', '.join((*ROLES, '*'))}), "
            f"{', '.join(rule_names)}, hours.open|close|days|tz, "
            f"retention.{'|'.join(DEFAULT_RULES)}, export.fields")


def _validate_config(name: str, kind: str, value: str) -> None:
    from datetime import time as dtime
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
    if kind == "retention":
        _validate_retention(name, value)
        return
    try:
        if kind == "int":
            if int(value) < 0:
                raise ValueError
        elif kind == "time":
            dtime.fromisoformat(value)
        elif kind == "days":
            rules._days(value)
        elif kind == "tz":
            ZoneInfo(value)
        elif kind == "fields":
            from labvault.services.exports import EXPORTABLE
            bad = [f for f in value.split(",") if f.strip() and f.strip() not in EXPORTABLE]
            if bad:
                raise ValueError
    except (ValueError, ZoneInfoNotFoundError):
        raise InvalidField(name, f"invalid value {value!r}",
                           "integers >= 0, HH:MM, mon-sat, Europe/Paris, or known fields") from None


def _validate_retention(name: str, value: str) -> None:
    """Years between the record type's floor and ``MAXIMUM_YEARS``: a shorter period
    crypto-shreds patients at the next purge (guard/retention.py says why the floors)."""
    from labvault.guard.retention import DEFAULT_RULES, MAXIMUM_YEARS
    rule = DEFAULT_RULES[name.removeprefix("retention.")]
    try:
        years = int(value)
    except ValueError:
        years = -1
    if not rule.minimum <= years <= MAXIMUM_YEARS:
        raise InvalidField(name, f"must be a whole number of years from {rule.minimum} to "
                                 f"{MAXIMUM_YEARS}, not {value!r}",
                           f"a shorter period would crypto-shred this lab's patients at the "
                           f"next purge; the default is {rule.years} ({rule.source})")


class GuardBudget:
    """The gate's budget hook: honeytokens, read budgets and anomaly rules."""

    def __init__(self, guard: GuardService) -> None:
        self.guard = guard

    def charge(self, conn: Connection, access: Access, decision: Decision) -> None:
        t = access.tenant_id
        if t is None:
            return
        g = self.guard
        actor = access.actor
        action = access.action
        ids = access.patient_ids
        if ids and action in WATCHED and actor.kind != "system":
            hits = g.canary_hits(conn, t, ids)
            if hits:
                # Merged per account *and* honeytokens: a second honeytoken touched within
                # the window is an alert naming it, not a count on the first one's.
                g.alert(conn, t, f"canary.{action.value}", actor,
                        {"patients": hits, "purpose": access.purpose,
                         "resource": access.resource},
                        subject=f"{actor.id}|{','.join(sorted(hits))}")
        if actor.kind not in ("staff", "patient") or action not in WATCHED or actor.seeded:
            # the demo seeding's actions in a demo account's name are no person's: budgets,
            # enumeration, opening hours and new addresses are about a person's behaviour
            # (honeytokens, above, still alert whoever touches them)
            return
        now = time.time()
        if g.suspended_cached(conn, t, actor.id, now):
            raise BudgetExceeded("this account is suspended after exceeding its read budget",
                                 "a lab administrator must review the alert and release it")
        cfg = g.config(conn, t)
        if action == Action.READ and ids:
            short, long = g.marks.add(conn, t, actor.id, "read", ids, now)
            lim = g.limits(t, cfg, actor)
            if short > lim.short or long > lim.long:
                window = "10m" if short > lim.short else "day"
                g.suspend(conn, t, actor, f"budget.{window}",
                          {"distinct_patients_10m": short, "distinct_patients_day": long,
                           "limit_10m": lim.short, "limit_day": lim.long})
                raise BudgetExceeded(
                    f"read budget exceeded ({window}); this account is suspended",
                    "a lab administrator must review the alert and release the account")
            if short >= rules.threshold("enumeration.patients", cfg):
                g.alert(conn, t, "enumeration.patients", actor, {"distinct_patients_10m": short})
        elif action == Action.SEARCH:
            n, _ = g.marks.add(conn, t, actor.id, "search", [new_id("sr")], now)
            if n >= rules.threshold("enumeration.searches", cfg):
                g.alert(conn, t, "enumeration.searches", actor, {"searches_10m": n})
            if not ids:
                m, _ = g.marks.add(conn, t, actor.id, "miss", [new_id("ms")], now)
                if m >= rules.threshold("enumeration.misses", cfg):
                    g.alert(conn, t, "enumeration.misses", actor, {"misses_10m": m})
        if ids or action == Action.SEARCH:
            if not g.is_open(t, cfg, now):
                g.alert(conn, t, "access.off_hours", actor,
                        {"at": g.lv.now().isoformat()})
            if actor.client and actor.client not in ("cli", "local"):
                self._client(conn, t, actor)
        g.marks.maybe_flush(conn, now)

    def denied(self, conn: Connection, access: Access, decision: Decision) -> None:
        """Called by the gate on each policy refusal (before it is audited)."""
        self.guard.on_denied(conn, access, decision)

    def _client(self, conn: Connection, t: str, actor: Actor) -> None:
        g = self.guard
        assert actor.client is not None
        raw = (t, actor.id, actor.client)     # process memory only; the table keeps digests
        if raw in g._seen_clients:
            return
        d = g.digest(conn, t, "client", actor.client)
        key = (t, actor.id, d)
        if key in g._clients:
            g._seen_clients.add(raw)
            return
        if not grepo.client_known(conn, t, actor.id, d):
            seen_before = grepo.account_has_clients(conn, t, actor.id)
            grepo.add_client(conn, t, actor.id, d, g.lv.now())
            if seen_before:
                g.alert(conn, t, "access.new_client", actor, {"client": actor.client})
        g._clients.add(key)
        g._seen_clients.add(raw)
