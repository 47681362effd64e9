"""Core use-cases behind the web door (``labvault.web``): the patient portal's own-record
views, the erasure request, and the CSRF tokens of the HTML forms.

Everything that touches personal data goes through the other services (``lv.patients``,
``lv.lab``, the audit reports), so it passes the gate and is audited there.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING, Any

from labvault.access.accounts import PLATFORM_TENANT
from labvault.crypto import digests
from labvault.domain import lab as L
from labvault.domain.actors import Actor
from labvault.errors import AccessDenied, NotFound, UserError
from labvault.services.audit import audit_of
from labvault.services.lab import PATIENT_VISIBLE
from labvault.store.ids import new_id

if TYPE_CHECKING:
    from labvault.services.app import Labvault
    from labvault.services.lab import OrderView, ReportView, SpecimenView

PUBLISHED = PATIENT_VISIBLE     # what a patient sees of the lab (enforced in LabService)
PORTAL_PURPOSE = "patient-access"       # GDPR art. 15/20: the patient reads its own record
ERASURE_KIND = "erasure-request"
EXPORT_FORMAT = "labvault-patient-export/2"     # docs/formats.md, "Patient data download"


def _patient(actor: Actor) -> tuple[str, str]:
    if actor.kind != "patient" or not actor.patient_id or not actor.tenant_id:
        raise AccessDenied("this page is for patient accounts",
                           "staff use the console (/console)")
    return actor.tenant_id, actor.patient_id


class PortalService:
    def __init__(self, lv: Labvault) -> None:
        self.lv = lv
        self._csrf_key: bytes | None = None

    # -- CSRF tokens of HTML forms -------------------------------------------------------------
    def _key(self) -> bytes:
        """A secret derived from the platform index key (same in every worker, never stored)."""
        if self._csrf_key is None:
            with self.lv.begin() as conn:
                self.lv.load_tenant_keys(conn, PLATFORM_TENANT)
            self._csrf_key = self.lv.keyring.tenant_secret(PLATFORM_TENANT, "index", 1,
                                                           "web-csrf")
        assert self._csrf_key is not None
        return self._csrf_key

    def csrf_token(self, actor: Actor) -> str:
        """The form token of a session: a MAC of the session id (per session, stateless)."""
        if actor.session_id is None:
            raise AccessDenied("no session", "log in again")
        return digests.hmac_sha256(self._key(), b"csrf\x00" + actor.session_id.encode()).hex()

    def check_csrf(self, actor: Actor, token: str | None) -> None:
        if not token or not hmac.compare_digest(self.csrf_token(actor), token):
            raise CsrfRefused("the form has expired or did not come from labvault",
                              "reload the page and submit the form again")

    # -- patient portal --------------------------------------------------------------------------
    def my_reports(self, actor: Actor, anteriorities: bool = True) -> list[ReportView]:
        """The patient's published reports (published or amended after publication), newest
        first. Reports not yet published are never opened for the portal.
        ``anteriorities``: each with its "Antériorité" column, as the compte rendu prints
        it (``ReportView.anteriorities``: previous results themselves published only)."""
        tenant_id, patient_id = _patient(actor)
        lab = self.lv.lab
        # amended reports were all published first; "final" reports may not be published
        # yet, so those are found through their order's (clear) status before opening.
        out = [r for r in lab.list_reports(actor, tenant_id, patient_id=patient_id,
                                           status="amended", purpose=PORTAL_PURPOSE,
                                           anteriorities=anteriorities)
               if r.order_status in PUBLISHED]
        out.extend(lab.get_report_by_order(actor, o.order_id, purpose=PORTAL_PURPOSE,
                                           anteriorities=anteriorities)
                   for o in lab.list_orders(actor, tenant_id, patient_id=patient_id,
                                            status=L.OrderStatus.PUBLISHED.value,
                                            purpose=PORTAL_PURPOSE))
        out.sort(key=lambda r: r.issued_at or r.updated_at, reverse=True)
        return out

    def my_report(self, actor: Actor, report_id: str) -> ReportView:
        """One published report of the patient, with its "Antériorité" column (the PDF's);
        anything else (another patient's, not published yet, no such id) answers the same
        "not found"."""
        _tenant, patient_id = _patient(actor)
        try:
            rep = self.lv.lab.get_report(actor, report_id, purpose=PORTAL_PURPOSE,
                                         anteriorities=True)
        except (AccessDenied, NotFound) as exc:
            raise NotFound("no such report", "go back to your results") from exc
        if rep.patient_id != patient_id or rep.order_status not in PUBLISHED:
            raise NotFound("no such report", "go back to your results")
        return rep

    def my_specimens(self, actor: Actor, report: ReportView) -> list[SpecimenView]:
        """The specimens of one of the patient's published reports (when each was
        collected: a report is read against that time)."""
        _patient(actor)
        return list(self.lv.lab.get_order(actor, report.order_id,
                                          purpose=PORTAL_PURPOSE).specimens)

    def my_record(self, actor: Actor) -> dict[str, Any]:
        _tenant, patient_id = _patient(actor)
        return self.lv.patients.show(actor, patient_id, purpose=PORTAL_PURPOSE)

    def my_access_log(self, actor: Actor) -> list[dict[str, Any]]:
        """ "Who accessed my record" (audited itself, purpose ``access-log``)."""
        _tenant, patient_id = _patient(actor)
        return audit_of(self.lv).access_log(actor, patient_id)

    def my_accesses(self, actor: Actor) -> Accesses:
        """ "Who accessed my record" as the portal shows it: every access by someone else
        (staff, systems, the DPO, breach letters...), and the patient's own portal reads
        only counted -- each page view makes several, which would drown the others."""
        return Accesses.of(self.my_access_log(actor))

    def my_orders(self, actor: Actor) -> list[OrderView]:
        """The patient's orders it may see, with their specimens: those whose report is
        published, and those closed without one (specimen rejected, order cancelled: the
        reason says why no result came), oldest first."""
        tenant_id, patient_id = _patient(actor)
        orders = self.lv.lab.list_orders(actor, tenant_id, patient_id=patient_id,
                                         purpose=PORTAL_PURPOSE, specimens=True, closed=True)
        return sorted(orders, key=lambda o: o.created_at)

    def my_data(self, actor: Actor) -> dict[str, Any]:
        """The patient's data as the portal may give it, as one JSON document (GDPR art.
        15/20; docs/formats.md, "Patient data download"): its portal account (never a
        secret or a hash), its record, its orders (specimens, why one was closed, the
        prescriber's notes), its published reports, and who accessed its record (read
        last: the count of its own reads includes this download's)."""
        _patient(actor)
        doc = {"format": EXPORT_FORMAT,
               "exported_at": self.lv.now().isoformat(),
               "account": self.lv.accounts.own_account(actor),
               "record": self.my_record(actor),
               "orders": [order_json(o) for o in self.my_orders(actor)],
               "reports": [r.as_json(staff_names=False)
                           for r in self.my_reports(actor, anteriorities=False)]}
        accesses = self.my_accesses(actor)
        return {**doc, "access_log": accesses.others,
                "own_accesses": {"count": accesses.own_count, "last_at": accesses.own_last}}

    def request_erasure(self, actor: Actor, reason: str | None = None) -> str:
        """Record the patient's erasure request for the laboratory's DPO: an audited
        security event and an alert (kind ``erasure-request``). Nothing is erased here: the
        DPO checks legal retention duties first, then a biologist erases (``patients.erase``).
        The reason, if given, is free text: it goes to the audit event's sealed part only."""
        from labvault.domain import validation as v
        tenant_id, patient_id = _patient(actor)
        why = v.text(reason, "reason", 2000)
        lv = self.lv
        request_id = new_id("er")
        with lv.begin() as conn:
            detail: dict[str, Any] = {"request_id": request_id, "patient_id": patient_id,
                                      "account_id": actor.id}
            if why:
                detail["reason"] = why
            lv.gate.audit.event(conn, actor, "erasure.request", "recorded", tenant_id, detail)
            lv.alerts.raise_alert(conn, tenant_id, ERASURE_KIND, "medium", actor,
                                  {"request_id": request_id, "patient_id": patient_id})
        return request_id


@dataclass(frozen=True)
class Accesses:
    """A record's access log split for its patient: ``others`` (oldest first), and the
    patient's own portal reads as a count and the time of the last one."""

    others: list[dict[str, Any]]
    own_count: int
    own_last: str | None

    @staticmethod
    def of(rows: list[dict[str, Any]]) -> Accesses:
        # a patient account reads only its own record (policy scope SELF): these rows are
        # the patient's own; anyone else's access stays listed
        own = [r for r in rows if r["actor_kind"] == "patient"]
        return Accesses([r for r in rows if r["actor_kind"] != "patient"], len(own),
                        own[-1]["at"] if own else None)


def order_json(order: OrderView) -> dict[str, Any]:
    """One of the patient's orders in its data download: the request (tests, prescriber,
    the prescriber's clinical notes), its specimens, and for a closed order why and when
    (staff never named: no step carries who took it)."""
    closed = next((s for k, s in order.steps.items()
                   if k in ("rejected", "cancelled")), None)
    return {"id": order.order_id,
            "report_id": order.report_id if order.status in PUBLISHED else None,
            "status": order.status.value, "created_at": order.created_at.isoformat(),
            **order.request.as_json(),
            # the requested tests as the patient reads them, in the order of ``tests``
            "test_labels": [order.test_name(t) for t in order.request.tests],
            "specimens": [{"type": s.specimen.type,
                           "collected_at": s.specimen.collected_at.astimezone(UTC).isoformat(),
                           "received_at": s.received_at.isoformat(),
                           "accession_number": s.specimen.accession_number,
                           "status": s.status} for s in order.specimens],
            "closed": None if closed is None else {
                "at": closed.at.isoformat(), "reason": closed.detail.get("reason"),
                "comment": closed.detail.get("comment")}}


class CsrfRefused(UserError):
    code = "csrf"
    http_status = 403
