"""What a model tells apart: the task, its classes, the label of an image and how a verdict reads.

Two tasks (``TASKS``), each a :class:`Task`:

- ``malignancy`` (the default; the paper's): 2 classes, index 0 benign, 1 malignant (``CLASS_NAMES``); an
  image's label is its class (``ImageRecord.label``);
- ``subtype``: the 8 BreakHis tumour types in ``TUMOUR_TYPES`` order (A, F, PT, TA benign; DC, LC, MC, PC
  malignant); an image's label is the index of its tumour type (BreakHis file names carry it; a manifest needs a
  ``tumour_type`` or ``type`` column, ``TYPE_COLUMNS``).

The model's softmax has one output per class of its task (``Task.n_classes``), so a model file says its task by
its output size (:func:`task_for_outputs`). Every malignancy view (verdicts, thresholds, calibration's operating
point, case and slide verdicts, the binary metrics) works on ``Task.malignancy_probability``: P(malignant), the
softmax's index 1 for ``malignancy`` and the sum of the 4 malignant types' probabilities for ``subtype``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from breakhis_core import CLASS_NAMES
from breakhis_core.errors import ConfigError, DatasetLayoutError, ModelFileError

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
"""BreakHis tumour-type code → (full name, label: 0 benign, 1 malignant), in the subtype task's class order."""
TYPE_COLUMNS = ("tumour_type", "type")
"""Manifest columns that give an image's tumour-type code (the first one present is read)."""
TOP_TYPE_COLUMN = "top_type"
"""Column of a subtype model's most probable tumour type (its code) in the prediction and tile tables."""


class ImageRecord(Protocol):
    """What a task reads of an image (``data.records.ImageRecord``, which imports this module)."""

    path: str
    label: int
    tumour_type: str | None


@dataclass(frozen=True)
class Task:
    """One classification task.

    Attributes:
        name: "malignancy" or "subtype" (``TrainConfig.task``, config.json "task").
        codes: short name of each class in output order; the prediction table's column of class k is
            ``p_<codes[k]>``.
        class_names: the human name of each class, in output order.
        malignant: for each class, whether it is malignant.
        description: one sentence for people (cards, pages).
    """

    name: str
    codes: tuple[str, ...]
    class_names: tuple[str, ...]
    malignant: tuple[bool, ...]
    description: str

    @property
    def n_classes(self) -> int:
        """The model's output size."""
        return len(self.codes)

    @property
    def is_binary(self) -> bool:
        """True for the benign/malignant task, whose classes are the malignancy verdicts themselves."""
        return self.n_classes == 2

    @property
    def probability_columns(self) -> tuple[str, ...]:
        """Column names of the class probabilities in prediction tables: ``p_benign, p_malignant`` or ``p_A … p_PC``."""
        return tuple(f"p_{code}" for code in self.codes)

    def class_label(self, index: int) -> str:
        """How class ``index`` is named to people: "malignant", or "ductal carcinoma (DC)"."""
        return self.class_names[index] if self.is_binary else f"{self.class_names[index]} ({self.codes[index]})"

    def label_of(self, record: ImageRecord) -> int:
        """The class index of an image under this task.

        Raises:
            DatasetLayoutError: for subtype, when the record has no (known) tumour type.
        """
        if self.is_binary:
            return record.label
        if record.tumour_type not in self.codes:
            raise DatasetLayoutError(_no_type_message([record]))
        return self.codes.index(record.tumour_type)

    def labels_of(self, records: Sequence[ImageRecord]) -> np.ndarray:
        """``(N,)`` int32 class indices of ``records`` (see :meth:`check_records` for the error)."""
        self.check_records(records)
        return np.array([self.label_of(r) for r in records], dtype=np.int32)

    def check_records(self, records: Sequence[ImageRecord]) -> None:
        """Refuse data this task cannot learn from: for subtype, images without a tumour type.

        Raises:
            DatasetLayoutError: naming the column a manifest needs and the first images without it.
        """
        if self.is_binary:
            return
        missing = [r for r in records if r.tumour_type not in self.codes]
        if missing:
            raise DatasetLayoutError(_no_type_message(missing, len(records)))

    def malignancy_probability(self, probabilities) -> np.ndarray:
        """P(malignant) ``(...)`` of class probabilities ``(..., K)``: the last axis' index 1 (malignancy, unchanged,
        same dtype) or the sum of the malignant types' probabilities (subtype)."""
        probabilities = np.asarray(probabilities)
        if probabilities.ndim < 1 or probabilities.shape[-1] != self.n_classes:
            raise ValueError(f"probabilities must be (..., {self.n_classes}) for the {self.name} task. "
                             f"Received: shape {probabilities.shape}")
        if self.is_binary:
            return probabilities[..., 1]
        return probabilities[..., np.array(self.malignant)].sum(axis=-1)

    def malignant_labels(self, labels) -> np.ndarray:
        """``(N,)`` int64 0 benign / 1 malignant of class indices ``labels`` ``(N,)``."""
        return np.array(self.malignant, dtype=np.int64)[np.asarray(labels, dtype=np.int64)]

    def top_class_text(self, probabilities) -> str:
        """The most probable class of one image's probabilities ``(K,)`` and its probability, e.g.
        "ductal carcinoma (DC) 62 %"."""
        index = int(np.argmax(probabilities))
        return f"{self.class_label(index)} {100 * float(probabilities[index]):.0f} %"


MALIGNANCY = Task("malignancy", CLASS_NAMES, CLASS_NAMES, (False, True),
                  "benign or malignant (the paper's task)")
SUBTYPE = Task("subtype", tuple(TUMOUR_TYPES), tuple(name for name, _ in TUMOUR_TYPES.values()),
               tuple(bool(label) for _, label in TUMOUR_TYPES.values()),
               "the 8 BreakHis tumour types; P(malignant) is the sum of the 4 malignant types' probabilities")
TASKS = {task.name: task for task in (MALIGNANCY, SUBTYPE)}
"""Every task by name; the first is the default."""
TASK_NAMES = tuple(TASKS)


def task_named(name: str | None) -> Task:
    """The task called ``name``; None (a config.json written before tasks) is the default, malignancy.

    Raises:
        ConfigError: for an unknown name, listing the known ones.
    """
    if name is None:
        return MALIGNANCY
    if name not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASK_NAMES)}. Received: task={name}")
    return TASKS[name]


def task_for_outputs(n_outputs: int, shape: tuple | None = None) -> Task:
    """The task whose model has ``n_outputs`` class probabilities.

    Raises:
        ModelFileError: when the size fits no task, naming the sizes that do.
    """
    for task in TASKS.values():
        if task.n_classes == n_outputs:
            return task
    sizes = [f"{t.n_classes}" + (" class probabilities" if i == 0 else "") + f" ({t.name}: {', '.join(t.codes)})"
             for i, t in enumerate(TASKS.values())]
    raise ModelFileError(f"model output must be {' or '.join(sizes)}. "
                         f"Received: output shape {shape if shape is not None else (None, n_outputs)}")


def _no_type_message(missing: Sequence[ImageRecord], total: int | None = None) -> str:
    count = f"{len(missing)} of {total} images have" if total else "an image has"
    return (f"the subtype task needs each image's tumour type ({', '.join(TUMOUR_TYPES)}): BreakHis file names carry "
            f"it, a manifest needs a {TYPE_COLUMNS[0]} (or {TYPE_COLUMNS[1]}) column; {count} none. "
            f"Received: {missing[0].path}")
