"""One HL7 v2 message in, one ACK out: parse -> map -> store (committed) -> ACK.

``Hl7Handler.handle(raw)`` never raises: unparseable input gets an AR, content errors
an AE (nothing stored), success an AA (with ERR warnings for results kept in the
import-issues queue). The ACK is returned only after the transaction committed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import tzinfo
from typing import TYPE_CHECKING

from labvault.domain import inbound as I
from labvault.domain.actors import Actor
from labvault.domain.inbound import Location, MessageError
from labvault.interop.hl7 import ack as A
from labvault.interop.hl7.mapping import DEFAULT_TZ, Rejected, to_inbound
from labvault.interop.hl7.mllp import Received
from labvault.interop.hl7.parse import Unparseable, read_message

if TYPE_CHECKING:
    from labvault.services.app import Labvault

log = logging.getLogger("labvault.hl7")


@dataclass(frozen=True, slots=True)
class Prepared:
    """A message read and mapped, or the ACK that refuses it (``ack`` set)."""

    header: A.Header
    inbound: I.InboundMessage | None
    outcome: I.IngestOutcome | None = None
    ack: bytes | None = None
    raw: bytes = b""
    actor: Actor | None = None      # the authenticated sender (mutual TLS), if any


class _NothingStored(Exception):
    def __init__(self, ack: bytes) -> None:
        super().__init__("message refused")
        self.ack = ack


def prepare(raw: bytes, tz: tzinfo = DEFAULT_TZ, ack_id: str = "ACK") -> Prepared:
    """Parse and map without storing (pure; the fuzzed path). Never raises."""
    try:
        msg = read_message(raw)
    except Unparseable as exc:
        err = MessageError(Location(exc.where, 1, exc.field), I.ERR_SEGMENT_SEQUENCE
                           if exc.field is None else I.ERR_DATA_TYPE, exc.reason)
        h = A.sniff_header(raw)
        return Prepared(h, None, I.IngestOutcome("AR", [err]), A.build_ack(h, "AR", [err], ack_id))
    header = A.Header(msg.separators, msg.msh.get(3), msg.msh.get(4), msg.msh.get(5),
                      msg.msh.get(6), msg.msh.get(10), msg.msh.get(9, 2),
                      msg.msh.get(12, 1) or "2.5", msg.msh.get(11, 1) or "P",
                      msg.msh.get(18).strip().upper())
    try:
        inbound = to_inbound(msg, tz)
    except Rejected as exc:
        return Prepared(header, None, I.IngestOutcome("AR", [exc.error]),
                        A.build_ack(header, "AR", [exc.error], ack_id))
    except I.ContentError as exc:
        return Prepared(header, None, I.IngestOutcome("AE", exc.errors),
                        A.build_ack(header, "AE", exc.errors, ack_id))
    except Exception as exc:   # a mapping bug must not take the listener down
        log.exception("HL7 mapping failed")
        err = MessageError(None, I.ERR_INTERNAL, f"internal error ({type(exc).__name__})")
        return Prepared(header, None, I.IngestOutcome("AE", [err]),
                        A.build_ack(header, "AE", [err], ack_id))
    return Prepared(header, inbound, raw=raw)


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
        return self._store(prepare(raw, self.tz, self._ack_id()))

    def sender_actor(self, received: Received) -> Actor:
        """The actor a message of an authenticated analyser is written and audited as:
        ``system:mllp:<certificate CN>`` from the peer's address (the CN the lab's CA
        vouched for; kept to id characters)."""
        cn = "".join(c if c.isalnum() or c in "._-" else "_" for c in received.sender)[:60]
        return Actor(kind="system", id=f"{self.actor.id}:{cn}", tenant_id=None,
                     roles=self.actor.roles, display=f"analyser {cn}",
                     client=received.address or self.actor.client)

    def handle_many(self, raws: Sequence[bytes | Received]) -> list[bytes]:
        """Several messages (from several connections) in one transaction, one savepoint
        each: a message refused (AE/AR) or failing leaves nothing and does not touch the
        others. The ACKs are valid once this returns, i.e. after the commit; if the commit
        itself fails, every message gets an AE asking to send it again. A ``Received``
        message is written as its authenticated sender (``sender_actor``)."""
        prepared = [prepare(r, self.tz, self._ack_id()) if isinstance(r, bytes) else
                    replace(prepare(r.raw, self.tz, self._ack_id()),
                            actor=self.sender_actor(r))
                    for r in raws]   # outside the lock
        if len(raws) == 1:
            return [self._store(prepared[0])[1]]
        acks: list[bytes] = []
        try:
            with self.lv.begin():
                for p in prepared:
                    acks.append(self._in_savepoint(p))
        except Exception:
            log.exception("a batch of %d HL7 messages could not be committed", len(raws))
            err = MessageError(None, I.ERR_INTERNAL, "internal error: message not stored, "
                               "send it again later")
            return [A.build_ack(p.header, "AE", [err], self._ack_id()) for p in prepared]
        return acks

    def _in_savepoint(self, p: Prepared) -> bytes:
        try:
            with self.lv.savepoint():
                outcome, ack = self._store(p)
                if outcome.ack_code != "AA" and not outcome.kept:
                    raise _NothingStored(ack)    # undo whatever the refused message wrote
                return ack
        except _NothingStored as refused:
            return refused.ack

    def _store(self, p: Prepared) -> tuple[I.IngestOutcome, bytes]:
        raw = p.raw
        if p.ack is not None:
            assert p.outcome is not None
            return p.outcome, p.ack
        assert p.inbound is not None
        header = p.header
        tenant_id = self._tenant(header, header.receiving_facility)
        if tenant_id is None:
            err = MessageError(Location("MSH", 1, 6), I.ERR_UNKNOWN_KEY,
                               f"MSH-6 (receiving facility) {header.receiving_facility!r} is "
                               "not the FINESS of a laboratory here: send the laboratory's "
                               "FINESS in MSH-6.1, or run the listener with --tenant")
            return I.IngestOutcome("AR", [err]), A.build_ack(header, "AR", [err], self._ack_id())
        try:
            return self.lv.lab.messages.ingest(
                p.actor or self.actor, tenant_id, raw, p.inbound,
                lambda outcome: A.build_ack(header, outcome.ack_code, outcome.errors,
                                            self._ack_id()))
        except Exception:
            # A fault of ours (database down...): nothing committed; AE so the sender retries.
            log.exception("HL7 message could not be stored")
            err = MessageError(None, I.ERR_INTERNAL, "internal error: message not stored, "
                               "send it again later")
            return I.IngestOutcome("AE", [err]), A.build_ack(header, "AE", [err], self._ack_id())
