"""The ui package: the data sets the Train page offers, number formatting, the comparison report.

Data roots, uploads and zip limits are breakhis_core's (tests/test_paths.py, tests/test_uploads.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ui import datasets, display, reports

# ----------------------------------------------------------------------------- data sets offered by Train


def test_discover_lists_folders_manifests_folds_and_weights(tmp_path, sample_dir):
    root = tmp_path / "data"
    root.mkdir()
    shutil.copytree(sample_dir, root / "breakhis")
    (root / "linked").symlink_to(sample_dir, target_is_directory=True)  # not followed: it would be refused anyway
    (root / "manifest.csv").write_text("path,label\na.png,benign\n")
    (root / "Folds.csv").write_text("fold,mag,grp,filename\n1,40,train,x.png\n")
    (root / "notes.csv").write_text("a,b\n1,2\n")
    (root / "vgg16.h5").write_bytes(b"")
    (root / "other").mkdir()
    (root / "other" / "photo.png").write_bytes(b"")  # not a BreakHis name: not a data set
    found = datasets.discover((str(root),))
    kinds = {Path(c.path).name: (c.kind, c.images) for c in found}
    assert kinds["manifest.csv"] == ("manifest", 0)
    assert kinds["Folds.csv"] == ("folds", 0)
    assert kinds["vgg16.h5"] == ("weights", 0)
    assert "notes.csv" not in kinds and "other" not in kinds and "linked" not in kinds
    folders = [c for c in found if c.kind == "folder"]
    assert folders[0].label.startswith("data/breakhis (folder, 37")  # the data set itself first, not its root
    assert any(c.path == str(root) and c.images == 37 for c in folders)


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
