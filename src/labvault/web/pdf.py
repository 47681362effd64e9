"""PDF of a published report (WeasyPrint). Nothing is fetched from the network or the disk:
the stylesheet is inside the template and every URL is refused."""

from __future__ import annotations

from typing import Any

from labvault.errors import UserError
from labvault.services.lab import ReportView
from labvault.web.render import ENV


def _no_fetch(url: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    raise UserError("external resources are not allowed in a report", "")


def report_html(report: ReportView, record: dict[str, Any], lab_name: str,
                finess: str = "") -> str:
    """The page the PDF is printed from: the laboratory (name, FINESS), the patient, the
    prescriber, the results and who validated them, when."""
    return ENV.get_template("report_pdf.html").render(report=report, record=record,
                                                      lab_name=lab_name, finess=finess)


def report_pdf(report: ReportView, record: dict[str, Any], lab_name: str,
               finess: str = "") -> bytes:
    from weasyprint import HTML
    pdf: bytes = HTML(string=report_html(report, record, lab_name, finess),
                      url_fetcher=_no_fetch).write_pdf()
    return pdf
