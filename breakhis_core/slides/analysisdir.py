"""The slide-analysis folder: the names of its files and their paths.

One analysis (``slides/jobs.py``) is one folder ``<runs>/slides/<slide stem>-<key>/``; ``docs/ARCHITECTURE.md``
("Run directory", the slide-analysis block) describes every file, and this module is the one definition of their
names (a test checks that the two agree). Its status, progress and cancel files are named as a run's
(``rundir.py``); the outputs (:data:`OUTPUT_FILES`) are written by ``slides/export.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from breakhis_core.runs.rundir import CANCEL_FILE, PROGRESS_FILE, STATUS_FILE

REQUEST_FILE = "request.json"
"""``{"slide", "model", "magnification", "mpp", "tissue_threshold", "runs_root", "created"}``."""
JOB_LOG_FILE = "job.log"
"""The analysis process's stdout and stderr."""
TILES_CSV_FILE = "tiles.csv"
"""One row per tissue tile: ``slides.export.TILE_COLUMNS`` (level-0 pixels)."""
TILES_GEOJSON_FILE = "tiles.geojson"
"""The tiles as a GeoJSON FeatureCollection (QuPath's object shape)."""
HEATMAP_FILE = "heatmap.png"
"""The P(malignant) grid coloured, RGBA at thumbnail size."""
THUMBNAIL_FILE = "thumbnail.png"
TISSUE_MASK_FILE = "tissue_mask.png"
"""White = tissue, at thumbnail size."""
SUMMARY_FILE = "summary.json"
"""``SlideResult.summary()``; written last, so its presence marks a complete analysis."""
OUTPUT_FILES = (TILES_CSV_FILE, TILES_GEOJSON_FILE, HEATMAP_FILE, THUMBNAIL_FILE, TISSUE_MASK_FILE, SUMMARY_FILE)
"""What an analysis writes (``slides.export.write_slide_outputs``), summary.json last."""
SHARED_WITH_RUNS = (STATUS_FILE, PROGRESS_FILE, CANCEL_FILE)
"""Files an analysis holds under a run's names."""


@dataclass(frozen=True)
class SlideAnalysisDir:
    """A slide-analysis folder (it need not exist yet): the paths of its files.

    Attributes:
        path: the analysis folder.
    """

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    def is_analysis(self) -> bool:
        """True when the folder holds ``request.json``."""
        return self.request_file.is_file()

    @property
    def request_file(self) -> Path:
        return self.path / REQUEST_FILE

    @property
    def status_file(self) -> Path:
        return self.path / STATUS_FILE

    @property
    def progress_file(self) -> Path:
        return self.path / PROGRESS_FILE

    @property
    def cancel_file(self) -> Path:
        return self.path / CANCEL_FILE

    @property
    def job_log(self) -> Path:
        return self.path / JOB_LOG_FILE

    @property
    def tiles_csv(self) -> Path:
        return self.path / TILES_CSV_FILE

    @property
    def tiles_geojson(self) -> Path:
        return self.path / TILES_GEOJSON_FILE

    @property
    def heatmap(self) -> Path:
        return self.path / HEATMAP_FILE

    @property
    def thumbnail(self) -> Path:
        return self.path / THUMBNAIL_FILE

    @property
    def tissue_mask(self) -> Path:
        return self.path / TISSUE_MASK_FILE

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY_FILE
