"""What the case service takes and hands out: frozen dataclasses, never ORM objects (which belong to a session).

Times are timezone-aware UTC ``datetime``; probabilities are P(malignant) in [0, 1]; labels are
``breakhis_core.CLASS_NAMES`` ("benign", "malignant"); types are BreakHis tumour codes (``data.TUMOUR_TYPES``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime

import numpy as np

from breakhis_core.config import DEFAULT_THRESHOLD

TASK = "benign-malignant"
"""The task of this program's models: two classes, with BreakHis tumour types as the optional finer label."""


@dataclass(frozen=True)
class Actor:
    """Who asks: the signed-in user (e-mail; "local" without sign-in) and their role (``access.ROLES``)."""

    user: str
    role: str | None


@dataclass(frozen=True)
class ImagePrediction:
    """The model's answer for one image: ``model_id`` (``run:stage``), ``task``, the calibration ``temperature``
    (1.0 = none), the decision ``threshold`` on P(malignant), ``verdict`` and ``p_malignant``."""

    model_id: str
    verdict: str
    p_malignant: float
    threshold: float = DEFAULT_THRESHOLD
    temperature: float = 1.0
    task: str = TASK

    @classmethod
    def from_prediction(cls, prediction) -> ImagePrediction:
        """From a ``predict.Prediction`` (or any object with its attributes)."""
        return cls(prediction.model_id, prediction.verdict, float(prediction.p_malignant), float(prediction.threshold),
                   float(prediction.temperature))


@dataclass(frozen=True)
class CasePrediction:
    """The model's answer for a case: as :class:`ImagePrediction`, plus the ``rule`` that combined the images
    ("mean" or "majority", ``predict.CASE_RULES``)."""

    model_id: str
    verdict: str
    p_malignant: float
    rule: str
    threshold: float = DEFAULT_THRESHOLD
    temperature: float = 1.0
    task: str = TASK

    @classmethod
    def from_case(cls, case, rule: str) -> CasePrediction:
        """From a ``predict.Case`` of predictions by one model (``group_cases(..., rule=rule)``)."""
        first = case.predictions[0]
        thresholds = [float(p.threshold) for p in case.predictions]
        return cls(first.model_id, case.verdict, float(case.p_malignant), rule, sum(thresholds) / len(thresholds),
                   float(first.temperature))


@dataclass(frozen=True)
class Review:
    """A pathologist's review of an image or a case: whether they agree with the model (None = not said), the
    final label and tumour type (None = not given) and a comment."""

    agrees: bool | None = None
    final_label: str | None = None
    final_type: str | None = None
    comment: str = ""


@dataclass(frozen=True)
class NewImage:
    """An image to put in a case: its file ``name`` (as uploaded), the file's bytes, magnification (40, 100, 200,
    400 or None), the model's prediction (None when not predicted) and its heat map (``(H, W)`` float32 in [0, 1]
    at the image's size, or None)."""

    name: str
    data: bytes = field(repr=False)
    magnification: int | None = None
    prediction: ImagePrediction | None = None
    heatmap: np.ndarray | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class NewCase:
    """A case to create: ``accession`` (None = generate one), the pseudonymous ``patient_ref``, its images and the
    case prediction."""

    patient_ref: str
    images: tuple[NewImage, ...]
    accession: str | None = None
    prediction: CasePrediction | None = None


@dataclass(frozen=True)
class CaseImageRecord:
    """One stored image of a case: ``sha256`` and ``suffix`` (its file in ``imagefiles``), name, magnification,
    size in pixels, prediction, review and the accession numbers of the other cases holding the same file."""

    sha256: str
    suffix: str
    name: str
    magnification: int | None
    width: int
    height: int
    prediction: ImagePrediction | None
    review: Review
    also_in: tuple[str, ...] = ()


@dataclass(frozen=True)
class AddendumRecord:
    """A change to a signed case: author, time, text and the review it gives (None = text only)."""

    author: str
    created_at: datetime
    text: str
    review: Review | None


@dataclass(frozen=True)
class CaseRecord:
    """A case as stored at ``version`` (give it back to a change, which is refused when the case moved on)."""

    id: int
    accession: str
    patient_ref: str
    status: str
    version: int
    created_at: datetime
    created_by: str
    updated_at: datetime
    prediction: CasePrediction | None
    review: Review
    reviewed_by: str | None
    reviewed_at: datetime | None
    signed_by: str | None
    signed_at: datetime | None
    images: tuple[CaseImageRecord, ...]
    addenda: tuple[AddendumRecord, ...] = ()

    @property
    def final_label(self) -> str | None:
        """The label that holds now: the last addendum's that gives one, else the review's."""
        for addendum in reversed(self.addenda):
            if addendum.review is not None and addendum.review.final_label:
                return addendum.review.final_label
        return self.review.final_label

    def to_dict(self) -> dict:
        """JSON-ready fields (times as ISO 8601 text), with ``final_label`` (the label that holds now)."""
        values = asdict(self)
        values["final_label"] = self.final_label
        return _iso(values)


@dataclass(frozen=True)
class CaseSummary:
    """One line of the case list."""

    id: int
    accession: str
    patient_ref: str
    status: str
    created_at: datetime
    verdict: str | None
    final_label: str | None
    reviewed_by: str | None
    signed_by: str | None
    n_images: int

    def to_dict(self) -> dict:
        """JSON-ready fields (times as ISO 8601 text)."""
        return _iso(asdict(self))


@dataclass(frozen=True)
class CaseFilter:
    """What the case list shows: ``text`` found in the accession or patient reference, status, model verdict,
    reviewer, created from ``since`` to ``until`` (UTC, both included), at most ``limit`` cases, newest first."""

    text: str = ""
    status: str | None = None
    verdict: str | None = None
    reviewer: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 500


def _iso(value):
    if isinstance(value, dict):
        return {key: _iso(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_iso(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value
