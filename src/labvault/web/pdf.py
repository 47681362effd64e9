"""PDF of a published report (WeasyPrint). Nothing is fetched from the network or the disk:
the stylesheet is inside the template and every URL is refused."""

from __future__ import annotations

from typing import Any

from labvault.errors import UserError
from labvault.services.lab import ReportView
from labvault.web.render import ENV


def _no_fetch(url: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    raise UserError("external resources are not allowed in a report", "")


def report_html(report: ReportView, record: dict[str, Any], lab_name: str) -> str:
    """The page the PDF is printed from."""
    return ENV.get_template("report_pdf.html").render(report=report, record=record,
                                                      lab_name=lab_name)


def report_pdf(report: ReportView, record: dict[str, Any], lab_name: str) -> bytes:
    from weasyprint import HTML
    pdf: bytes = HTML(string=report_html(report, record, lab_name),
                      url_fetcher=_no_fetch).write_pdf()
    return pdf
