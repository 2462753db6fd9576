"""A self-contained HTML report of a prediction batch.

One HTML string, no external resources: inline CSS, images as base64 PNG data URIs
(thumbnails at most ``THUMB_SIDE`` pixels), no scripts, and a Content-Security-Policy that
forbids them. Every user-supplied string (file names, notes, rules, ids) is HTML-escaped.
For a PDF, print the page from a browser (the CSS keeps each image on one page).

Inputs are plain data, independent of ``predict.py``: :class:`ReportItem` per image and
:class:`ReportCase` per case (or mappings with the same keys); ``from_prediction`` and
``from_case`` build them from ``predict.Prediction`` / ``predict.Case``-like objects.

>>> page = html_report([], [], None)
>>> "not a diagnosis" in page
True
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from .images import resize

NOTICE = "Decision support for research use only — not a diagnosis."
THUMB_SIDE = 256
"""Longest side of the embedded thumbnails, in pixels."""

CARD_FIELDS = {
    "model_id": "Model",
    "split_protocol": "Split protocol",
    "patient_accuracy": "Patient-level accuracy (test)",
    "image_accuracy": "Image-level accuracy (test)",
}
"""Documented keys of ``model_card_summary`` and their labels; other keys are shown after them."""


@dataclass
class ReportItem:
    """One image of the report.

    Attributes:
        name: file name as given by the user (any text; escaped on output).
        image: ``(H, W, 3)`` uint8 RGB, the image as analysed.
        overlay: ``(H, W, 3)`` uint8 RGB heat-map overlay, or None.
        magnification: 40/100/200/400, or None when unknown.
        magnification_source: where it came from: "given", "filename" or "unknown".
        p_malignant: P(malignant) in [0, 1].
        verdict: "benign" or "malignant".
        confidence: probability of the verdict (in [0.5, 1] at the default decision threshold 0.5).
        low_confidence: True when the verdict is uncertain.
        note: free text shown with the verdict (e.g. why confidence is low), or "".
    """

    name: str
    image: np.ndarray
    overlay: np.ndarray | None
    magnification: int | None
    magnification_source: str
    p_malignant: float
    verdict: str
    confidence: float
    low_confidence: bool
    note: str = ""

    @classmethod
    def from_prediction(cls, prediction: Any, image: np.ndarray, overlay: np.ndarray | None = None) -> "ReportItem":
        """From a ``predict.Prediction`` (or any object with its attributes) and the image it was made from."""
        return cls(
            name=prediction.name,
            image=image,
            overlay=overlay,
            magnification=prediction.magnification,
            magnification_source=prediction.magnification_source,
            p_malignant=prediction.p_malignant,
            verdict=prediction.verdict,
            confidence=prediction.confidence,
            low_confidence=prediction.low_confidence,
            note="; ".join(
                text for text in (
                    getattr(prediction, "low_confidence_reason", ""),
                    f"served by {getattr(prediction, 'route', '') or getattr(prediction, 'model_id', '')}",
                    getattr(prediction, "input_rule", ""),
                    _operating_point(prediction),
                ) if text and text != "served by "
            ),
        )


def _operating_point(prediction: Any) -> str:
    """The model's decision threshold and temperature when they are not the defaults (0.5, 1), else ""."""
    threshold, temperature = getattr(prediction, "threshold", 0.5), getattr(prediction, "temperature", 1.0)
    if threshold == 0.5 and temperature == 1.0:
        return ""
    return f"decision threshold {threshold:.2f} on P(malignant) calibrated with temperature {temperature:.2f}"


@dataclass
class ReportCase:
    """One case (slide, or a whole upload) of the report.

    Attributes:
        case_id: slide id ("14-22549AB") or a label such as "one case".
        n_images: number of images in the case.
        mean_p_malignant: mean P(malignant) of its images, in [0, 1].
        verdict: "benign" or "malignant".
        rule: the rule that gave the verdict, with its numbers (free text).
        per_magnification: rows ``{"magnification": "40X", "images": int, "mean_p_malignant": float,
            "malignant_images": int, "verdict": str}``; missing keys show as "—".
        low_confidence: True when the case verdict is uncertain.
    """

    case_id: str
    n_images: int
    mean_p_malignant: float
    verdict: str
    rule: str
    per_magnification: list[dict] = field(default_factory=list)
    low_confidence: bool = False

    @classmethod
    def from_case(cls, case: Any) -> "ReportCase":
        """From a ``predict.Case`` (or any object with its attributes)."""
        return cls(
            case_id=case.case_id,
            n_images=len(case.predictions),
            mean_p_malignant=case.p_malignant,
            verdict=case.verdict,
            rule=case.rule,
            per_magnification=list(case.by_magnification),
            low_confidence=case.low_confidence,
        )


def html_report(
    items: Sequence[ReportItem | Mapping],
    case_summaries: Sequence[ReportCase | Mapping],
    model_card_summary: Mapping | None,
    title: str = "BreakHis prediction report",
    generated: datetime | None = None,
    thumb_side: int = THUMB_SIDE,
) -> str:
    """Render a prediction batch as one self-contained HTML page.

    Args:
        items: images, as :class:`ReportItem` or mappings with its fields.
        case_summaries: cases, as :class:`ReportCase` or mappings with its fields.
        model_card_summary: ``{"model_id", "split_protocol", "leaky" (bool, optional),
            "patient_accuracy", "image_accuracy"}`` (accuracies as fractions in [0, 1] or None;
            extra keys are shown too), or None when unknown.
        title: page title.
        generated: time shown as "generated"; default now (UTC).
        thumb_side: longest side of the embedded images, in pixels.

    Returns:
        The HTML document as a string.

    Raises:
        ValueError: when an image is not ``(H, W, 3)`` uint8.
    """
    items = [item if isinstance(item, ReportItem) else ReportItem(**item) for item in items]
    cases = [case if isinstance(case, ReportCase) else ReportCase(**case) for case in case_summaries]
    generated = (generated or datetime.now(timezone.utc)).isoformat(timespec="seconds")
    low = sum(item.low_confidence for item in items)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="notice" role="note">{_e(NOTICE)}</p>',
        f'<p class="meta">Generated {_e(generated)} · {len(items)} image(s) · {len(cases)} case(s)'
        f" · {low} low-confidence</p>",
        _model_section(model_card_summary),
        _case_section(cases),
        '<section><h2>Images</h2>',
        *(_item_html(item, thumb_side) for item in items),
        "" if items else "<p>No images.</p>",
        "</section>",
        f'<p class="notice footer">{_e(NOTICE)}</p>',
        "</body></html>",
    ]
    return "\n".join(part for part in parts if part)


# ----------------------------------------------------------------------------- sections


def _model_section(card: Mapping | None) -> str:
    if not card:
        return '<section><h2>Model</h2><p>No model card available.</p></section>'
    rows = [(label, card[key]) for key, label in CARD_FIELDS.items() if key in card]
    rows += [(key.replace("_", " ").capitalize(), value) for key, value in card.items() if key not in CARD_FIELDS and key != "leaky"]
    table = "".join(f"<tr><th>{_e(label)}</th><td>{_e(_value(value))}</td></tr>" for label, value in rows)
    warning = (
        '<p class="warn">Image-level (leaky) split: images of one patient were in training and test, '
        "so these accuracies are optimistic.</p>" if card.get("leaky") else ""
    )
    return f'<section><h2>Model</h2><table class="kv">{table}</table>{warning}</section>'


def _case_section(cases: list[ReportCase]) -> str:
    if not cases:
        return ""
    rows = []
    for case in cases:
        by_mag = "".join(
            f"<tr><td>{_e(row.get('magnification', '—'))}</td><td>{_e(_value(row.get('images')))}</td>"
            f"<td>{_e(_value(row.get('mean_p_malignant')))}</td><td>{_e(_value(row.get('malignant_images')))}</td>"
            f"<td>{_e(_value(row.get('verdict')))}</td></tr>"
            for row in case.per_magnification
        )
        sub = (
            '<table class="sub"><tr><th>Mag.</th><th>Images</th><th>Mean P(mal.)</th><th>Malignant</th>'
            f"<th>Verdict</th></tr>{by_mag}</table>" if by_mag else "—"
        )
        rows.append(
            f"<tr><td>{_e(case.case_id)}</td><td>{case.n_images}</td><td>{case.mean_p_malignant:.3f}</td>"
            f"<td>{_verdict(case.verdict, case.low_confidence)}</td><td>{_e(case.rule)}</td><td>{sub}</td></tr>"
        )
    return (
        "<section><h2>Cases</h2><table><tr><th>Case</th><th>Images</th><th>Mean P(malignant)</th>"
        f"<th>Verdict</th><th>Rule</th><th>By magnification</th></tr>{''.join(rows)}</table></section>"
    )


def _item_html(item: ReportItem, thumb_side: int) -> str:
    figures = [f'<figure><img src="{_data_uri(item.image, thumb_side)}" alt="{_e(item.name)}"><figcaption>image</figcaption></figure>']
    if item.overlay is not None:
        figures.append(
            f'<figure><img src="{_data_uri(item.overlay, thumb_side)}" alt="heat map of {_e(item.name)}">'
            "<figcaption>heat map overlay</figcaption></figure>"
        )
    magnification = f"{item.magnification}X" if item.magnification else "unknown"
    rows = [
        ("Magnification", f"{magnification} ({item.magnification_source})"),
        ("P(malignant)", f"{item.p_malignant:.3f}"),
        ("Confidence", f"{item.confidence:.3f}"),
    ]
    if item.note:
        rows.append(("Note", item.note))
    table = "".join(f"<tr><th>{label}</th><td>{_e(value)}</td></tr>" for label, value in rows)
    return (
        f'<article class="item"><h3>{_e(item.name)}</h3><div class="figs">{"".join(figures)}</div>'
        f'<div class="facts"><p>{_verdict(item.verdict, item.low_confidence)}</p><table class="kv">{table}</table></div></article>'
    )


# ----------------------------------------------------------------------------- helpers


def _e(value: Any) -> str:
    """HTML-escaped text of ``value`` (quotes included, so it is safe in attributes too)."""
    return html.escape(str(value), quote=True)


def _value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _verdict(verdict: str, low_confidence: bool) -> str:
    kind = "malignant" if verdict == "malignant" else "benign" if verdict == "benign" else "other"
    flag = ' <span class="low">⚠ low confidence</span>' if low_confidence else ""
    return f'<span class="verdict {kind}">{_e(verdict)}</span>{flag}'


def _data_uri(image: np.ndarray, side: int) -> str:
    """A ``data:image/png;base64,…`` URI of ``image`` scaled down to at most ``side`` pixels."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or not image.size:
        raise ValueError(f"report images must be (H, W, 3) uint8 RGB. Received: shape={image.shape}, dtype={image.dtype}")
    height, width = image.shape[:2]
    scale = min(1.0, side / max(height, width))
    thumb = resize(image, (max(1, round(height * scale)), max(1, round(width * scale))))
    ok, png = cv2.imencode(".png", cv2.cvtColor(thumb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:  # pragma: no cover - OpenCV fails only on invalid arrays
        raise ValueError(f"PNG encoding failed for an array of shape {thumb.shape}")
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode("ascii")


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{margin-bottom:.3rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
h3{margin:.2rem 0 .5rem;font-size:1rem;word-break:break-all}
.notice{background:#fff3cd;border:2px solid #c69500;color:#5c4400;font-weight:700;padding:.7rem 1rem;border-radius:6px;font-size:1.1rem}
.meta{color:#555}.warn{color:#8a1c1c;font-weight:600}
table{border-collapse:collapse;margin:.5rem 0}th,td{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f5f5f5}table.kv th{width:14rem}table.sub{font-size:.85rem;margin:0}
.item{border:1px solid #ddd;border-radius:6px;padding:.8rem;margin:1rem 0;display:flex;flex-wrap:wrap;gap:1rem;break-inside:avoid}
.item h3{flex-basis:100%}.figs{display:flex;gap:.5rem}figure{margin:0}figcaption{font-size:.8rem;color:#666;text-align:center}
img{display:block;max-width:100%;border:1px solid #ccc}
.verdict{font-weight:700;padding:.1rem .5rem;border-radius:4px;text-transform:uppercase}
.verdict.malignant{background:#fde2e1;color:#8a1c1c}.verdict.benign{background:#e1f5e4;color:#1d5e2a}.verdict.other{background:#eee}
.low{color:#8a5a00;font-weight:700}
@media print{body{margin:0}.item{page-break-inside:avoid}}
"""
