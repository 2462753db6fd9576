"""The ui package: the data sets the Train page offers, and number formatting.

Discovery (tests/test_discovery.py), reports (tests/test_prediction_outputs.py), data roots, uploads and zip
limits are breakhis_core's (tests/test_paths.py, tests/test_uploads.py).
"""

from __future__ import annotations

import shutil

from breakhis_core.data import discovery
from ui import datasets, display

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


def test_the_navigation_lists_only_the_pages_a_role_may_open():
    from ui import frame

    def listed(role):
        return {section: [entry.title for entry in entries] for section, entries in frame.pages_for(role).items()}

    pathology = ["Home", "Diagnose", "Cases", "Slides", "Compare"]
    assert listed("admin") == listed("trainer") == {"Pathology": pathology, "Models": ["Train", "Models"]}
    assert listed("viewer") == listed("pathologist") == {"Pathology": pathology}
    assert listed(None) == {"Pathology": ["Home"]}  # Home says what a user without a role lacks
    scripts = [entry.script for entries in frame.PAGES.values() for entry in entries]
    assert all((frame.APP_DIR / script).is_file() for script in scripts) and frame.HOME in scripts
