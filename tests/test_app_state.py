"""app_state: the data sets the Train page offers, and number formatting.

Data roots, uploads and zip limits are breakhis_core's (tests/test_paths.py, tests/test_uploads.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import app_state

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
    found = app_state.discover((str(root),))
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
    assert app_state.metric_text({"value": 0.8734, "ci": [0.801, 0.93]}) == "87.3 % (95 % CI 80.1–93.0 %)"
    assert app_state.metric_text({"value": None, "ci": None}) == "n/a"
    assert app_state.percent(None) == "n/a"
