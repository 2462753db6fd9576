"""The report of a prediction batch: one self-contained HTML page, and the same page as a PDF.

The page is rendered from the jinja2 templates in ``templates/`` (autoescaped: file names, notes,
rules, ids and the lab's texts are HTML-escaped), with no external resources: inline CSS, images as
base64 PNG data URIs (thumbnails at most ``THUMB_SIDE`` pixels), no scripts, and a
Content-Security-Policy that forbids them. It carries the lab's name, logo and footer
(:class:`LabProfile`, read from ``lab.toml``) and a reviewer sign-off block. ``pdf_report`` turns
the page into A4 pages with WeasyPrint (the ``pdf`` extra), fetching nothing but data URIs.

Inputs are plain data, independent of ``predict.py``: :class:`ReportItem` per image and
:class:`ReportCase` per case (or mappings with the same keys); ``from_prediction`` and
``from_case`` build them from ``predict.Prediction`` / ``predict.Case``-like objects. Further
sections are :class:`ReportSection` objects naming a template of ``templates/``.

The lab profile is a TOML file: ``$BREAKHIS_LAB_CONFIG``, else ``lab.toml`` in the runs folder
(beside ``audit.jsonl``)::

    name = "Department of Pathology, Example Hospital"
    logo = "logo.png"              # PNG, JPEG or SVG; relative to this file; at most 1 MB
    footer = "Example Hospital · Histopathology · +1 555 0100"

>>> page = html_report([], [], None, lab=LabProfile())
>>> "not a diagnosis" in page
True
"""

from __future__ import annotations

import logging
import os
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import jinja2
import numpy as np

from breakhis_core import CLASS_NAMES
from breakhis_core.task import TUMOUR_TYPES
from breakhis_core.config import DEFAULT_THRESHOLD
from breakhis_core.errors import ReportError
from breakhis_core.notice import NOTICE
from breakhis_core.data.images import data_uri, resize

log = logging.getLogger(__name__)

THUMB_SIDE = 256
"""Longest side of the embedded thumbnails, in pixels."""

CARD_FIELDS = {
    "model_id": "Model",
    "learning_check": "Learning check",
    "split_protocol": "Split protocol",
    "patient_accuracy": "Patient-level accuracy (test)",
    "image_accuracy": "Image-level accuracy (test)",
}
"""Documented keys of ``model_card_summary`` and their labels; other keys are shown after them (but ``leaky`` and
``warnings``, which are drawn as warnings)."""
LAB_CONFIG_ENV = "BREAKHIS_LAB_CONFIG"
LAB_CONFIG_NAME = "lab.toml"
LOGO_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
LOGO_MAX_BYTES = 1_000_000
TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


@dataclass(frozen=True)
class LabProfile:
    """What a lab puts on its reports.

    Attributes:
        name: the lab's name shown at the top ("" = none).
        logo_uri: the logo as a ``data:`` URI (PNG, JPEG or SVG), or None.
        footer: text at the foot of the report (and of every PDF page), e.g. address and phone ("" = none).
    """

    name: str = ""
    logo_uri: str | None = None
    footer: str = ""


def lab_config_path(runs_root: str | Path | None = None) -> Path:
    """Where the lab profile is read from: ``$BREAKHIS_LAB_CONFIG``, else ``<runs folder>/lab.toml``."""
    if os.environ.get(LAB_CONFIG_ENV):
        return Path(os.environ[LAB_CONFIG_ENV]).expanduser()
    from breakhis_core.lab.paths import runs_dir

    return runs_dir(runs_root) / LAB_CONFIG_NAME


def load_lab_profile(path: str | Path | None = None, runs_root: str | Path | None = None) -> LabProfile:
    """The lab profile of ``path`` (default :func:`lab_config_path`); an empty one when the file does not exist.

    Raises:
        ReportError: for a file that is not TOML, unknown keys, non-text values, or a logo that is
            missing, too large or not PNG/JPEG/SVG.
    """
    path = Path(path) if path is not None else lab_config_path(runs_root)
    if not path.is_file():
        return LabProfile()
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ReportError(f"the lab profile is not a readable TOML file ({exc}). Received: {path}") from None
    unknown = sorted(set(values) - {"name", "logo", "footer"})
    if unknown:
        raise ReportError(f"the lab profile knows the keys name, logo and footer only. Received: {', '.join(unknown)} in {path}")
    if not all(isinstance(values.get(key, ""), str) for key in ("name", "logo", "footer")):
        raise ReportError(f"name, logo and footer of the lab profile must be text. Received: {path}")
    logo_uri = None
    if values.get("logo"):
        logo = (path.parent / values["logo"]).expanduser()
        kind = LOGO_TYPES.get(logo.suffix.lower())
        if kind is None:
            raise ReportError(f"the lab logo must be a PNG, JPEG or SVG file. Received: logo={values['logo']}")
        try:
            data = logo.read_bytes()
        except OSError as exc:
            raise ReportError(f"the lab logo cannot be read ({exc.strerror}). Received: logo={logo}") from None
        if len(data) > LOGO_MAX_BYTES:
            raise ReportError(f"the lab logo is larger than {LOGO_MAX_BYTES // 1_000_000} MB. Received: {len(data)} bytes")
        logo_uri = data_uri(data, kind)
    return LabProfile(values.get("name", "").strip(), logo_uri, values.get("footer", "").strip())


@dataclass(frozen=True)
class ReportSection:
    """A further section of the report, drawn after the cases.

    Attributes:
        title: its heading.
        template: file name of its template in ``breakhis_core/templates/`` (it sees ``section.data``);
            ``_table.html.j2`` shows ``data`` as a label → value table.
        data: what the template shows.
    """

    title: str
    template: str = "_table.html.j2"
    data: Mapping = field(default_factory=dict)


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
        heatmap_label: what the overlay shows, e.g. "Grad-CAM: evidence for “malignant”" ("" = "heat map overlay").
        tumour_type: a subtype model's most probable tumour type and its probability, e.g. "ductal carcinoma (DC)
            62 %" (``Prediction.top_type_text``); "" for a malignancy model.
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
    heatmap_label: str = ""
    tumour_type: str = ""

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
            heatmap_label=_heatmap_label(prediction) if overlay is not None else "",
            tumour_type=getattr(prediction, "top_type_text", None) or "",
        )


def _heatmap_label(prediction: Any) -> str:
    """ "gradcam: evidence for “malignant”" for a prediction with a heat map of a known class, else "heat map"."""
    method, explained = getattr(prediction, "cam_method", None), getattr(prediction, "cam_class", None)
    if explained is None:
        return "heat map overlay"
    cam_type = getattr(prediction, "cam_type", None)
    if cam_type:
        return f"{method or 'heat map'}: evidence for “{TUMOUR_TYPES[cam_type][0]} ({cam_type})”"
    return f"{method or 'heat map'}: evidence for “{CLASS_NAMES[explained]}”"


def _operating_point(prediction: Any) -> str:
    """The model's decision threshold and temperature when they are not the defaults (0.5, 1), else ""."""
    threshold, temperature = getattr(prediction, "threshold", DEFAULT_THRESHOLD), getattr(prediction, "temperature", 1.0)
    if threshold == DEFAULT_THRESHOLD and temperature == 1.0:
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
    lab: LabProfile | None = None,
    sections: Sequence[ReportSection] = (),
    signoff: Mapping[str, str] | None = None,
    legend: tuple[np.ndarray, str] | None = None,
) -> str:
    """Render a prediction batch as one self-contained HTML page.

    Args:
        items: images, as :class:`ReportItem` or mappings with its fields.
        case_summaries: cases, as :class:`ReportCase` or mappings with its fields.
        model_card_summary: ``{"model_id", "learning_check", "split_protocol", "leaky" (bool, optional),
            "patient_accuracy", "image_accuracy", "warnings" (list of sentences, optional)}`` (accuracies as
            fractions in [0, 1] or None; extra keys are shown too), or None when unknown.
        title: page title.
        generated: time shown as "generated"; default now (UTC).
        thumb_side: longest side of the embedded images, in pixels.
        lab: the lab's name, logo and footer; default :func:`load_lab_profile`.
        sections: further sections, drawn after the cases.
        signoff: the stored review and sign-off (label → text, e.g. a case from ``cases.report``); default a
            blank block to fill in by hand.
        legend: the heat maps' colour scale, ``((h, w, 3)`` uint8 RGB bar, what its colours mean), drawn above the
            images when some have an overlay; None: no legend.

    Returns:
        The HTML document as a string.

    Raises:
        ValueError: when an image is not ``(H, W, 3)`` uint8.
        ReportError: when the lab profile cannot be read.
    """
    items = [item if isinstance(item, ReportItem) else ReportItem(**item) for item in items]
    cases = [case if isinstance(case, ReportCase) else ReportCase(**case) for case in case_summaries]
    card = model_card_summary or {}
    model_rows = [(label, card[key]) for key, label in CARD_FIELDS.items() if key in card]
    model_rows += [(key.replace("_", " ").capitalize(), value) for key, value in card.items()
                   if key not in CARD_FIELDS and key not in ("leaky", "warnings")]
    return _environment().get_template("report.html.j2").render(
        title=title,
        notice=NOTICE,
        lab=lab if lab is not None else load_lab_profile(),
        generated=(generated or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
        items=items,
        cases=cases,
        low_confidence=sum(item.low_confidence for item in items),
        model_rows=model_rows,
        leaky=bool(card.get("leaky")),
        warnings=list(card.get("warnings") or ()),
        sections=list(sections),
        thumb_side=thumb_side,
        signoff=dict(signoff or {}),
        legend=legend if any(item.overlay is not None for item in items) else None,
    )


def _weasyprint():
    """Import WeasyPrint without its side effect on Pillow.

    WeasyPrint sets Pillow's process-wide ``ImageFile.LOAD_TRUNCATED_IMAGES = True`` when imported; left so,
    every truncated upload would then decode silently (half grey) instead of being refused by
    ``images.decode_image``. The flag is put back as it was.
    """
    from PIL import ImageFile

    before = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        import weasyprint
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before
    return weasyprint


def pdf_unavailable() -> str | None:
    """Why PDF reports cannot be made here (one line), or None when WeasyPrint and Pango are usable."""
    try:
        _weasyprint()
    except (ImportError, OSError) as exc:  # OSError: WeasyPrint is installed but Pango is not
        return ("PDF reports need WeasyPrint and the Pango libraries: pip install 'breakhis[pdf]' "
                f"(Debian: apt-get install libpango-1.0-0 libpangoft2-1.0-0). Received: {type(exc).__name__}: {exc}")
    return None


def pdf_report(page: str) -> bytes:
    """The report page (from :func:`html_report`) as a PDF: A4 pages, footer and page numbers on each.

    Only ``data:`` URIs are fetched (the page has no other resources).

    Raises:
        ReportError: when WeasyPrint or its Pango system libraries are not installed (:func:`pdf_unavailable`).
    """
    reason = pdf_unavailable()
    if reason:
        raise ReportError(reason)
    weasyprint = _weasyprint()
    fetcher = weasyprint.URLFetcher(allowed_protocols={"data"})  # a report never reaches the network or the disk
    pdf = weasyprint.HTML(string=page, url_fetcher=fetcher).write_pdf()
    log.info("PDF report rendered: %d bytes", len(pdf))
    return pdf


# ----------------------------------------------------------------------------- helpers


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    """The template environment: autoescaping on for every template, undefined names are errors."""
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                     undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    environment.filters["show"] = _value
    environment.filters["data_uri"] = _data_uri
    return environment


def _value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


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
    return data_uri(png.tobytes(), "image/png")
