"""report.py: the self-contained HTML report (escaping, notice, embedded thumbnails, summaries)."""

from __future__ import annotations

import base64
import re
from datetime import datetime, timezone
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pytest

from breakhis_core.images import decode_image, read_image
from breakhis_core.report import NOTICE, THUMB_SIDE, ReportCase, ReportItem, html_report

EVIL = '<script>alert("x")</script>&.png'


def make_item(name: str, image: np.ndarray, **overrides) -> ReportItem:
    fields = dict(
        name=name, image=image, overlay=None, magnification=40, magnification_source="filename",
        p_malignant=0.91, verdict="malignant", confidence=0.91, low_confidence=False, note="",
    )
    return ReportItem(**{**fields, **overrides})


@pytest.fixture(scope="module")
def page(sample_files) -> str:
    real = read_image(sample_files[0])
    overlay = np.ascontiguousarray(real[:, :, ::-1])
    items = [
        make_item(sample_files[0].name, real, overlay=overlay),
        make_item(EVIL, np.full((30, 40, 3), 200, np.uint8), magnification=None, magnification_source="unknown",
                  p_malignant=0.52, verdict="malignant", confidence=0.52, low_confidence=True,
                  note="P(malignant) within 0.1 of 0.5 <b>"),
        {**make_item("plain dict.png", np.zeros((10, 10, 3), np.uint8)).__dict__, "verdict": "benign"},
    ]
    cases = [
        ReportCase("14-22549AB", 2, 0.715, "malignant", "mean P(malignant) of 2 image(s) = 0.72 >= 0.5 → malignant",
                   [{"magnification": "40X", "images": 2, "mean_p_malignant": 0.715, "malignant_images": 2, "verdict": "malignant"}]),
        {"case_id": "<i>one case</i>", "n_images": 1, "mean_p_malignant": 0.1, "verdict": "benign", "rule": "majority"},
    ]
    card = {"model_id": "20250101-120000-all-patient/finetuned", "split_protocol": "patient", "leaky": False,
            "patient_accuracy": 0.875, "image_accuracy": 0.9012, "notes": "<trained on sample>"}
    return html_report(items, cases, card, title="Batch <1>", generated=datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc))


class _Collector(HTMLParser):
    """Tags, image sources and text of a page."""

    def __init__(self):
        super().__init__()
        self.tags, self.images, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> _Collector:
    collector = _Collector()
    collector.feed(page)
    return collector


def test_notice_title_time_and_names(page, sample_files):
    assert page.count(NOTICE) >= 2 and "not a diagnosis" in page
    assert "<title>Batch &lt;1&gt;</title>" in page
    assert "2025-01-02T03:04:05+00:00" in page
    assert sample_files[0].name in page and "plain dict.png" in page


def test_user_strings_are_escaped(page):
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;.png" in page
    assert "&lt;b&gt;" in page and "&lt;i&gt;one case&lt;/i&gt;" in page and "&lt;trained on sample&gt;" in page
    tags = set(parse(page).tags)
    assert not tags & {"script", "b", "i", "iframe", "object"}


def test_images_are_embedded_small_pngs(page):
    images = parse(page).images
    assert len(images) == 4  # 3 images + 1 overlay
    for attributes in images:
        match = re.fullmatch(r"data:image/png;base64,([A-Za-z0-9+/=]+)", attributes["src"])
        assert match, attributes["src"][:60]
        thumb = decode_image(base64.b64decode(match.group(1)), "thumb.png")
        assert max(thumb.shape[:2]) <= THUMB_SIDE
    real = decode_image(base64.b64decode(images[0]["src"].split(",", 1)[1]), "thumb.png")
    assert real.shape == (168, 256, 3)  # 460×700 scaled, aspect kept
    assert 'alt="&lt;script&gt;' in page
    assert len(page) < 600_000


def test_no_external_resources(page):
    assert "http://" not in page and "https://" not in page
    assert "Content-Security-Policy" in page


def test_per_image_facts_and_flags(page):
    text = " ".join(parse(page).text)
    for expected in ("40X (filename)", "unknown (unknown)", "0.910", "0.520", "low confidence", "benign", "malignant"):
        assert expected in text, expected
    assert text.count("⚠ low confidence") == 1 and "1 low-confidence" in text


def test_case_table_and_model_card(page):
    text = " ".join(parse(page).text)
    for expected in ("14-22549AB", "0.715", "40X", "mean P(malignant) of 2 image(s)", "majority",
                     "20250101-120000-all-patient/finetuned", "patient", "0.875", "0.901",
                     "Patient-level accuracy", "Image-level accuracy"):
        assert expected in text, expected
    assert "leaky" not in text.lower()


def test_leaky_split_is_flagged_and_missing_card_is_said():
    page = html_report([], [], {"model_id": "m", "split_protocol": "image", "leaky": True,
                                "patient_accuracy": None, "image_accuracy": 0.97})
    assert "leaky" in page and "optimistic" in page and "—" in page
    assert "No model card available" in html_report([], [], None)
    assert "No images." in html_report([], [], None)


def test_from_prediction_and_case_adapters():
    prediction = SimpleNamespace(
        name="SOB_B_A-14-22549AB-40-001.png", magnification=40, magnification_source="filename",
        p_malignant=0.2, verdict="benign", confidence=0.8, low_confidence=False, low_confidence_reason="",
    )
    case = SimpleNamespace(case_id="14-22549AB", predictions=[prediction], p_malignant=0.2, verdict="benign",
                           rule="mean", low_confidence=False, by_magnification=[{"magnification": "40X", "images": 1}])
    item = ReportItem.from_prediction(prediction, np.zeros((4, 4, 3), np.uint8))
    summary = ReportCase.from_case(case)
    assert item.verdict == "benign" and item.overlay is None and summary.n_images == 1
    page = html_report([item], [summary], None)
    assert "SOB_B_A-14-22549AB-40-001.png" in page and "14-22549AB" in page


def test_bad_image_is_a_value_error():
    with pytest.raises(ValueError, match="Received: shape="):
        html_report([make_item("grey.png", np.zeros((4, 4), np.uint8))], [], None)
