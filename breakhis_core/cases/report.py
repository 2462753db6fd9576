"""The report of a stored case: the HTML page of ``report.html_report`` built from what the case store holds (the
stored image files, their stored heat maps, the predictions as saved, the review, sign-off and addenda), so a report
printed tomorrow says what was signed today, whatever model is active by then.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from breakhis_core.inference.explain import overlay
from breakhis_core.data.images import read_image
from breakhis_core.inference.report import ReportCase, ReportItem, ReportSection, html_report
from breakhis_core.cases.records import CaseImageRecord, CaseRecord, Review

OVERLAY_ALPHA = 0.4


def _review_text(review: Review) -> str:
    agreement = {True: "agrees with the model", False: "disagrees with the model", None: ""}[review.agrees]
    label = f"{review.final_label}{f' ({review.final_type})' if review.final_type else ''}" if review.final_label else ""
    return "; ".join(text for text in (label, agreement, review.comment) if text) or "—"


def signoff_rows(case: CaseRecord) -> dict[str, str]:
    """The report's sign-off block of a stored case (label → text)."""
    rows = {"Accession number": case.accession, "Patient reference": case.patient_ref, "Status": case.status,
            "Pathologist's conclusion": _review_text(case.review),
            "Reviewed by": f"{case.reviewed_by}, {case.reviewed_at:%Y-%m-%d %H:%M} UTC" if case.reviewed_by else "—",
            "Signed by": f"{case.signed_by}, {case.signed_at:%Y-%m-%d %H:%M} UTC" if case.signed_by else "not signed"}
    for number, addendum in enumerate(case.addenda, start=1):
        change = f" — {_review_text(addendum.review)}" if addendum.review else ""
        rows[f"Addendum {number}"] = (f"{addendum.author}, {addendum.created_at:%Y-%m-%d %H:%M} UTC: "
                                      f"{addendum.text}{change}")
    return rows


def case_report(case: CaseRecord, image_path: Callable[[CaseImageRecord], object],
                heatmap: Callable[[CaseImageRecord], np.ndarray | None]) -> str:
    """The self-contained HTML report of ``case``.

    Args:
        image_path: a case image → its stored file (``CaseService.image_path``).
        heatmap: a case image → its stored heat map or None (``CaseService.heatmap``).
    """
    items = []
    for image in case.images:
        p = image.prediction
        if p is None:  # an image stored without a prediction has no verdict to report
            continue
        pixels = read_image(image_path(image))
        layer = heatmap(image)
        review = f"; reviewer: {_review_text(image.review)}" if image.review != Review() else ""
        items.append(ReportItem(
            name=image.name, image=pixels, overlay=overlay(pixels, layer, OVERLAY_ALPHA) if layer is not None else None,
            magnification=image.magnification, magnification_source="given" if image.magnification else "unknown",
            p_malignant=p.p_malignant, verdict=p.verdict,
            confidence=p.p_malignant if p.verdict == "malignant" else 1 - p.p_malignant, low_confidence=False,
            note=f"served by {p.model_id}{review}"))
    prediction = case.prediction
    cases = [ReportCase(case.accession, len(case.images), prediction.p_malignant, prediction.verdict,
                        f"{prediction.rule} of the images' P(malignant), threshold {prediction.threshold:.2f}")] \
        if prediction else []
    model = ({"model_id": prediction.model_id, "task": prediction.task, "threshold": f"{prediction.threshold:.2f}",
              "temperature": f"{prediction.temperature:.2f}"} if prediction else None)
    section = ReportSection("Case", data={"Accession number": case.accession, "Patient reference": case.patient_ref,
                                          "Created": f"{case.created_at:%Y-%m-%d %H:%M} UTC by {case.created_by}"})
    return html_report(items, cases, model, title=f"BreakHis case {case.accession}", sections=[section],
                       signoff=signoff_rows(case))
