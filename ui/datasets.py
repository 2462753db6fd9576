"""The data sets the Train page offers: folders, manifests, Folds.csv files and weight files under the data roots.

Environment (read by ``breakhis_core``): ``BREAKHIS_DATA_ROOTS``, ``os.pathsep``-separated folders the Train page
may read data from (default: ``./data`` and ``../shared`` beside the app; ``paths.data_roots``).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from breakhis_core.data import parse_breakhis_name
from breakhis_core.errors import BreakHisError
from breakhis_core.images import IMAGE_SUFFIXES

DISCOVERY_MAX_FILES = 200_000
"""Most files looked at when listing the data sets under the data roots."""
DISCOVERY_FOLDER_DEPTH = 2
"""Folders offered as data sets: at most this many levels below a data root."""


@dataclass(frozen=True)
class Candidate:
    """A file or folder under a data root that the Train page offers.

    Attributes:
        path: absolute, resolved.
        kind: "folder" (images below it), "manifest" (CSV with path,label), "folds" (Folds.csv)
            or "weights" (a ``.h5`` file).
        images: BreakHis-named image files below a folder (0 for files).
        label: what the select box shows, e.g. ``shared/breakhis_sample (folder, 37 images)``.
        depth: levels below its data root (0 = the root itself).
    """

    path: str
    kind: str
    images: int
    label: str
    depth: int = 0


def _is_breakhis(name: str) -> bool:
    try:
        parse_breakhis_name(name)
        return True
    except BreakHisError:
        return False


def _csv_kind(path: Path) -> str | None:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = {c.strip().lower() for c in next(csv.reader(handle), [])}
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    if {"path", "label"} <= header:
        return "manifest"
    if {"fold", "grp", "filename"} <= header:
        return "folds"
    return None


@st.cache_data(ttl=30, show_spinner="Looking for data sets…")
def discover(roots: tuple[str, ...]) -> list[Candidate]:
    """Folders holding BreakHis-named images (up to ``DISCOVERY_FOLDER_DEPTH`` below a root), manifest
    and Folds.csv files, and ``.h5`` weight files under the data roots; hidden entries skipped.

    Folders with more images come first; among equals, those one level below a root (the usual place
    of a data set), then the roots, then deeper ones.
    """
    found: list[Candidate] = []
    seen = 0
    for root_text in roots:
        root = Path(root_text)
        counts: dict[Path, int] = {}
        for folder, dirs, files in os.walk(root, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            here = Path(folder)
            depth = len(here.relative_to(root).parts)
            n_images = 0
            for name in sorted(files):
                seen += 1
                if name.startswith("."):
                    continue
                suffix = Path(name).suffix.lower()
                if suffix in IMAGE_SUFFIXES:
                    n_images += _is_breakhis(name)
                elif suffix in (".csv", ".h5"):
                    file = here / name
                    kind = "weights" if suffix == ".h5" else _csv_kind(file)
                    if kind:
                        found.append(Candidate(str(file), kind, 0, f"{root.name}/{file.relative_to(root).as_posix()} ({kind})",
                                               len(file.relative_to(root).parts) - 1))
            if n_images:
                for level in range(min(depth, DISCOVERY_FOLDER_DEPTH) + 1):
                    ancestor = root.joinpath(*here.relative_to(root).parts[:level])
                    counts[ancestor] = counts.get(ancestor, 0) + n_images
            if seen > DISCOVERY_MAX_FILES:
                break
        for folder, n in sorted(counts.items()):
            shown = root.name if folder == root else f"{root.name}/{folder.relative_to(root).as_posix()}"
            depth = len(folder.relative_to(root).parts)
            found.append(Candidate(str(folder), "folder", n, f"{shown} (folder, {n} BreakHis images)", depth))
    order = {"folder": 0, "manifest": 1, "folds": 2, "weights": 3}
    return sorted(found, key=lambda c: (order[c.kind], -c.images, c.depth != 1, c.depth, c.label))
