"""Data roots: the folders a user of the app may train from, and the checks that keep paths inside them.

The app's Train page takes a folder or manifest typed by the user; the path must not reach
anything outside the configured data roots, whichever way it is written:

- ``..`` components and relative paths (taken relative to the first root) are resolved first;
- symbolic links are followed, for the path itself and for every image file a data set names
  (a symlink inside a root pointing elsewhere is refused);
- absolute paths elsewhere are refused, and so are manifest rows pointing outside the roots.

Roots come from ``$BREAKHIS_DATA_ROOTS`` (``os.pathsep``-separated) or default to ``./data`` and
``../shared`` beside the app (the folder holding ``breakhis_core``). The CLI is not confined:
whoever runs it already has the shell.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from .errors import DataPathError

DATA_ROOTS_ENV = "BREAKHIS_DATA_ROOTS"
APP_DIR = Path(__file__).resolve().parents[1]
"""The folder holding the app and the ``breakhis_core`` package."""


def configured_data_roots() -> list[Path]:
    """The data roots as configured (``$BREAKHIS_DATA_ROOTS`` or the defaults), existing or not."""
    value = os.environ.get(DATA_ROOTS_ENV, "").strip()
    if value:
        return [Path(p.strip()).expanduser() for p in value.split(os.pathsep) if p.strip()]
    return [APP_DIR / "data", APP_DIR.parent / "shared"]


def data_roots(configured: Iterable[str | Path] | None = None) -> list[Path]:
    """The existing data roots, resolved (symlinks followed), without duplicates, in configured order."""
    roots: list[Path] = []
    for root in configured_data_roots() if configured is None else configured:
        root = Path(root).expanduser()
        if root.is_dir():
            resolved = root.resolve()
            if resolved not in roots:
                roots.append(resolved)
    return roots


def is_inside(path: str | Path, roots: Iterable[Path]) -> bool:
    """True when the resolved ``path`` is one of ``roots`` or lies below one (roots must be resolved)."""
    resolved = Path(path).resolve()
    return any(resolved == root or resolved.is_relative_to(root) for root in roots)


def inside_data_roots(path: str | Path, roots: Iterable[str | Path] | None = None) -> Path:
    """``path`` resolved (symlinks and ``..`` followed), when it exists inside a data root.

    Args:
        path: absolute, or relative to the first root.
        roots: the data roots (default: :func:`data_roots`); they are resolved here.

    Raises:
        DataPathError: when no root exists, the path does not exist or it lies outside every root.
    """
    roots = data_roots() if roots is None else data_roots(roots)
    text = str(path).strip()
    if not roots:
        raise DataPathError(f"no data folder is configured; set {DATA_ROOTS_ENV} or create ./data. Received: {text}")
    if not text or "\0" in text:
        raise DataPathError(f"a data path is needed. Received: {text!r}")
    candidate = Path(text).expanduser()
    if not candidate.is_absolute():
        candidate = roots[0] / candidate
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        raise DataPathError(f"no such file or folder. Received: {text}") from None
    if not is_inside(resolved, roots):
        raise DataPathError(
            f"only data inside the data folders ({', '.join(str(r) for r in roots)}) can be used. Received: {text}"
        )
    return resolved


def check_dataset(source: str | Path, roots: Iterable[str | Path] | None = None) -> Path:
    """Check a data set (folder tree or manifest CSV) and every file it names against the data roots.

    Returns:
        The resolved source path.

    Raises:
        DataPathError: when the source, or any image it names (through a symlink or a manifest
            row with ``..`` or an absolute path), lies outside the roots.
        DatasetLayoutError: when the source holds no usable image (as ``data.scan``).
    """
    from .data import scan

    roots = data_roots() if roots is None else data_roots(roots)
    resolved = inside_data_roots(source, roots)
    scanned = scan(resolved, verify=False)
    named = [r.path for r in scanned.records] + [r.path for r in scanned.rejected if Path(r.path).exists()]
    outside = [p for p in named if not is_inside(p, roots)]
    if outside:
        raise DataPathError(
            f"{len(outside)} file(s) of this data set lie outside the data folders (through a symbolic link or a "
            f"manifest path), e.g. {outside[0]}; only data inside {', '.join(str(r) for r in roots)} can be used. "
            f"Received: {source}"
        )
    return resolved
