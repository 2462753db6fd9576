"""The ui package: the data sets the Train page offers, number formatting, the comparison report.

Discovery itself (tests/test_discovery.py), data roots, uploads and zip limits are breakhis_core's
(tests/test_paths.py, tests/test_uploads.py).
"""

from __future__ import annotations

import shutil

from breakhis_core import discovery
from ui import datasets, display, reports

# ----------------------------------------------------------------------------- data sets offered by Train


def test_the_train_page_listing_is_the_library_discovery(tmp_path, sample_dir):
    root = tmp_path / "data"
    shutil.copytree(sample_dir, root / "breakhis")
    (root / "manifest.csv").write_text("path,label\na.png,benign\n")
    assert datasets.discover((str(root),)) == discovery.discover((str(root),))


# ----------------------------------------------------------------------------- formatting


def test_metric_text():
    assert display.metric_text({"value": 0.8734, "ci": [0.801, 0.93]}) == "87.3 % (95 % CI 80.1–93.0 %)"
    assert display.metric_text({"value": None, "ci": None}) == "n/a"
    assert display.percent(None) == "n/a"


# ----------------------------------------------------------------------------- reports


def test_comparison_report_shows_both_models_per_image(sample_files, monkeypatch, tmp_path):
    from types import SimpleNamespace

    import numpy as np

    from breakhis_core.images import read_image

    monkeypatch.setenv("BREAKHIS_LAB_CONFIG", str(tmp_path / "absent.toml"))
    images = [read_image(path) for path in sample_files[:2]]

    def prediction(verdict, p, model_id):
        return SimpleNamespace(name="x", magnification=40, magnification_source="filename", p_malignant=p, verdict=verdict,
                               confidence=max(p, 1 - p), low_confidence=False, low_confidence_reason="", model_id=model_id,
                               route="", input_rule="", heatmap=np.full(images[0].shape[:2], 0.5, np.float32))

    results = {"frozen (stage 1)": [prediction("benign", 0.2, "r:frozen"), prediction("malignant", 0.7, "r:frozen")],
               "fine-tuned (stage 2)": [prediction("benign", 0.1, "r:finetuned"), prediction("benign", 0.4, "r:finetuned")]}
    page = reports.comparison_report(images, ["a.png", "b.png"], results, 0.4)
    assert "BreakHis model comparison" in page and "agree on 1 of 2 image(s)" in page
    for name in ("a.png · frozen (stage 1)", "b.png · fine-tuned (stage 2)"):
        assert name in page
    assert page.count('alt="heat map of') == 4 and "r:frozen" in page and "r:finetuned" in page
