"""Splits of image records into train/val/test: grouped by patient (slide id, or the stricter case number) unless the
caller asks for the paper's image-level split, which is marked ``leaky``; the official Folds.csv; patient-wise K folds.
"""

from __future__ import annotations

import csv
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from breakhis_core import CLASS_NAMES
from breakhis_core.data.records import FOLDS_COLUMNS, ImageRecord, read_csv_rows
from breakhis_core.errors import SplitError
from breakhis_core.task import MALIGNANCY, Task, task_named

SPLITS = ("train", "val", "test")


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
        from breakhis_core.files import write_text_atomic

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
    task: Task = MALIGNANCY,
) -> Split:
    """Patient-wise split, stratified by each patient's (majority) class of ``task`` (benign/malignant, or the
    tumour type); no patient is in two splits.

    Raises:
        SplitError: when a class has too few patients to fill the splits (every such class named).
    """
    task.check_records(records)
    groups: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in records:
        groups[record.group(group_by)].append(record)
    by_class: dict[int, list[str]] = defaultdict(list)
    for patient, items in sorted(groups.items()):
        majority = Counter(task.label_of(r) for r in items).most_common(1)[0][0]
        by_class[majority].append(patient)
    rng = random.Random(seed)
    parts: dict[str, list[ImageRecord]] = {name: [] for name in SPLITS}
    needed = 1 + (fractions[1] > 0) + (fractions[2] > 0)
    short = [f"{len(by_class[label])} {task.class_label(label)}" for label in sorted(by_class)
             if len(by_class[label]) < needed]
    if short and task.is_binary:
        raise SplitError(
            f"only {short[0]} patient(s) (grouped by {group_by}): too few for a "
            f"patient-wise split that puts this class in each of {needed} splits"
        )
    if short:
        raise SplitError(
            f"too few patients (grouped by {group_by}) of tumour type(s) {'; '.join(short)}: the {task.name} task's "
            f"patient-wise split puts each type in each of {needed} splits; use more data, or split image (leaky: "
            "patients on both sides) to try the task out"
        )
    for label in sorted(by_class):
        patients = by_class[label]
        rng.shuffle(patients)
        n_train, n_val, _ = _allocate(len(patients), fractions)
        for index, patient in enumerate(patients):
            name = "train" if index < n_train else "val" if index < n_train + n_val else "test"
            parts[name].extend(groups[patient])
    return Split("patient", False, group_by, parts)


def split_by_image(
    records: list[ImageRecord], fractions: tuple[float, float, float] = (0.7, 0.2, 0.1), seed: int = 0,
    task: Task = MALIGNANCY,
) -> Split:
    """The paper's random image-level split, stratified by the class of ``task``. Leaky: patients straddle splits."""
    task.check_records(records)
    rng = random.Random(seed)
    parts: dict[str, list[ImageRecord]] = {name: [] for name in SPLITS}
    for label in range(task.n_classes):
        items = sorted((r for r in records if task.label_of(r) == label), key=lambda r: r.path)
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
    group_by: str = "slide", task: Task = MALIGNANCY,
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
    inner = split_by_patient(train, (1 - val_fraction, val_fraction, 0.0), seed, group_by, task)
    return Split(f"folds:{fold}", False, group_by, {"train": inner.parts["train"], "val": inner.parts["val"], "test": test})


def assign_folds(records: list[ImageRecord], n_folds: int, seed: int = 0, group_by: str = "slide",
                 task: Task = MALIGNANCY) -> dict[str, int]:
    """Patient-wise K-fold assignment: scikit-learn's ``StratifiedGroupKFold`` (shuffled, seeded).

    Every patient (by ``group_by``) lands in exactly one fold; folds are balanced by the image class of ``task``
    (benign/malignant, or the tumour type) as far as whole patients allow.

    Returns:
        patient → fold number (1..n_folds).

    Raises:
        SplitError: when there are fewer patients than folds, or a fold would hold no patient.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    patients = np.array([r.group(group_by) for r in records])
    labels = task.labels_of(records)
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
    group_by: str = "slide", task: Task = MALIGNANCY,
) -> Split:
    """Fold ``fold`` of a patient-wise K-fold cross-validation (:func:`assign_folds`): its patients are the test
    split; validation patients are carved patient-wise from the other folds' patients (``val_fraction`` of them).

    Raises:
        SplitError: when the folds cannot be made or the training patients are too few to carve validation from.
    """
    folds = assign_folds(records, n_folds, seed, group_by, task)
    test = [r for r in records if folds[r.group(group_by)] == fold]
    rest = [r for r in records if folds[r.group(group_by)] != fold]
    inner = split_by_patient(rest, (1 - val_fraction, val_fraction, 0.0), seed, group_by, task)
    return Split(f"cv{n_folds}:{fold}", False, group_by, {"train": inner.parts["train"], "val": inner.parts["val"], "test": test})


def make_split(records: list[ImageRecord], config) -> Split:
    """The split a TrainConfig asks for (``config.split`` = patient / image / folds / cv), stratified by the classes of
    its task (``config.task``)."""
    fractions = (config.train_fraction, config.val_fraction, config.test_fraction)
    task = task_named(config.task)
    if config.split == "patient":
        return split_by_patient(records, fractions, config.seed, config.group_by, task)
    if config.split == "image":
        return split_by_image(records, fractions, config.seed, task)
    if config.split == "folds":
        if not config.folds_csv:
            raise SplitError("split=folds needs the path of the official Folds.csv (--folds-csv)")
        return split_by_folds(records, config.folds_csv, config.fold, config.val_fraction, config.seed, config.group_by,
                              task)
    if config.split == "cv":
        return split_by_cv(records, config.cv_folds, config.fold, config.val_fraction, config.seed, config.group_by,
                           task)
    raise SplitError(f"unknown split protocol. Received: split={config.split}")
