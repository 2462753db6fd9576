"""Where the case store lives on disk: one folder beside the runs, ``<runs folder>/cases/``::

    cases/
      cases.db                   the embedded SQLite database (unless $BREAKHIS_DATABASE_URL names another)
      cases.db-wal, cases.db-shm SQLite's write-ahead log while the database is open
      images/<ab>/<sha256>.<ext> image files of cases, once each (``imagefiles``)
      datasets/<name>.csv        reviewed cases exported as labelled manifests (``dataset``)

The folder holds no run file (config.json, run.json, status.json), so the registry never lists it as a run.
"""

from __future__ import annotations

from pathlib import Path

CASES_DIR = "cases"
DATABASE_FILE = "cases.db"
IMAGES_DIR = "images"
DATASETS_DIR = "datasets"


def cases_dir(runs_root: str | Path | None = None) -> Path:
    """``<runs folder>/cases`` (``paths.runs_dir``)."""
    from breakhis_core.lab.paths import runs_dir

    return runs_dir(runs_root) / CASES_DIR


def images_dir(runs_root: str | Path | None = None) -> Path:
    """``<runs folder>/cases/images``."""
    return cases_dir(runs_root) / IMAGES_DIR


def datasets_dir(runs_root: str | Path | None = None) -> Path:
    """``<runs folder>/cases/datasets``."""
    return cases_dir(runs_root) / DATASETS_DIR
