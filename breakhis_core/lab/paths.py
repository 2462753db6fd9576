"""Where the app keeps its files (the app home) and the data roots: the folders a user of the app may train from,
with the checks that keep paths inside them.

The app home is ``$BREAKHIS_HOME``, else the user's own data folder (``platformdirs``: ``~/.local/share/breakhis``
on Linux, ``~/Library/Application Support/breakhis`` on macOS, ``%LOCALAPPDATA%\\breakhis`` on Windows), never the
installed package's folder. It holds ``HOME_FOLDERS``: ``data/`` (the first data root), ``runs/`` (runs and
models, and the case store in ``runs/cases/``, unless ``$BREAKHIS_RUNS`` names another folder) and ``logs/``. :func:`ensure_app_home` creates
them and checks they can be written, at the start of the app and of the CLI.

The app's Train page takes a folder or manifest typed by the user; the path must not reach
anything outside the configured data roots, whichever way it is written:

- ``..`` components and relative paths (taken relative to the first root) are resolved first;
- symbolic links are followed, for the path itself and for every image file a data set names
  (a symlink inside a root pointing elsewhere is refused);
- absolute paths elsewhere are refused, and so are manifest rows pointing outside the roots.

Roots come from ``$BREAKHIS_DATA_ROOTS`` (``os.pathsep``-separated) or default to the app home's ``data/``, the
product's sample (``samples.sample_root``) and, in a source checkout only, ``../shared`` beside it. The CLI is not
confined: whoever runs it already has the shell.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

import platformdirs

from breakhis_core.errors import ConfigError, DataPathError
from breakhis_core.data.samples import sample_root

HOME_ENV = "BREAKHIS_HOME"
RUNS_ENV = "BREAKHIS_RUNS"
"""The runs folder, when not the app home's ``runs/``."""
DATA_ROOTS_ENV = "BREAKHIS_DATA_ROOTS"
APP_NAME = "breakhis"
"""The folder name of the app home under the user's data folder."""
HOME_FOLDERS = ("data", "runs", "logs")
"""The folders of the app home."""
SOURCE_DIR = Path(__file__).resolve().parents[2]
"""The folder holding the ``breakhis_core`` package: a source checkout, or site-packages once installed."""


def app_home() -> Path:
    """The app home: ``$BREAKHIS_HOME``, else the user's data folder for the app (not created here)."""
    value = os.environ.get(HOME_ENV, "").strip()
    return Path(value).expanduser() if value else platformdirs.user_data_path(APP_NAME, appauthor=False)


def home_folder(name: str) -> Path:
    """One of ``HOME_FOLDERS`` in the app home (not created here)."""
    if name not in HOME_FOLDERS:
        raise ValueError(f"the app home holds {', '.join(HOME_FOLDERS)}. Received: name={name!r}")
    return app_home() / name


def ensure_app_home() -> Path:
    """Create the app home and its folders when missing and check that files can be written there.

    Returns:
        The app home.

    Raises:
        ConfigError: naming the folder, when it cannot be created or written.
    """
    home = app_home()
    named = f"{HOME_ENV}={os.environ[HOME_ENV]}" if os.environ.get(HOME_ENV, "").strip() else "the app's folder"
    try:
        for name in HOME_FOLDERS:
            (home / name).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=home):
            pass
    except OSError as exc:
        raise ConfigError(
            f"the app cannot write to {named} ({exc.strerror or exc}); set {HOME_ENV} to a folder you may write to. "
            f"Received: {home}"
        ) from None
    return home


def in_source_checkout() -> bool:
    """True when the code runs from a source checkout (``pyproject.toml`` beside ``breakhis_core``), not installed."""
    return (SOURCE_DIR / "pyproject.toml").is_file()


def configured_data_roots() -> list[Path]:
    """The data roots as configured (``$BREAKHIS_DATA_ROOTS`` or the defaults), existing or not."""
    value = os.environ.get(DATA_ROOTS_ENV, "").strip()
    if value:
        return [Path(p.strip()).expanduser() for p in value.split(os.pathsep) if p.strip()]
    roots = [home_folder("data"), sample_root()]
    return roots + [SOURCE_DIR.parent / "shared"] if in_source_checkout() else roots


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
        raise DataPathError(f"no data folder is configured; set {DATA_ROOTS_ENV} or create {home_folder('data')}. "
                            f"Received: {text}")
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
    from breakhis_core.data.records import scan

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


def runs_dir(path: str | Path | None = None) -> Path:
    """The runs folder: ``path``, else ``$BREAKHIS_RUNS``, else ``runs/`` in the app home (:func:`app_home`;
    not created here)."""
    return Path(path or os.environ.get(RUNS_ENV) or home_folder("runs")).expanduser()
