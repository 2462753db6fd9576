"""report.py: the self-contained HTML report (escaping, notice, embedded thumbnails, summaries)."""

from __future__ import annotations

import base64
import re
from datetime import datetime, timezone
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pytest

from breakhis_core.data.images import decode_image, read_image
from breakhis_core.notice import NOTICE
from breakhis_core.inference.report import THUMB_SIDE, LabProfile, ReportCase, ReportItem, html_report

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
    return html_report(items, cases, card, title="Batch <1>", generated=datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
                       lab=LabProfile())


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
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&amp;.png" in page
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


# ----------------------------------------------------------------------------- lab profile, sections, sign-off, PDF


@pytest.fixture(autouse=True)
def no_lab_profile(monkeypatch, tmp_path):
    """Reports of these tests read no lab.toml unless a test writes one."""
    monkeypatch.setenv("BREAKHIS_LAB_CONFIG", str(tmp_path / "absent-lab.toml"))


def write_lab(folder, text: str, logo: bytes | None = None, logo_name: str = "logo.png"):
    if logo is not None:
        (folder / logo_name).write_bytes(logo)
    path = folder / "lab.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_lab_profile_from_the_environment_is_on_the_report(tmp_path, monkeypatch, sample_files):
    from breakhis_core.data.images import encode_png

    logo = encode_png(np.full((20, 60, 3), (122, 59, 143), np.uint8))
    path = write_lab(tmp_path, 'name = "Pathology <Lab>"\nlogo = "logo.png"\nfooter = "Main St 1 & Co"\n', logo)
    monkeypatch.setenv("BREAKHIS_LAB_CONFIG", str(path))
    page = html_report([make_item("x.png", read_image(sample_files[0]))], [], None)
    text = " ".join(parse(page).text)
    assert "Pathology &lt;Lab&gt;" in page and "Pathology <Lab>" in text and "Main St 1 & Co" in text
    logos = [img for img in parse(page).images if img.get("class") == "logo"]
    assert len(logos) == 1 and base64.b64decode(logos[0]["src"].split(",", 1)[1]) == logo


def test_lab_profile_beside_the_runs_and_its_absence(tmp_path, monkeypatch):
    from breakhis_core.inference.report import lab_config_path, load_lab_profile

    monkeypatch.delenv("BREAKHIS_LAB_CONFIG")
    monkeypatch.setenv("BREAKHIS_RUNS", str(tmp_path))
    assert lab_config_path() == tmp_path / "lab.toml"
    assert load_lab_profile() == LabProfile()
    write_lab(tmp_path, 'name = "Histology"\n')
    assert load_lab_profile() == LabProfile(name="Histology")


@pytest.mark.parametrize("text, logo_name, message", [
    ('name = "unterminated\n', None, "not a readable TOML"),
    ('name = "A"\ncolour = "red"\n', None, "Received: colour"),
    ("name = 3\n", None, "must be text"),
    ('logo = "missing.png"\n', None, "cannot be read"),
    ('logo = "logo.gif"\n', "logo.gif", "PNG, JPEG or SVG"),
])
def test_bad_lab_profile_is_one_clear_error(tmp_path, text, logo_name, message):
    from breakhis_core.errors import ReportError
    from breakhis_core.inference.report import load_lab_profile

    path = write_lab(tmp_path, text, b"GIF89a" if logo_name else None, logo_name or "logo.png")
    with pytest.raises(ReportError, match=message):
        load_lab_profile(path)


def test_signoff_block_and_extra_sections():
    from breakhis_core.inference.report import ReportSection

    page = html_report([], [], None, sections=[ReportSection("Slide <scan>", data={"Tiles": 12, "Tissue <area>": 0.25})])
    text = " ".join(parse(page).text)
    for expected in ("Reviewer sign-off", "Reviewed by (name)", "Signature", "Date", "Pathologist's conclusion"):
        assert expected in text, expected
    assert "Slide <scan>" in text and "Tissue <area>" in text and "0.250" in text and "12" in text
    assert "<scan>" not in page and text.index("Slide <scan>") < text.index("Reviewer sign-off")


def _pdf_tools():
    import shutil

    from breakhis_core.inference.report import pdf_unavailable

    if pdf_unavailable():
        return f"{pdf_unavailable()} (.ci/run installs them)"
    missing = [tool for tool in ("pdftoppm", "pdftotext") if shutil.which(tool) is None]
    return f"{', '.join(missing)} not found: apt-get install poppler-utils (.ci/run does)" if missing else None


def test_pdf_of_a_real_report_shows_the_verdict_and_the_images(sample_files, tmp_path):
    import subprocess

    reason = _pdf_tools()
    if reason:
        pytest.skip(reason)
    from breakhis_core.inference.report import pdf_report

    real = read_image(sample_files[0])
    items = [make_item(sample_files[0].name, real, overlay=np.ascontiguousarray(real[:, :, ::-1]), verdict="benign",
                       p_malignant=0.12, confidence=0.88),
             make_item(EVIL, real, verdict="malignant")]
    page = html_report(items, [ReportCase("14-22549AB", 2, 0.515, "malignant", "mean rule")], {"model_id": "run:finetuned"},
                       lab=LabProfile(name="Example Pathology Lab", footer="Example footer line"))
    pdf = pdf_report(page)
    assert pdf.startswith(b"%PDF-")
    (tmp_path / "report.pdf").write_bytes(pdf)
    text = subprocess.run(["pdftotext", "-layout", str(tmp_path / "report.pdf"), "-"], check=True, capture_output=True,
                          text=True, timeout=60).stdout
    for expected in ("MALIGNANT", "BENIGN", "Example Pathology Lab", "Example footer line", "not a diagnosis",
                     "Reviewer sign-off", sample_files[0].name, '<script>alert("x")</script>&.png'):
        assert expected in text, expected
    subprocess.run(["pdftoppm", "-png", "-r", "40", "-f", "1", "-l", "1", str(tmp_path / "report.pdf"),
                    str(tmp_path / "page")], check=True, timeout=60)
    (png,) = tmp_path.glob("page*.png")
    pixels = decode_image(png.read_bytes(), png.name)
    assert pixels.shape[0] > pixels.shape[1] > 250  # A4 portrait at 40 dpi: 331 × 468
    ink = (pixels.min(axis=2) < 200).mean()
    colourful = (pixels.max(axis=2).astype(int) - pixels.min(axis=2) > 40).mean()  # the H&E thumbnails
    assert ink > 0.03 and colourful > 0.01, (ink, colourful)


def test_pdf_support_leaves_truncated_images_refused(sample_files):
    """Importing WeasyPrint switches Pillow to accepting truncated files; the report module puts that back."""
    from PIL import ImageFile

    from breakhis_core.errors import ImageDecodeError
    from breakhis_core.data.images import encode_png
    from breakhis_core.inference.report import pdf_unavailable

    whole = encode_png(read_image(sample_files[0]))
    pdf_unavailable()  # imports WeasyPrint where it is installed
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(ImageDecodeError):
        decode_image(whole[: len(whole) // 2], "truncated.png")
    assert decode_image(whole, "whole.png").shape == read_image(sample_files[0]).shape
