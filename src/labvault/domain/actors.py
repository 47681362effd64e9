"""Who is acting: every gate decision names an actor (a person, never a shared account)."""

from __future__ import annotations

import getpass
import socket
from dataclasses import dataclass, field
from typing import Literal

ActorKind = Literal["operator", "staff", "patient", "system"]
# The client of what labvault's demo seeding does in a demo staff account's name (the
# morning's orders and results, services/demo_lab.py): no person acted, so the guard's rules
# about a person's behaviour skip it (``Actor.seeded``). A request's actor always carries
# its session, so no request passes for one, whatever address it claims.
SEEDING_CLIENT = "labvault-demo-seed"


@dataclass(frozen=True, slots=True)
class Actor:
    kind: ActorKind
    id: str                       # account id; "os:<user>@<host>" for the CLI operator
    tenant_id: str | None         # the laboratory a staff account belongs to
    roles: frozenset[str] = field(default_factory=frozenset)
    display: str = ""
    client: str | None = None     # client address (IP) or "cli"
    session_id: str | None = None
    patient_id: str | None = None  # for patient portal accounts: their own record
    request_id: str | None = None

    @property
    def seeded(self) -> bool:
        """An action of the demo seeding in a staff account's name (``SEEDING_CLIENT``),
        not of a person: no session behind it."""
        return (self.kind == "staff" and self.client == SEEDING_CLIENT
                and self.session_id is None)

    @staticmethod
    def operator() -> Actor:
        """The operating-system user running the CLI on the server that holds the keys."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry in some containers
            user = "unknown"
        ident = f"os:{user}@{socket.gethostname()}"
        return Actor(kind="operator", id=ident, tenant_id=None,
                     roles=frozenset({"operator"}), display=ident, client="cli")

    @staticmethod
    def system(name: str) -> Actor:
        """labvault itself (scheduled purge, MLLP listener): audited under its job name."""
        return Actor(kind="system", id=f"system:{name}", tenant_id=None,
                     roles=frozenset({"system"}), display=f"system {name}", client="local")
