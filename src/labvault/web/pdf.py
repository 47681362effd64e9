"""PDF of a published report (WeasyPrint). Nothing is fetched from the network or the disk:
the stylesheet is inside the template and every URL is refused."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from labvault.errors import UserError
from labvault.services.lab import ReportView, SpecimenView
from labvault.web.render import ENV, SPECIMEN_FR


def _no_fetch(url: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    raise UserError("external resources are not allowed in a report", "")


# where the document was produced, as its footer says it (the same report either way)
FROM_PORTAL = "depuis le portail patient"
FROM_CONSOLE = "depuis la console du laboratoire"


def report_html(report: ReportView, record: dict[str, Any], lab_name: str,
                finess: str = "", specimens: Sequence[SpecimenView] = (),
                produced: str = FROM_PORTAL) -> str:
    """The page the PDF is printed from: the laboratory (name, FINESS), the patient, the
    prescriber, when the specimens were collected, the results and who validated them."""
    return ENV.get_template("report_pdf.html").render(
        report=report, record=record, lab_name=lab_name, finess=finess, specimens=specimens,
        SPECIMEN_FR=SPECIMEN_FR, produced=produced)


def report_pdf(report: ReportView, record: dict[str, Any], lab_name: str,
               finess: str = "", specimens: Sequence[SpecimenView] = (),
               produced: str = FROM_PORTAL) -> bytes:
    from weasyprint import HTML
    pdf: bytes = HTML(string=report_html(report, record, lab_name, finess, specimens, produced),
                      url_fetcher=_no_fetch).write_pdf()
    return pdf
