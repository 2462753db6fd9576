"""BreakHis images as records: file-name parsing, folder and manifest scanning, magnification filter.

BreakHis names encode everything a split needs::

    SOB_B_A-14-22549AB-40-001.png
    |   | |  |         |  └ sequence number
    |   | |  |         └ magnification (40, 100, 200, 400)
    |   | |  └ slide id "14-22549AB" (the official "patient"; case number "14-22549")
    |   | └ tumour type (A, F, PT, TA benign; DC, LC, MC, PC malignant)
    |   └ class (B benign, M malignant)
    └ biopsy procedure (SOB)

Labels are ints: 0 = benign, 1 = malignant (``breakhis_core.CLASS_NAMES``).
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from breakhis_core import CLASS_NAMES
from breakhis_core.data.images import FORMATS, IMAGE_SUFFIXES, MAX_FILE_BYTES, MAX_PIXELS, display_name
from breakhis_core.errors import DatasetLayoutError, FilenameError, ImageDecodeError
from breakhis_core.task import TUMOUR_TYPES, TYPE_COLUMNS

_NAME = re.compile(
    r"^(?P<procedure>[A-Z]+)_(?P<cls>[BM])_(?P<type>[A-Z]+)-(?P<slide>\d+-[0-9A-Za-z]+)"
    r"-(?P<mag>\d+)-(?P<seq>\d+)$"
)
MANIFEST_COLUMNS = ("path", "label")
"""Columns a manifest CSV must have (any order and case); ``patient``, ``magnification`` and the tumour type
(``task.TYPE_COLUMNS``: ``tumour_type`` or ``type``, needed by the subtype task) are optional."""
FOLDS_COLUMNS = ("fold", "grp", "filename")
"""Columns of the official BreakHis ``Folds.csv`` a split reads (the file also has ``mag``)."""


@dataclass(frozen=True)
class ImageRecord:
    """One image of a data set.

    Attributes:
        path: absolute file path.
        label: 0 benign, 1 malignant.
        patient: slide id for BreakHis ("14-22549AB"), the manifest's patient, or the file stem.
        magnification: 40/100/200/400, or None when unknown.
        tumour_type: BreakHis code (A, F, PT, TA, DC, LC, MC, PC) or None.
        sequence: image number within slide and magnification, or None.
    """

    path: str
    label: int
    patient: str
    magnification: int | None = None
    tumour_type: str | None = None
    sequence: int | None = None

    @property
    def case(self) -> str:
        """Numeric case number: "14-22549AB" and "14-22549CD" → "14-22549" (several slides, one case)."""
        match = re.match(r"^\d+-\d+", self.patient)
        return match.group(0) if match else self.patient

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.label]

    def group(self, group_by: str) -> str:
        """The split group key: the slide id ("slide") or the case number ("case")."""
        return self.case if group_by == "case" else self.patient


@dataclass(frozen=True)
class Rejected:
    """A file that was not used, and why."""

    path: str
    reason: str


@dataclass
class ScanResult:
    """What a folder or manifest holds: usable images and rejected files with reasons."""

    source: str
    kind: str  # "breakhis-tree" or "manifest"
    records: list[ImageRecord]
    rejected: list[Rejected] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """Counts for display: images, patients, class × magnification, tumour types, rejected files."""
        by_class_mag: dict[str, dict[str, int]] = {name: {} for name in CLASS_NAMES}
        for record in self.records:
            key = str(record.magnification) if record.magnification else "unknown"
            row = by_class_mag[record.class_name]
            row[key] = row.get(key, 0) + 1
        return {
            "source": self.source,
            "kind": self.kind,
            "images": len(self.records),
            "patients": len({r.patient for r in self.records}),
            "cases": len({r.case for r in self.records}),
            "classes": dict(Counter(r.class_name for r in self.records)),
            "magnifications": sorted({r.magnification for r in self.records if r.magnification}),
            "by_class_and_magnification": by_class_mag,
            "tumour_types": {
                f"{code} ({TUMOUR_TYPES[code][0]})": n
                for code, n in sorted(Counter(r.tumour_type for r in self.records if r.tumour_type).items())
            },
            "rejected": [{"path": r.path, "reason": r.reason} for r in self.rejected],
            "notes": list(self.notes),
        }


def parse_breakhis_name(name: str) -> dict:
    """Parse a BreakHis file name into its fields.

    Returns:
        dict with label (0/1), tumour_type (code), slide (str), magnification (int), sequence (int).

    Raises:
        FilenameError: when the name does not follow ``SOB_<B|M>_<T>-<slide>-<mag>-<seq>.<ext>``.
    """
    stem = Path(name).stem
    match = _NAME.match(stem)
    if not match:
        raise FilenameError(
            f"not a BreakHis name (expected like SOB_B_A-14-22549AB-40-001.png). Received: {Path(name).name}"
        )
    tumour = match["type"]
    if tumour not in TUMOUR_TYPES:
        raise FilenameError(f"unknown tumour type {tumour!r} (known: {', '.join(TUMOUR_TYPES)}). Received: {Path(name).name}")
    label = 0 if match["cls"] == "B" else 1
    if TUMOUR_TYPES[tumour][1] != label:
        raise FilenameError(f"class {match['cls']} contradicts tumour type {tumour}. Received: {Path(name).name}")
    magnification = int(match["mag"])
    if magnification not in (40, 100, 200, 400):
        raise FilenameError(f"magnification must be 40, 100, 200 or 400. Received: magnification={magnification}")
    return {
        "label": label,
        "tumour_type": tumour,
        "slide": match["slide"],
        "magnification": magnification,
        "sequence": int(match["seq"]),
    }


def record_from_path(path: str | Path) -> ImageRecord:
    """An ImageRecord from a BreakHis-named file; raises FilenameError otherwise."""
    fields = parse_breakhis_name(Path(path).name)
    return ImageRecord(
        path=str(Path(path).resolve()),
        label=fields["label"],
        patient=fields["slide"],
        magnification=fields["magnification"],
        tumour_type=fields["tumour_type"],
        sequence=fields["sequence"],
    )


def check_image_header(path: str | Path) -> None:
    """Cheap integrity check (format, size limits, PNG chunk CRCs) without decoding pixels.

    Raises:
        ImageDecodeError: with the reason.
    """
    path = Path(path)
    name = display_name(path.name)
    try:
        size = path.stat().st_size
        if size == 0:
            raise ImageDecodeError(f"{name}: empty file (0 bytes)")
        if size > MAX_FILE_BYTES:
            raise ImageDecodeError(f"{name}: file too large ({size / 2**20:.0f} MiB)")
        with Image.open(path, formats=FORMATS) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageDecodeError(f"{name}: image too large ({width}×{height})")
            image.verify()
    except ImageDecodeError:
        raise
    except Exception as exc:  # PIL raises many types for broken files
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise ImageDecodeError(f"{name}: unreadable image ({type(exc).__name__}: {reason[:120]})") from None


def scan(source: str | Path, verify: bool = True) -> ScanResult:
    """Scan a BreakHis-style folder tree or a manifest CSV.

    A folder is searched recursively for image files (``IMAGE_SUFFIXES``) whose names follow
    the BreakHis convention; any layout works, the official ``BreaKHis_v1/histology_slides/breast``
    tree included. A ``.csv`` file is read as a manifest (see :func:`scan_manifest`).
    Files that do not parse or (with ``verify``) do not pass a header check are listed in
    ``rejected`` with the reason; they never stop the scan.

    Raises:
        DatasetLayoutError: when the source does not exist or holds no usable image.
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise DatasetLayoutError(f"data source does not exist. Received: {source}")
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise DatasetLayoutError(f"a data source is a folder or a manifest .csv file. Received: {source}")
        return scan_manifest(source, verify=verify)
    records, rejected = [], []
    files = sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith("."))
    for path in files:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            record = record_from_path(path)
            if verify:
                check_image_header(path)
        except (FilenameError, ImageDecodeError) as exc:
            rejected.append(Rejected(str(path), str(exc)))
            continue
        records.append(record)
    if not records:
        detail = f"; {len(rejected)} files rejected, first: {rejected[0].reason}" if rejected else ""
        raise DatasetLayoutError(f"no usable BreakHis images found in {source}{detail}")
    return ScanResult(str(source), "breakhis-tree", records, rejected)


def _parse_label(value: str) -> int:
    text = value.strip().lower()
    if text in ("0", "b", "benign", "negative", "idc-negative"):
        return 0
    if text in ("1", "m", "malignant", "positive", "idc-positive"):
        return 1
    raise ValueError(f"label must be benign/malignant (or 0/1, B/M). Received: label={value!r}")


def _parse_tumour_type(row: dict[str, str], label: int) -> str | None:
    """The tumour-type code of a manifest row (first of ``TYPE_COLUMNS`` present and filled), or None."""
    value = next((row[column] for column in TYPE_COLUMNS if row.get(column)), "")
    if not value:
        return None
    code = value.upper()
    if code not in TUMOUR_TYPES:
        raise ValueError(f"unknown tumour type (known: {', '.join(TUMOUR_TYPES)}). Received: tumour_type={value!r}")
    if TUMOUR_TYPES[code][1] != label:
        raise ValueError(f"tumour type {code} ({TUMOUR_TYPES[code][0]}) contradicts label {CLASS_NAMES[label]}")
    return code


def csv_column(name: str) -> str:
    """A CSV header cell as the manifest and ``Folds.csv`` readers (and discovery) compare it: stripped, lower-cased."""
    return name.strip().lower()


def read_csv_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV with a header (a UTF-8 byte-order mark allowed), keyed by :func:`csv_column`, values stripped.

    Raises:
        OSError, UnicodeDecodeError, csv.Error: when the file cannot be read as CSV.
    """
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return [{csv_column(key): (value or "").strip() for key, value in row.items() if key}
                for row in csv.DictReader(handle)]


def scan_manifest(path: str | Path, verify: bool = True) -> ScanResult:
    """Read a manifest CSV with columns ``path,label[,patient][,magnification][,tumour_type]``.

    Paths are relative to the CSV's folder (or absolute). Labels: benign/malignant, 0/1 or B/M. The tumour type
    (a code of ``TUMOUR_TYPES``, in a ``tumour_type`` or ``type`` column) must agree with the label; without the
    column, a BreakHis file name gives it.
    Without a patient column, BreakHis names give the slide id; other files become their own
    patient, which makes every grouped split image-level (a note says so).

    Raises:
        DatasetLayoutError: when the CSV lacks path/label columns or has no usable row.
    """
    path = Path(path)
    base = path.parent
    try:
        rows = read_csv_rows(path)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetLayoutError(f"cannot read manifest {path}: {exc}") from None
    columns = set(rows[0]) if rows else set()
    if not set(MANIFEST_COLUMNS) <= columns:
        raise DatasetLayoutError(f"manifest needs columns {','.join(MANIFEST_COLUMNS)}[,patient][,magnification][,tumour_type]. Received: {sorted(columns)}")
    records, rejected, own_patient = [], [], 0
    for line, row in enumerate(rows, start=2):
        file_path = Path(row["path"]) if Path(row["path"]).is_absolute() else base / row["path"]
        try:
            label = _parse_label(row["label"])
            magnification = int(row["magnification"].rstrip("xX")) if row.get("magnification") else None
            if magnification is not None and magnification not in (40, 100, 200, 400):
                raise ValueError(f"magnification must be 40, 100, 200 or 400. Received: magnification={magnification}")
            patient = row.get("patient") or ""
            tumour = _parse_tumour_type(row, label)
            try:
                parsed = parse_breakhis_name(file_path.name)
                patient = patient or parsed["slide"]
                magnification = magnification or parsed["magnification"]
                tumour = tumour or parsed["tumour_type"]
            except FilenameError:
                pass
            if not patient:
                patient = file_path.stem
                own_patient += 1
            if not file_path.is_file():
                raise ValueError("file not found")
            if verify:
                check_image_header(file_path)
        except (ValueError, ImageDecodeError) as exc:
            rejected.append(Rejected(str(file_path), f"manifest line {line}: {exc}"))
            continue
        records.append(ImageRecord(str(file_path.resolve()), label, patient, magnification, tumour))
    if not records:
        detail = f"; first problem: {rejected[0].reason}" if rejected else ""
        raise DatasetLayoutError(f"no usable images in manifest {path}{detail}")
    notes = []
    if own_patient:
        notes.append(
            f"{own_patient} images have no patient id: each counts as its own patient, "
            "so patient-wise splits are image-level (leaky) for them"
        )
    return ScanResult(str(path), "manifest", records, rejected, notes)


def filter_magnification(records: list[ImageRecord], magnification: int | None) -> list[ImageRecord]:
    """Keep the images of one magnification (None keeps all).

    Raises:
        DatasetLayoutError: when no image has that magnification.
    """
    if magnification is None:
        return list(records)
    kept = [r for r in records if r.magnification == magnification]
    if not kept:
        present = sorted({r.magnification for r in records if r.magnification})
        raise DatasetLayoutError(
            f"no images at this magnification (present: {present or 'none known'}). Received: magnification={magnification}"
        )
    return kept
