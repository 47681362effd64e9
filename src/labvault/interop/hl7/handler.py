"""One HL7 v2 message in, one ACK out: parse -> map -> store (committed) -> ACK.

``Hl7Handler.handle(raw)`` never raises: unparseable input gets an AR, content errors
an AE (nothing stored), success an AA (with ERR warnings for results kept in the
import-issues queue). The ACK is returned only after the transaction committed.
"""

from __future__ import annotations

import logging
from datetime import tzinfo
from typing import TYPE_CHECKING

from labvault.domain import inbound as I
from labvault.domain.actors import Actor
from labvault.domain.inbound import Location, MessageError
from labvault.interop.hl7 import ack as A
from labvault.interop.hl7.mapping import DEFAULT_TZ, Rejected, to_inbound
from labvault.interop.hl7.parse import Unparseable, read_message

if TYPE_CHECKING:
    from labvault.services.app import Labvault

log = logging.getLogger("labvault.hl7")


class Hl7Handler:
    def __init__(self, lv: Labvault, actor: Actor | None = None, tenant_id: str | None = None,
                 tz: tzinfo = DEFAULT_TZ) -> None:
        self.lv = lv
        self.actor = actor or Actor.system("mllp")
        self.tenant_id = tenant_id
        self.tz = tz
        self._tenants: dict[str, str | None] = {}

    def _ack_id(self) -> str:
        from secrets import token_hex
        return "ACK" + token_hex(8)

    def _tenant(self, header: A.Header, facility: str) -> str | None:
        if self.tenant_id is not None:
            return self.tenant_id
        key = facility.split("^")[0].strip()
        if key not in self._tenants:
            self._tenants[key] = self.lv.lab.messages.tenant_for_facility(key) if key else None
        return self._tenants[key]

    def reject(self, raw: bytes | str, error: MessageError) -> bytes:
        return A.build_ack(A.sniff_header(raw), "AR", [error], self._ack_id())

    def handle(self, raw: bytes) -> tuple[I.IngestOutcome, bytes]:
        try:
            msg = read_message(raw)
        except Unparseable as exc:
            err = MessageError(Location(exc.where, 1, exc.field), I.ERR_SEGMENT_SEQUENCE
                               if exc.field is None else I.ERR_DATA_TYPE, exc.reason)
            return I.IngestOutcome("AR", [err]), self.reject(raw, err)
        header = A.sniff_header(raw)
        header = A.Header(msg.separators, msg.msh.get(3), msg.msh.get(4), msg.msh.get(5),
                          msg.msh.get(6), msg.msh.get(10), msg.msh.get(9, 2),
                          msg.msh.get(12, 1) or "2.5", msg.msh.get(11, 1) or "P")
        try:
            inbound = to_inbound(msg, self.tz)
        except Rejected as exc:
            return I.IngestOutcome("AR", [exc.error]), A.build_ack(header, "AR", [exc.error],
                                                                   self._ack_id())
        except I.ContentError as exc:
            return I.IngestOutcome("AE", exc.errors), A.build_ack(header, "AE", exc.errors,
                                                                  self._ack_id())
        tenant_id = self._tenant(header, msg.msh.get(6))
        if tenant_id is None:
            err = MessageError(Location("MSH", 1, 6), I.ERR_UNKNOWN_KEY,
                               "MSH-6 (receiving facility) is not the FINESS of a laboratory "
                               "here")
            return I.IngestOutcome("AR", [err]), A.build_ack(header, "AR", [err], self._ack_id())
        try:
            return self.lv.lab.messages.ingest(
                self.actor, tenant_id, raw, inbound,
                lambda outcome: A.build_ack(header, outcome.ack_code, outcome.errors,
                                            self._ack_id()))
        except Exception:
            # A fault of ours (database down...): nothing committed; AE so the sender retries.
            log.exception("HL7 message could not be stored")
            err = MessageError(None, I.ERR_INTERNAL, "internal error: message not stored, "
                               "send it again later")
            return I.IngestOutcome("AE", [err]), A.build_ack(header, "AE", [err], self._ack_id())
