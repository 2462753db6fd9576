"""What can be trained on under the data roots: folders of BreakHis images, manifest CSVs, Folds.csv files, weights.

A CSV is a manifest or a Folds.csv by its header: ``data.MANIFEST_COLUMNS`` and ``data.FOLDS_COLUMNS``, the columns
``data.scan_manifest`` and ``data.split_by_folds`` read (any order and case; other columns allowed). An image
counts when its name parses as a BreakHis name (``data.parse_breakhis_name``). Symbolic links are not followed
and hidden entries are skipped.

>>> discover(())
[]
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from breakhis_core.data.records import FOLDS_COLUMNS, MANIFEST_COLUMNS, csv_column, parse_breakhis_name
from breakhis_core.errors import FilenameError
from breakhis_core.data.images import IMAGE_SUFFIXES

MAX_FILES = 200_000
"""Most files looked at under all the roots together (a bound on the time a listing takes)."""
FOLDER_DEPTH = 2
"""Folders offered as data sets: at most this many levels below a data root."""
KINDS = ("folder", "manifest", "folds", "weights")
"""What a :class:`Candidate` is, in the order the listing shows them."""
WEIGHTS_SUFFIX = ".h5"


@dataclass(frozen=True)
class Candidate:
    """A file or folder under a data root that can be trained on (or with).

    Attributes:
        path: absolute, resolved.
        kind: one of ``KINDS``: "folder" (BreakHis images below it), "manifest" (CSV with
            ``MANIFEST_COLUMNS``), "folds" (CSV with ``FOLDS_COLUMNS``) or "weights" (a ``.h5`` file).
        images: BreakHis-named image files below a folder (0 for files).
        label: what a list shows, e.g. ``shared/breakhis_sample (folder, 37 BreakHis images)``.
        depth: levels below its data root (0 = the root itself; a file at the root has depth 0).
    """

    path: str
    kind: str
    images: int
    label: str
    depth: int = 0


def csv_kind(path: str | Path) -> str | None:
    """The kind of a CSV file by its header (see the module docstring): "manifest", "folds", or None for other
    or unreadable files."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = {csv_column(column) for column in next(csv.reader(handle), [])}
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    if set(MANIFEST_COLUMNS) <= header:
        return "manifest"
    if set(FOLDS_COLUMNS) <= header:
        return "folds"
    return None


def discover(roots: Sequence[str | Path], max_files: int = MAX_FILES, folder_depth: int = FOLDER_DEPTH) -> list[Candidate]:
    """Folders holding BreakHis-named images (up to ``folder_depth`` below a root), manifest and Folds.csv
    files, and ``.h5`` weight files under ``roots``.

    Args:
        roots: the data roots (``paths.data_roots``), absolute.
        max_files: stop looking after this many files (all roots together).
        folder_depth: deepest folder offered, in levels below its root; images deeper down count for it.

    Returns:
        Folders first, then manifests, Folds.csv files and weights (``KINDS``); folders with more images
        first, among equals those one level below a root (the usual place of a data set), then the roots,
        then deeper ones.
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
                elif suffix in (".csv", WEIGHTS_SUFFIX):
                    file = here / name
                    kind = "weights" if suffix == WEIGHTS_SUFFIX else csv_kind(file)
                    if kind:
                        shown = file.relative_to(root).as_posix()
                        found.append(Candidate(str(file), kind, 0, f"{root.name}/{shown} ({kind})", depth))
            if n_images:
                for level in range(min(depth, folder_depth) + 1):
                    ancestor = root.joinpath(*here.relative_to(root).parts[:level])
                    counts[ancestor] = counts.get(ancestor, 0) + n_images
            if seen > max_files:
                break
        for folder, n in sorted(counts.items()):
            shown = root.name if folder == root else f"{root.name}/{folder.relative_to(root).as_posix()}"
            depth = len(folder.relative_to(root).parts)
            found.append(Candidate(str(folder), "folder", n, f"{shown} (folder, {n} BreakHis images)", depth))
    return sorted(found, key=lambda c: (KINDS.index(c.kind), -c.images, c.depth != 1, c.depth, c.label))


def _is_breakhis(name: str) -> bool:
    try:
        parse_breakhis_name(name)
        return True
    except FilenameError:
        return False
