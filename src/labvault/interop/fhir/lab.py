"""ServiceRequest, Specimen, Observation, DiagnosticReport over the lab service (``lv.lab``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labvault.interop.fhir.server import Handler
    from labvault.services.app import Labvault


def lab_handlers(lv: Labvault) -> Iterable[Handler]:
    return ()
