"""The HTML reports of the Diagnose and Compare pages (``breakhis_core.report``) and their PDF download button."""

from __future__ import annotations

import streamlit as st

from breakhis_core import registry


def prediction_report(predictions, cases, images, labels, run: registry.Run, stage: str, alpha: float) -> str:
    """The self-contained HTML report (``breakhis_core.report``) of a Diagnose batch.

    Args:
        predictions: ``predict.Prediction`` per image, with heat maps.
        cases: ``predict.Case`` list.
        images: the ``(H, W, 3)`` uint8 RGB images, in the order of ``predictions``.
        labels: names shown for the images (zip members as ``archive.zip › member``).
        run, stage: the model used.
        alpha: heat-map opacity of the overlays.
    """
    from dataclasses import replace

    from breakhis_core.explain import overlay
    from breakhis_core.report import ReportCase, ReportItem, html_report

    items = [
        replace(ReportItem.from_prediction(p, image, overlay(image, p.heatmap, alpha) if p.heatmap is not None else None),
                name=label)
        for p, image, label in zip(predictions, images, labels)
    ]
    overall = ((((run.metrics or {}).get("models") or {}).get(stage) or {}).get("overall")) or {}
    card = {
        "model_id": registry.model_id(run, stage),
        "split_protocol": run.protocol or "unknown (imported model)",
        "leaky": bool(run.leaky),
        "patient_accuracy": (overall.get("patient_recognition_rate") or {}).get("value"),
        "image_accuracy": (overall.get("image_accuracy") or {}).get("value"),
    }
    return html_report(items, [ReportCase.from_case(c) for c in cases], card)


def comparison_report(images, labels, results: dict, alpha: float) -> str:
    """The HTML report (``breakhis_core.report``) of the Compare page's uploaded images.

    Args:
        images: the ``(H, W, 3)`` uint8 RGB images.
        labels: names shown for the images.
        results: model label → ``predict.Prediction`` per image (with heat maps), for the two models.
        alpha: heat-map opacity of the overlays.
    """
    from dataclasses import replace

    from breakhis_core.explain import overlay
    from breakhis_core.report import ReportItem, html_report

    models = list(results)
    items = [
        replace(ReportItem.from_prediction(p, image, overlay(image, p.heatmap, alpha) if p.heatmap is not None else None),
                name=f"{label} · {model}")
        for index, (image, label) in enumerate(zip(images, labels))
        for model in models
        for p in [results[model][index]]
    ]
    agree = sum(results[models[0]][i].verdict == results[models[-1]][i].verdict for i in range(len(images)))
    card = {"model_id": " vs ".join(f"{model} ({results[model][0].model_id})" if results[model] else model for model in models),
            "agreement": f"the two models agree on {agree} of {len(images)} image(s)"}
    return html_report(items, [], card, title="BreakHis model comparison")


def pdf_download(label: str, page, file_name: str, key: str, column=None) -> None:
    """A download button of ``page()`` (an HTML report) as PDF; disabled, saying why, without WeasyPrint."""
    from breakhis_core.report import pdf_report, pdf_unavailable

    reason = pdf_unavailable()
    (column or st).download_button(
        label, (lambda: pdf_report(page())) if reason is None else b"", file_name=file_name, mime="application/pdf",
        icon=":material/picture_as_pdf:", on_click="ignore", disabled=reason is not None, key=key,
        help=reason or "The same report as A4 pages, with the lab's name, logo and footer and a sign-off block.",
    )
