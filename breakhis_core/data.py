"""BreakHis data: file-name parsing, folder and manifest scanning, splits, arrays and tf.data pipelines.

BreakHis names encode everything a split needs::

    SOB_B_A-14-22549AB-40-001.png
    |   | |  |         |  └ sequence number
    |   | |  |         └ magnification (40, 100, 200, 400)
    |   | |  └ slide id "14-22549AB" (the official "patient"; case number "14-22549")
    |   | └ tumour type (A, F, PT, TA benign; DC, LC, MC, PC malignant)
    |   └ class (B benign, M malignant)
    └ biopsy procedure (SOB)

Splits are grouped by patient (slide id, or the stricter case number) unless the caller
asks for the paper's image-level split, which is marked ``leaky``. Labels are ints:
0 = benign, 1 = malignant (``breakhis_core.CLASS_NAMES``).
"""

from __future__ import annotations

import csv
import random
import re
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from . import CLASS_NAMES
from .errors import DatasetLayoutError, FilenameError, ImageDecodeError, SplitError
from .images import FORMATS, IMAGE_SUFFIXES, MAX_FILE_BYTES, MAX_PIXELS, display_name, read_image, resize

TUMOUR_TYPES = {
    "A": ("adenosis", 0),
    "F": ("fibroadenoma", 0),
    "PT": ("phyllodes tumour", 0),
    "TA": ("tubular adenoma", 0),
    "DC": ("ductal carcinoma", 1),
    "LC": ("lobular carcinoma", 1),
    "MC": ("mucinous carcinoma", 1),
    "PC": ("papillary carcinoma", 1),
}
"""Tumour-type code → (full name, label)."""

_NAME = re.compile(
    r"^(?P<procedure>[A-Z]+)_(?P<cls>[BM])_(?P<type>[A-Z]+)-(?P<slide>\d+-[0-9A-Za-z]+)"
    r"-(?P<mag>\d+)-(?P<seq>\d+)$"
)
SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ("path", "label")
"""Columns a manifest CSV must have (any order and case); ``patient`` and ``magnification`` are optional."""
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
    """Read a manifest CSV with columns ``path,label[,patient][,magnification]``.

    Paths are relative to the CSV's folder (or absolute). Labels: benign/malignant, 0/1 or B/M.
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
        raise DatasetLayoutError(f"manifest needs columns {','.join(MANIFEST_COLUMNS)}[,patient][,magnification]. Received: {sorted(columns)}")
    records, rejected, own_patient = [], [], 0
    for line, row in enumerate(rows, start=2):
        file_path = Path(row["path"]) if Path(row["path"]).is_absolute() else base / row["path"]
        try:
            label = _parse_label(row["label"])
            magnification = int(row["magnification"].rstrip("xX")) if row.get("magnification") else None
            if magnification is not None and magnification not in (40, 100, 200, 400):
                raise ValueError(f"magnification must be 40, 100, 200 or 400. Received: magnification={magnification}")
            patient = row.get("patient") or ""
            tumour = None
            try:
                parsed = parse_breakhis_name(file_path.name)
                patient = patient or parsed["slide"]
                magnification = magnification or parsed["magnification"]
                tumour = parsed["tumour_type"]
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


# ----------------------------------------------------------------------------- splits


@dataclass
class Split:
    """Assignment of images to train/val/test.

    Attributes:
        protocol: "patient", "image", "folds:K" (official fold K) or "cvN:K" (fold K of N-fold cross-validation).
        leaky: True when one patient may sit in several splits (the paper's image-level split).
        group_by: patient key used ("slide" or "case").
        parts: split name → records.
    """

    protocol: str
    leaky: bool
    group_by: str
    parts: dict[str, list[ImageRecord]]

    def leakage(self) -> dict[str, list[str]]:
        """Patients (by ``group_by``) present in more than one split → the splits they are in."""
        seen: dict[str, set[str]] = defaultdict(set)
        for name, records in self.parts.items():
            for record in records:
                seen[record.group(self.group_by)].add(name)
        return {patient: sorted(s) for patient, s in sorted(seen.items()) if len(s) > 1}

    def counts(self) -> dict[str, dict[str, int]]:
        """Split → {"images", "patients", "benign", "malignant"}."""
        return {
            name: {
                "images": len(records),
                "patients": len({r.group(self.group_by) for r in records}),
                **{c: sum(r.label == i for r in records) for i, c in enumerate(CLASS_NAMES)},
            }
            for name, records in self.parts.items()
        }

    def save_csv(self, path: str | Path) -> None:
        """Write ``path,label,class,patient,case,magnification,tumour_type,split`` rows (sorted, reproducible)."""
        from .files import write_text_atomic

        lines = ["path,label,class,patient,case,magnification,tumour_type,split"]
        for name in SPLITS:
            for r in sorted(self.parts.get(name, []), key=lambda r: r.path):
                lines.append(
                    ",".join(
                        _csv_field(v)
                        for v in (r.path, r.label, r.class_name, r.patient, r.case, r.magnification or "", r.tumour_type or "", name)
                    )
                )
        write_text_atomic(path, "\n".join(lines) + "\n")

    @classmethod
    def load_csv(cls, path: str | Path, protocol: str, leaky: bool, group_by: str) -> "Split":
        parts: dict[str, list[ImageRecord]] = {name: [] for name in SPLITS}
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                parts[row["split"]].append(
                    ImageRecord(
                        row["path"], int(row["label"]), row["patient"],
                        int(row["magnification"]) if row["magnification"] else None,
                        row["tumour_type"] or None,
                    )
                )
        return cls(protocol, leaky, group_by, parts)


def _csv_field(value) -> str:
    text = str(value)
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def _allocate(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Counts (train, val, test) for n items; val/test get at least 1 when their fraction > 0 and n allows."""
    _, val_f, test_f = fractions
    n_test = round(n * test_f)
    n_val = round(n * val_f)
    if test_f > 0 and n_test == 0 and n >= 3:
        n_test = 1
    if val_f > 0 and n_val == 0 and n - n_test >= 2:
        n_val = 1
    n_train = n - n_val - n_test
    if n_train < 1:
        raise SplitError(f"too few items ({n}) to split with fractions {fractions}")
    return n_train, n_val, n_test


def split_by_patient(
    records: list[ImageRecord],
    fractions: tuple[float, float, float] = (0.7, 0.2, 0.1),
    seed: int = 0,
    group_by: str = "slide",
) -> Split:
    """Patient-wise split, stratified by each patient's (majority) class; no patient is in two splits.

    Raises:
        SplitError: when a class has too few patients to fill the splits.
    """
    groups: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in records:
        groups[record.group(group_by)].append(record)
    by_class: dict[int, list[str]] = defaultdict(list)
    for patient, items in sorted(groups.items()):
        majority = Counter(r.label for r in items).most_common(1)[0][0]
        by_class[majority].append(patient)
    rng = random.Random(seed)
    parts: dict[str, list[ImageRecord]] = {name: [] for name in SPLITS}
    for label in sorted(by_class):
        patients = by_class[label]
        rng.shuffle(patients)
        needed = 1 + (fractions[1] > 0) + (fractions[2] > 0)
        if len(patients) < needed:
            raise SplitError(
                f"only {len(patients)} {CLASS_NAMES[label]} patient(s) (grouped by {group_by}): too few for a "
                f"patient-wise split that puts this class in each of {needed} splits"
            )
        n_train, n_val, _ = _allocate(len(patients), fractions)
        for index, patient in enumerate(patients):
            name = "train" if index < n_train else "val" if index < n_train + n_val else "test"
            parts[name].extend(groups[patient])
    return Split("patient", False, group_by, parts)


def split_by_image(
    records: list[ImageRecord], fractions: tuple[float, float, float] = (0.7, 0.2, 0.1), seed: int = 0
) -> Split:
    """The paper's random image-level split, stratified by class. Leaky: patients straddle splits."""
    rng = random.Random(seed)
    parts: dict[str, list[ImageRecord]] = {name: [] for name in SPLITS}
    for label in (0, 1):
        items = sorted((r for r in records if r.label == label), key=lambda r: r.path)
        if not items:
            continue
        rng.shuffle(items)
        n_train, n_val, _ = _allocate(len(items), fractions)
        parts["train"] += items[:n_train]
        parts["val"] += items[n_train : n_train + n_val]
        parts["test"] += items[n_train + n_val :]
    return Split("image", True, "slide", parts)


def split_by_folds(
    records: list[ImageRecord], folds_csv: str | Path, fold: int, val_fraction: float = 0.2, seed: int = 0,
    group_by: str = "slide",
) -> Split:
    """The official BreakHis ``Folds.csv`` (columns fold,mag,grp,filename): fold ``fold``'s train/test.

    Validation patients are carved from the fold's train part (patient-wise, ``val_fraction``
    of its patients). Images not listed in the fold are left out.

    Raises:
        SplitError: when the file is unreadable or the fold matches none of the images.
    """
    try:
        rows = read_csv_rows(folds_csv)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SplitError(f"cannot read Folds.csv: {getattr(exc, 'strerror', None) or exc}. Received: {folds_csv}") from None
    if not rows or not set(FOLDS_COLUMNS) <= set(rows[0]):
        raise SplitError(f"Folds.csv needs columns {','.join(FOLDS_COLUMNS)}. Received: {folds_csv}")
    groups = {}
    for row in rows:
        if row["fold"] == str(fold):
            groups[Path(row["filename"]).name] = row["grp"].lower()
    by_name = {Path(r.path).name: r for r in records}
    train = [by_name[n] for n, g in sorted(groups.items()) if g == "train" and n in by_name]
    test = [by_name[n] for n, g in sorted(groups.items()) if g == "test" and n in by_name]
    if not train or not test:
        raise SplitError(
            f"fold {fold} of {folds_csv} matches {len(train)} train and {len(test)} test images of the data. Received: fold={fold}"
        )
    inner = split_by_patient(train, (1 - val_fraction, val_fraction, 0.0), seed, group_by)
    return Split(f"folds:{fold}", False, group_by, {"train": inner.parts["train"], "val": inner.parts["val"], "test": test})


def assign_folds(records: list[ImageRecord], n_folds: int, seed: int = 0, group_by: str = "slide") -> dict[str, int]:
    """Patient-wise K-fold assignment: scikit-learn's ``StratifiedGroupKFold`` (shuffled, seeded).

    Every patient (by ``group_by``) lands in exactly one fold; folds are balanced by image class
    as far as whole patients allow.

    Returns:
        patient → fold number (1..n_folds).

    Raises:
        SplitError: when there are fewer patients than folds, or a fold would hold no patient.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    patients = np.array([r.group(group_by) for r in records])
    labels = np.array([r.label for r in records])
    n_patients = len(set(patients.tolist()))
    if n_folds < 2 or n_patients < n_folds:
        raise SplitError(f"{n_folds}-fold cross-validation needs at least {n_folds} patients (grouped by {group_by}). "
                         f"Received: {n_patients} patient(s), n_folds={n_folds}")
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds: dict[str, int] = {}
    for number, (_, test_index) in enumerate(splitter.split(np.zeros(len(records)), labels, patients), start=1):
        for patient in sorted(set(patients[test_index].tolist())):
            folds[patient] = number
    empty = sorted(set(range(1, n_folds + 1)) - set(folds.values()))
    if empty:
        raise SplitError(f"fold(s) {empty} of {n_folds} hold no patient. Received: {n_patients} patients, n_folds={n_folds}")
    return folds


def split_by_cv(
    records: list[ImageRecord], n_folds: int, fold: int, val_fraction: float = 0.2, seed: int = 0,
    group_by: str = "slide",
) -> Split:
    """Fold ``fold`` of a patient-wise K-fold cross-validation (:func:`assign_folds`): its patients are the test
    split; validation patients are carved patient-wise from the other folds' patients (``val_fraction`` of them).

    Raises:
        SplitError: when the folds cannot be made or the training patients are too few to carve validation from.
    """
    folds = assign_folds(records, n_folds, seed, group_by)
    test = [r for r in records if folds[r.group(group_by)] == fold]
    rest = [r for r in records if folds[r.group(group_by)] != fold]
    inner = split_by_patient(rest, (1 - val_fraction, val_fraction, 0.0), seed, group_by)
    return Split(f"cv{n_folds}:{fold}", False, group_by, {"train": inner.parts["train"], "val": inner.parts["val"], "test": test})


def make_split(records: list[ImageRecord], config) -> Split:
    """The split a TrainConfig asks for (``config.split`` = patient / image / folds / cv)."""
    fractions = (config.train_fraction, config.val_fraction, config.test_fraction)
    if config.split == "patient":
        return split_by_patient(records, fractions, config.seed, config.group_by)
    if config.split == "image":
        return split_by_image(records, fractions, config.seed)
    if config.split == "folds":
        if not config.folds_csv:
            raise SplitError("split=folds needs the path of the official Folds.csv (--folds-csv)")
        return split_by_folds(records, config.folds_csv, config.fold, config.val_fraction, config.seed, config.group_by)
    if config.split == "cv":
        return split_by_cv(records, config.cv_folds, config.fold, config.val_fraction, config.seed, config.group_by)
    raise SplitError(f"unknown split protocol. Received: split={config.split}")


# ----------------------------------------------------------------------------- arrays and pipelines


@dataclass(frozen=True, eq=False)  # eq=False: numpy arrays do not compare with ==
class ImageArrays:
    """Images decoded and resized once (:func:`load_arrays`), for training and evaluation.

    Attributes:
        images: ``(N, S, S, 3)`` uint8 RGB in [0, 255], S the side asked for (``N`` = 0 gives ``(0, S, S, 3)``).
        labels: ``(N,)`` int32, 0 = benign, 1 = malignant (``CLASS_NAMES``).
        records: the N records the rows come from, in the same order.
        rejected: the records' files that failed to decode, each with its reason (not in ``images``).
    """

    images: np.ndarray
    labels: np.ndarray
    records: list[ImageRecord]
    rejected: list[Rejected]


def load_arrays(records: list[ImageRecord], size: int, transform=None, workers: int = 2) -> ImageArrays:
    """Decode and resize images once, for training and evaluation.

    Args:
        records: images to load.
        size: output side in pixels (square; BreakHis 700×460 is resized without cropping).
        transform: optional ``f(rgb_uint8) -> rgb_uint8`` applied before resizing (stain normalisation).
        workers: decoding threads.

    Returns:
        The images that decoded (``(N, size, size, 3)`` uint8 RGB), their labels and records in the same order,
        and the files that failed to decode with reasons.
    """

    def load(record: ImageRecord):
        try:
            image = read_image(record.path)
            if transform is not None:
                image = transform(image)
            return resize(image, size), None
        except ImageDecodeError as exc:
            return None, Rejected(record.path, str(exc))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(load, records))
    kept = [(r, img) for r, (img, err) in zip(records, results) if err is None]
    rejected = [err for _, err in results if err is not None]
    images = np.stack([img for _, img in kept]) if kept else np.zeros((0, size, size, 3), np.uint8)
    labels = np.array([r.label for r, _ in kept], dtype=np.int32)
    return ImageArrays(images, labels, [r for r, _ in kept], rejected)


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Inverse-frequency weights ``n / (2 * n_c)`` (BreakHis 2,480 benign / 5,429 malignant → 1.59 / 0.73)."""
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    total = counts.sum()
    return {c: float(total / (2 * counts[c])) if counts[c] else 0.0 for c in range(2)}


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    training: bool,
    augment_images: bool = False,
    seed: int = 0,
    replicas: int = 1,
):
    """A batched, prefetched ``tf.data.Dataset`` of ``(float32 RGB [0, 255], int32 label)``.

    Shuffling and augmentation apply only when ``training``; the model does its own VGG16
    preprocessing, so images stay RGB in [0, 255] here. Batches follow
    ``distribute.batch_bounds(len(images), batch_size, replicas)``: with several replicas no
    replica ever gets an empty share and the first batch divides evenly among them.
    """
    import tensorflow as tf

    from .augment import augment
    from .distribute import batch_bounds

    bounds = batch_bounds(len(images), batch_size, replicas, "training images" if training else "validation images")
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    if training:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    sizes = [stop - start for start, stop in bounds]
    if all(size == batch_size for size in sizes[:-1]) and sizes[-1] <= batch_size:
        dataset = dataset.batch(batch_size)
    else:
        starts = tf.constant([start for start, _ in bounds], tf.int64)
        window_sizes = tf.constant(sizes, tf.int64)
        dataset = dataset.enumerate().group_by_window(
            key_func=lambda i, item: tf.searchsorted(starts, [i], side="right", out_type=tf.int64)[0] - 1,
            reduce_func=lambda key, window: window.batch(max(sizes)),
            window_size_func=lambda key: tf.gather(window_sizes, key),
        ).map(lambda i, item: item)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(len(bounds)))
    dataset = dataset.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    if training and augment_images:
        counter = tf.data.Dataset.counter()
        dataset = tf.data.Dataset.zip((dataset, counter)).map(
            lambda xy, i: (augment(xy[0], tf.stack([tf.cast(seed, tf.int64), i])), xy[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)
