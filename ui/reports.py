"""Report downloads: a report page (``breakhis_core.inference.outputs``) offered as PDF, or why it cannot be."""

from __future__ import annotations

import streamlit as st


def pdf_download(label: str, page, file_name: str, key: str, column=None) -> None:
    """A download button of ``page()`` (an HTML report) as PDF; disabled, saying why, without WeasyPrint."""
    from breakhis_core.inference.report import pdf_report, pdf_unavailable

    reason = pdf_unavailable()
    (column or st).download_button(
        label, (lambda: pdf_report(page())) if reason is None else b"", file_name=file_name, mime="application/pdf",
        icon=":material/picture_as_pdf:", on_click="ignore", disabled=reason is not None, key=key,
        help=reason or "The same report as A4 pages, with the lab's name, logo and footer and a sign-off block.",
    )
