"""Diagnosis of images: batched prediction, magnification routing, tiling, TTA and case verdicts.

A :class:`Predictor` wraps one loaded model (a run's ``frozen`` or ``finetuned`` model) and
predicts batches of RGB images of any size. Per image it gives the probabilities of benign
and malignant, the verdict (malignant when P(malignant) >= the model's threshold), the confidence
(the verdict's probability), a low-confidence flag with its reason, which model served it, and
optionally a class activation map at the image's own size. A run's model is wrapped with the
calibration fitted on its validation patients (``calibration.py``): probabilities are
temperature-scaled and the threshold is the run's operating point (0.5 and no scaling without one). A :class:`ModelRouter` sends each image to the
model trained for its magnification, else to an all-magnification model, and says which.

How an image reaches the model (the rule is stored in ``Prediction.input_rule``):

- By default the whole image is resized to the model input (S×S), as in training.
- With ``tile=True``, an image whose shorter side is at least ``TILE_MIN_SIDE`` (920 px,
  twice the 460 px BreakHis height) is cut into overlapping tiles of the BreakHis field of
  view (700×460 px, assuming BreakHis pixel size); each tile is resized to S×S as in
  training; all tiles go through the model batched; the image probability is the mean of
  the tile probabilities, and the tile maps are stitched into one heat map (overlaps averaged).
- With ``tta=True``, each (tile or whole) input is seen in the 8 flips/rotations of the
  dihedral group, in one batch; the probability is their mean and the spread their standard
  deviation. Heat maps explain the unaugmented view.

Grad-CAM shares the prediction's forward pass (see ``explain.py``); Grad-CAM++ and Score-CAM
are computed after the prediction. A heat map explains the malignant class by default
(``DEFAULT_CAM_CLASS``): the evidence a pathologist checks, whatever the verdict.

A subtype model (``task.py``: 8 tumour types) predicts the same way: its verdict is on P(malignant), the sum of
its malignant types' (calibrated) probabilities, and each prediction also carries the type probabilities and the
most probable type (``Prediction.class_probabilities``, ``top_type``). Its heat map for class 1 (malignant) or 0
(benign) explains the most probable tumour type of that class (``Prediction.cam_type``).

Every prediction carries the serving model's learning-check state (``learning_check.LearningStatus.text``),
so each table, report and export that shows a verdict also shows whether the model was seen to learn.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import keras
import numpy as np

from breakhis_core import CLASS_NAMES, runtime
from breakhis_core.lab.paths import runs_dir
from breakhis_core.runs import default_model, registry
from breakhis_core.models import loading as model_loading
from breakhis_core.data.augment import dihedral_views
from breakhis_core.config import DEFAULT_THRESHOLD, MAGNIFICATIONS
from breakhis_core.data.records import parse_breakhis_name
from breakhis_core.errors import FilenameError, MagnificationError, RunNotFoundError
from breakhis_core.inference.explain import (
    BATCH_SIZE,
    DEFAULT_MAX_MAPS,
    Explainer,
    check_method,
    explainer_for,
    normalize_map,
    upsample_map,
)
from breakhis_core.evaluation.calibration import apply_temperature, load_calibration, scale_probabilities
from breakhis_core.evaluation.learning_check import LearningStatus
from breakhis_core.data.images import resize
from breakhis_core.models.backbones import find_gradcam_layer
from breakhis_core.models.classifier import check_model_io, model_task
from breakhis_core.data.stain import get_normalizer
from breakhis_core.task import MALIGNANCY, task_named
from breakhis_core.runs.status import RunStatus

FIELD_OF_VIEW = (460, 700)
"""(height, width) in pixels of a BreakHis image: the field of view a model is trained on."""
TILE_MIN_SIDE = 2 * FIELD_OF_VIEW[0]
DEFAULT_CAM_CLASS = CLASS_NAMES.index("malignant")
"""The class a heat map explains unless asked otherwise: malignant, the class a pathologist checks."""
"""With ``tile=True``, images whose shorter side is at least this many pixels (920) are tiled."""
TTA_VIEWS = 8
LOW_CONFIDENCE_MARGIN = 0.15
"""Flag a verdict whose P(malignant) lies within this distance of 0.5."""
LOW_CONFIDENCE_STD = 0.10
"""Flag a verdict whose TTA standard deviation of P(malignant) exceeds this."""
ONE_CASE = "one case"
"""Case id of images grouped as a single case (names without a BreakHis slide id, or on request)."""
CASE_RULES = ("mean", "majority")


# ----------------------------------------------------------------------------- results


@dataclass
class Tiling:
    """How a large image was tiled.

    Attributes:
        rows, cols: tile grid.
        tile_size: (height, width) of a tile in image pixels.
        p_malignant: ``(rows, cols)`` float32, P(malignant) of each tile.
    """

    rows: int
    cols: int
    tile_size: tuple[int, int]
    p_malignant: np.ndarray


@dataclass
class Prediction:
    """The diagnosis of one image.

    Attributes:
        name: file name (or "image N").
        magnification: 40/100/200/400 or None when unknown.
        magnification_source: "given" (by the caller), "filename" (BreakHis name) or "unknown".
        p_benign, p_malignant: calibrated probabilities (TTA / tile means when used), summing to 1.
        verdict: "benign" or "malignant" (malignant when p_malignant >= ``threshold``).
        confidence: probability of the verdict (in [0.5, 1] at the default threshold 0.5).
        low_confidence: True when the verdict is uncertain; ``low_confidence_reason`` says why.
        model_id: the model that served the image.
        route: which model and why (e.g. "all-magnification model (no 100X model)").
        image_size: (height, width) of the input image.
        input_rule: how the image was fed to the model (resize, tiling, TTA, aggregation).
        tta_p_malignant: ``(8,)`` float32 P(malignant) of each dihedral view, or None.
        tta_std: standard deviation of ``tta_p_malignant``, or None.
        tiling: the tile grid and tile probabilities, or None when not tiled.
        heatmap: ``(H, W)`` float32 in [0, 1] at the image's size, or None.
        cam_method: method of ``heatmap``; cam_class: class it explains (0 benign, 1 malignant).
        threshold: the model's decision threshold on ``p_malignant``.
        temperature: the temperature that calibrated the model's softmax (1.0 = none).
        learning: the serving model's learning-check state (``to_dict`` gives its ``text`` as "learning_check":
            "learned", "did not learn: …", "undetermined: …" or "not checked").
        task: the serving model's task, "malignancy" or "subtype" (``task.py``).
        class_probabilities: a subtype model's calibrated probability of each tumour type (code → probability, in
            ``TUMOUR_TYPES`` order), else None.
        top_type: a subtype model's most probable tumour type (code), else None.
        cam_type: a subtype model's heat map: the tumour type (code) it explains, else None.
    """

    name: str
    magnification: int | None
    magnification_source: str
    p_benign: float
    p_malignant: float
    verdict: str
    confidence: float
    low_confidence: bool
    low_confidence_reason: str
    model_id: str
    route: str
    image_size: tuple[int, int]
    input_rule: str
    tta_p_malignant: np.ndarray | None = None
    tta_std: float | None = None
    tiling: Tiling | None = None
    heatmap: np.ndarray | None = None
    cam_method: str | None = None
    cam_class: int | None = None
    threshold: float = DEFAULT_THRESHOLD
    temperature: float = 1.0
    learning: LearningStatus = LearningStatus()
    task: str = MALIGNANCY.name
    class_probabilities: dict[str, float] | None = None
    top_type: str | None = None
    cam_type: str | None = None

    @property
    def top_type_text(self) -> str | None:
        """A subtype prediction's most probable type and its probability, e.g. "ductal carcinoma (DC) 62 %"; None
        for a malignancy model."""
        if self.class_probabilities is None:
            return None
        return task_named(self.task).top_class_text(np.array(list(self.class_probabilities.values())))

    def to_dict(self) -> dict:
        """JSON-ready fields (no heat map; tile probabilities as nested lists); a subtype prediction's also hold
        "task", "class_probabilities", "top_type", "p_top_type" and "cam_type"."""
        return self._fields() | ({} if self.class_probabilities is None else {
            "task": self.task,
            "class_probabilities": dict(self.class_probabilities),
            "top_type": self.top_type,
            "p_top_type": self.class_probabilities[self.top_type],
            "cam_type": self.cam_type,
        })

    def _fields(self) -> dict:
        return {
            "name": self.name,
            "magnification": self.magnification,
            "magnification_source": self.magnification_source,
            "p_benign": self.p_benign,
            "p_malignant": self.p_malignant,
            "verdict": self.verdict,
            "confidence": self.confidence,
            "low_confidence": self.low_confidence,
            "low_confidence_reason": self.low_confidence_reason,
            "model_id": self.model_id,
            "route": self.route,
            "image_size": list(self.image_size),
            "input_rule": self.input_rule,
            "tta_p_malignant": None if self.tta_p_malignant is None else self.tta_p_malignant.tolist(),
            "tta_std": self.tta_std,
            "tiles": None if self.tiling is None else self.tiling.p_malignant.tolist(),
            "cam_method": self.cam_method,
            "cam_class": self.cam_class,
            "threshold": self.threshold,
            "temperature": self.temperature,
            "learning_check": self.learning.text,
        }


@dataclass
class Case:
    """Images of one slide (BreakHis "patient") or of a whole upload, with a case verdict.

    Attributes:
        case_id: slide id ("14-22549AB") or ``ONE_CASE``.
        predictions: the images' predictions.
        p_malignant: mean P(malignant) of the images.
        verdict: "benign" or "malignant" by ``rule``.
        rule: the rule applied, with its numbers.
        low_confidence: True when the rule's score lies within ``LOW_CONFIDENCE_MARGIN`` of its threshold
            (the images' decision threshold for "mean", 0.5 for "majority").
        by_magnification: one row per magnification ("40X" … "400X", "unknown"):
            ``{"magnification", "images", "mean_p_malignant", "malignant_images", "verdict"}``.
    """

    case_id: str
    predictions: list[Prediction]
    p_malignant: float
    verdict: str
    rule: str
    low_confidence: bool
    by_magnification: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "case_id": self.case_id,
            "images": [p.name for p in self.predictions],
            "p_malignant": self.p_malignant,
            "verdict": self.verdict,
            "rule": self.rule,
            "low_confidence": self.low_confidence,
            "by_magnification": self.by_magnification,
        }


# ----------------------------------------------------------------------------- magnification


def magnification_from_name(name: str) -> int | None:
    """The magnification of a BreakHis file name (40/100/200/400), or None for other names."""
    try:
        return parse_breakhis_name(name)["magnification"]
    except FilenameError:
        return None


def slide_from_name(name: str) -> str | None:
    """The slide id ("14-22549AB") of a BreakHis file name, or None for other names."""
    try:
        return parse_breakhis_name(name)["slide"]
    except FilenameError:
        return None


def normalize_magnification(value: int | str | None) -> int | None:
    """40/100/200/400 from an int or a string like "40", "40X"; None or "all"/"unknown" → None.

    Raises:
        MagnificationError: for any other value.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "all", "unknown")):
        return None
    text = str(value).strip().upper().removesuffix("X")
    if not text.isdigit() or int(text) not in MAGNIFICATIONS:
        raise MagnificationError(f"magnification must be 40, 100, 200 or 400. Received: magnification={value}")
    return int(text)


def resolve_magnification(name: str, given: int | str | None = None) -> tuple[int | None, str]:
    """(magnification, source): the caller's value wins ("given"), else the file name ("filename"), else "unknown"."""
    given = normalize_magnification(given)
    if given is not None:
        return given, "given"
    from_name = magnification_from_name(name)
    return (from_name, "filename") if from_name is not None else (None, "unknown")


# ----------------------------------------------------------------------------- tiles


def should_tile(height: int, width: int) -> bool:
    """True when an image is much larger than the BreakHis field: shorter side >= ``TILE_MIN_SIDE``."""
    return min(height, width) >= TILE_MIN_SIDE


def tile_boxes(height: int, width: int, tile: tuple[int, int] = FIELD_OF_VIEW) -> tuple[int, int, list[tuple[int, int]]]:
    """Cover an image with overlapping tiles spaced evenly, the last flush with the edge.

    Returns:
        rows, cols and the (top, left) corner of each tile, row by row.
    """
    def starts(length: int, size: int) -> list[int]:
        count = max(1, math.ceil(length / size))
        return [0] if count == 1 else [round(i * (length - size) / (count - 1)) for i in range(count)]

    tops, lefts = starts(height, tile[0]), starts(width, tile[1])
    return len(tops), len(lefts), [(top, left) for top in tops for left in lefts]


def low_confidence(p_malignant: float, tta_std: float | None = None, threshold: float = DEFAULT_THRESHOLD) -> tuple[bool, str]:
    """(flag, reason): P(malignant) near the decision threshold or a large TTA spread makes a verdict uncertain."""
    reasons = []
    if abs(p_malignant - threshold) < LOW_CONFIDENCE_MARGIN:
        reasons.append(f"P(malignant) {p_malignant:.2f} is within {LOW_CONFIDENCE_MARGIN} of {_threshold_text(threshold)}")
    if tta_std is not None and tta_std > LOW_CONFIDENCE_STD:
        reasons.append(f"TTA spread (std {tta_std:.2f}) exceeds {LOW_CONFIDENCE_STD}")
    return bool(reasons), "; ".join(reasons)


def _threshold_text(threshold: float) -> str:
    return f"{DEFAULT_THRESHOLD:g}" if threshold == DEFAULT_THRESHOLD else f"the threshold {threshold:.2f}"


@dataclass
class _Plan:
    """Model inputs of one image: ``inputs`` (T, S, S, 3) uint8 (T tiles, or 1 whole image)."""

    image_size: tuple[int, int]
    inputs: np.ndarray
    rows: int = 1
    cols: int = 1
    corners: list[tuple[int, int]] | None = None
    rule: str = ""


# ----------------------------------------------------------------------------- predictor


class Predictor:
    """Batched prediction with one model.

    Args:
        model: classifier taking ``(None, S, S, 3)`` float32 RGB in [0, 255] (preprocessing inside)
            and returning ``(None, K)`` softmax probabilities of its task (``classifier.model_task``: 2 benign,
            malignant; 8 tumour types).
        model_id: shown in every prediction (``registry.model_id``: "<run_id>:<stage>").
        magnification: the magnification the model was trained on (40/100/200/400), None for all.
        batch_size: model inputs per forward pass.
        layer: layer explained by heat maps; None: the one the model's layer names tell
            (``backbones.find_gradcam_layer``: its backbone's, else its last convolution output; logged).
        stain_norm: stain normalisation the model was trained with ("none", "macenko", "reinhard"),
            applied to each image before resizing, as in training.
        precision: "auto" (bfloat16 compute on CPUs with bf16 instructions, float16 on a GPU, else
            float32), "on" or "off" (float32); see ``runtime.choose_precision``. The model file stays
            float32; probabilities are float32 either way.
        temperature: temperature scaling of the model's softmax (``calibration.apply_temperature`` on each view's
            P(malignant) before averaging; a subtype model's ``calibration.scale_probabilities`` on its types);
            1.0 = the raw softmax.
        threshold: an image is malignant when its (calibrated) P(malignant) >= threshold.
        learning: the model's learning-check state (``Run.learning``); "not checked" for a model file.

    Raises:
        ModelFileError: when the model's input or output does not fit.
    """

    def __init__(
        self,
        model: keras.Model,
        model_id: str = "model",
        magnification: int | str | None = None,
        batch_size: int = BATCH_SIZE,
        layer: str | None = None,
        stain_norm: str = "none",
        precision: str = "auto",
        temperature: float = 1.0,
        threshold: float = DEFAULT_THRESHOLD,
        learning: LearningStatus = LearningStatus(),
    ):
        self.input_size = check_model_io(model)
        self.task = model_task(model)
        self.precision = runtime.choose_precision(precision, bool(runtime.load_tensorflow().config.list_physical_devices("GPU")))
        self.model = model
        self.compute_model = runtime.with_precision(model, self.precision.policy)
        """``model`` computing in ``precision`` (``model`` itself for float32): predictions and Grad-CAM."""
        self.temperature = float(temperature)
        self.threshold = float(threshold)
        self.learning = learning
        self.stain_norm = stain_norm
        self.normalize = get_normalizer(stain_norm)
        self.model_id = model_id
        self.magnification = normalize_magnification(magnification)
        self.batch_size = batch_size
        self.layer = layer or find_gradcam_layer(model).layer

    @classmethod
    def from_file(cls, path: str | Path, model_id: str | None = None, **kwargs) -> "Predictor":
        """Load a ``.keras`` model file with ``model_loading.load_model`` (safe mode) and wrap it.

        Raises:
            ModelFileError: when the file is missing, unsafe or does not fit.
        """
        return cls(model_loading.load_model(path), model_id or Path(path).stem, **kwargs)

    @classmethod
    def from_run(cls, run: registry.Run, stage: str | None = None, model: keras.Model | None = None,
                 **kwargs) -> "Predictor":
        """The ``frozen`` or ``finetuned`` model of a run (default: its best), with the run's magnification,
        stain normalisation, Grad-CAM layer (run.json "model"; a run without that record: found from the model's
        layer names), the temperature and threshold of its ``calibration.json`` and its learning-check state.

        Args:
            run, stage: the registry model.
            model: the model of ``run.models[stage]`` when the caller has it loaded already (e.g. a cache of
                loaded models); default: loaded here with ``model_loading.load_model``.
            **kwargs: further ``Predictor`` arguments; given values win over the run's.

        Raises:
            RunNotFoundError: when the run has no such model file.
            ModelFileError: when the file cannot be loaded.
        """
        stage = stage or run.best_stage
        if stage not in run.models:
            raise RunNotFoundError(f"run {run.run_id} has no {stage or 'trained'} model. Received: stage={stage}")
        kwargs.setdefault("magnification", run.config.magnification_filter if run.config else None)
        kwargs.setdefault("stain_norm", run.config.stain_norm if run.config else "none")
        calibration = load_calibration(run.path, stage)
        kwargs.setdefault("temperature", calibration.temperature)
        kwargs.setdefault("threshold", calibration.threshold)
        kwargs.setdefault("learning", run.learning(stage))
        kwargs.setdefault("layer", run.info.get("model", {}).get("gradcam_layer"))
        model = model if model is not None else model_loading.load_model(run.models[stage])
        return cls(model, registry.model_id(run, stage), **kwargs)

    @property
    def explainer(self) -> Explainer:
        """The compiled functions of the model in its compute precision (built on first use): probabilities, Grad-CAM."""
        return explainer_for(self.compute_model, self.layer)

    @property
    def description(self) -> str:
        scope = "all-magnification" if self.magnification is None else f"{self.magnification}X"
        return f"{scope} model {self.model_id}"

    def predict(
        self,
        images: Sequence[np.ndarray],
        names: Sequence[str] | None = None,
        magnifications: int | str | Sequence[int | str | None] | None = None,
        tta: bool = False,
        cam: str | None = None,
        tile: bool = False,
        cam_class: int | None = DEFAULT_CAM_CLASS,
        max_maps: int = DEFAULT_MAX_MAPS,
    ) -> list[Prediction]:
        """Predict a batch of images.

        Args:
            images: ``(H, W, 3)`` uint8 RGB arrays of any size; not modified.
            names: file names (BreakHis names give the magnification); default "image N".
            magnifications: one value for all images or one per image (None entries: from the
                name); a given value overrides the name.
            tta: average the 8 flips/rotations of each input.
            cam: None, "gradcam", "gradcam++" or "scorecam": add a heat map per image.
            tile: tile images whose shorter side is >= ``TILE_MIN_SIDE`` (see module docstring).
            cam_class: class the heat map explains (default malignant); None = the verdict.
            max_maps: Score-CAM only: activation maps used per input.

        Returns:
            One :class:`Prediction` per image, in order.
        """
        if cam is not None:
            check_method(cam)
        if cam_class not in (None, 0, 1):
            raise ValueError(f"cam_class must be 0 (benign), 1 (malignant) or None. Received: cam_class={cam_class}")
        names, magnifications = _per_image(len(images), names, magnifications)
        resolved = [resolve_magnification(name, given) for name, given in zip(names, magnifications)]
        predictions = []
        for start in range(0, len(images), self.batch_size):
            stop = start + self.batch_size
            predictions += self._predict_chunk(
                images[start:stop], names[start:stop], resolved[start:stop], tta, cam, tile, cam_class, max_maps
            )
        return predictions

    # ------------------------------------------------------------------ internals

    def _plan(self, image: np.ndarray, name: str, tile: bool) -> _Plan:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"{name}: images must be (H, W, 3) uint8 RGB. Received: shape {image.shape}, dtype {image.dtype}")
        if self.normalize is not None:
            image = self.normalize(image)
        height, width = image.shape[:2]
        size = self.input_size
        whole = f"whole image {width}×{height} px resized to {size}×{size} as in training"
        if not tile:
            return _Plan((height, width), resize(image, size)[None], rule=whole)
        if not should_tile(height, width):
            rule = f"{whole}; not tiled: shorter side {min(height, width)} px < {TILE_MIN_SIDE} px (2× the BreakHis 460 px)"
            return _Plan((height, width), resize(image, size)[None], rule=rule)
        (tile_h, tile_w) = FIELD_OF_VIEW
        rows, cols, corners = tile_boxes(height, width)
        inputs = np.stack([resize(image[top : top + tile_h, left : left + tile_w], size) for top, left in corners])
        rule = (
            f"tiled ({width}×{height} px, shorter side >= {TILE_MIN_SIDE} px): {rows} rows × {cols} columns of overlapping tiles of "
            f"{tile_w}×{tile_h} px (the BreakHis field of view, assuming BreakHis pixel size), each resized to "
            f"{size}×{size} as in training; image probability = mean of the tile probabilities"
        )
        return _Plan((height, width), inputs, rows, cols, corners, rule)

    def _predict_chunk(self, images, names, resolved, tta, cam, tile, cam_class, max_maps) -> list[Prediction]:
        plans = [self._plan(np.asarray(image), name, tile) for image, name in zip(images, names)]
        views_per_input = TTA_VIEWS if tta else 1
        views = np.concatenate([np.concatenate([dihedral_views(x) for x in p.inputs]) if tta else p.inputs for p in plans])
        if cam == "gradcam":
            probabilities, class_maps = self.explainer.gradcam_all_classes(views, self.batch_size)
        else:
            probabilities, class_maps = self.explainer.probabilities(views, self.batch_size), None
        if self.temperature != 1.0 and self.task.is_binary:
            p_malignant = apply_temperature(probabilities[:, 1], self.temperature)
            probabilities = np.stack([1.0 - p_malignant, p_malignant], axis=1).astype(np.float32)
        elif self.temperature != 1.0:
            probabilities = scale_probabilities(probabilities, self.temperature).astype(np.float32)

        # Per image: view probabilities (tiles, views, K) → image probabilities → explained class (model output).
        per_image, offset = [], 0
        for plan in plans:
            count = len(plan.inputs) * views_per_input
            view_p = probabilities[offset : offset + count].reshape(len(plan.inputs), views_per_input, self.task.n_classes)
            image_p = view_p.mean(axis=(0, 1))
            side = cam_class if cam_class is not None else int(self.task.malignancy_probability(image_p) >= self.threshold)
            explained = side if self.task.is_binary else self._top_of_side(image_p, side)
            unaugmented = np.arange(offset, offset + count, views_per_input)
            per_image.append((view_p, image_p, explained, unaugmented))
            offset += count

        maps = [None] * len(plans)
        if cam == "gradcam":
            maps = [class_maps[unaugmented, explained] for _, _, explained, unaugmented in per_image]
        elif cam is not None:
            inputs = np.concatenate([plan.inputs for plan in plans])
            classes = np.concatenate([[explained] * len(plan.inputs) for plan, (_, _, explained, _) in zip(plans, per_image)])
            # tf-keras-vis' Grad-CAM++ and Score-CAM mix float32 gradients with the activations, so they run in float32.
            all_maps = explainer_for(self.model, self.layer).cams(inputs, cam, classes, max_maps, self.batch_size).maps
            bounds = np.cumsum([0] + [len(plan.inputs) for plan in plans])
            maps = [all_maps[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

        return [
            self._prediction(plan, name, magnification, view_p, image_p, explained, tile_maps, tta, cam)
            for plan, name, magnification, (view_p, image_p, explained, _), tile_maps in zip(plans, names, resolved, per_image, maps)
        ]

    def _top_of_side(self, image_p: np.ndarray, side: int) -> int:
        """A subtype model's output index of the most probable type of class ``side`` (0 benign, 1 malignant)."""
        of_side = np.array(self.task.malignant) == bool(side)
        return int(np.argmax(np.where(of_side, image_p, -1.0)))

    def _prediction(self, plan, name, resolved, view_p, image_p, explained, tile_maps, tta, cam) -> Prediction:
        magnification, source = resolved
        task = self.task
        p_malignant = float(task.malignancy_probability(image_p))
        p_benign = float(image_p[0]) if task.is_binary else 1.0 - p_malignant
        tta_p = task.malignancy_probability(view_p).mean(axis=0).astype(np.float32) if tta else None
        tta_std = float(tta_p.std()) if tta else None
        flagged, reason = low_confidence(p_malignant, tta_std, self.threshold)
        route = self.description
        if self.magnification is not None and magnification not in (None, self.magnification):
            route += f" (image is {magnification}X)"
        rule = plan.rule + (f"; test-time augmentation: mean of the {TTA_VIEWS} flips/rotations" if tta else "")
        tiling = None
        if plan.corners is not None:
            tiling = Tiling(plan.rows, plan.cols, FIELD_OF_VIEW,
                            task.malignancy_probability(view_p).mean(axis=1).reshape(plan.rows, plan.cols))
        return Prediction(
            name=name,
            magnification=magnification,
            magnification_source=source,
            p_benign=p_benign,
            p_malignant=p_malignant,
            verdict=CLASS_NAMES[int(p_malignant >= self.threshold)],
            confidence=p_malignant if p_malignant >= self.threshold else p_benign,
            low_confidence=flagged,
            low_confidence_reason=reason,
            model_id=self.model_id,
            route=route,
            image_size=plan.image_size,
            input_rule=rule,
            tta_p_malignant=tta_p,
            tta_std=tta_std,
            tiling=tiling,
            heatmap=None if cam is None else _heatmap(plan, tile_maps),
            cam_method=cam,
            cam_class=None if cam is None else int(task.malignant[explained]),
            threshold=self.threshold,
            temperature=self.temperature,
            learning=self.learning,
            task=task.name,
            class_probabilities=None if task.is_binary else {code: float(p) for code, p in zip(task.codes, image_p)},
            top_type=None if task.is_binary else task.codes[int(np.argmax(image_p))],
            cam_type=None if task.is_binary or cam is None else task.codes[explained],
        )


def _per_image(count: int, names, magnifications) -> tuple[list[str], list]:
    """Names (default "image N") and magnifications (one value broadcast) as lists of ``count``."""
    names = [f"image {i + 1}" for i in range(count)] if names is None else list(names)
    if magnifications is None or isinstance(magnifications, (str, int)):
        magnifications = [magnifications] * count
    if not len(names) == len(magnifications) == count:
        raise ValueError(
            f"names and magnifications must match the images. Received: {count} images, "
            f"{len(names)} names, {len(magnifications)} magnifications"
        )
    return names, list(magnifications)


def _heatmap(plan: _Plan, maps: np.ndarray) -> np.ndarray:
    """``(H, W)`` float32 in [0, 1]: one input's map upsampled, or tile maps stitched (overlaps averaged)."""
    if plan.corners is None:
        return normalize_map(upsample_map(maps[0], plan.image_size))
    total = np.zeros(plan.image_size, np.float32)
    count = np.zeros(plan.image_size, np.float32)
    tile_h, tile_w = FIELD_OF_VIEW
    for (top, left), cam in zip(plan.corners, maps):
        total[top : top + tile_h, left : left + tile_w] += upsample_map(cam, FIELD_OF_VIEW)
        count[top : top + tile_h, left : left + tile_w] += 1.0
    return normalize_map(total / np.maximum(count, 1.0))


# ----------------------------------------------------------------------------- routing


class ModelRouter:
    """Send each image to the model of its magnification, else to the all-magnification model.

    Args:
        predictors: magnification → predictor; keys "all" (or None) and 40/100/200/400 (int or "40X").

    Raises:
        ValueError: when no predictor is given.
    """

    def __init__(self, predictors: Mapping[int | str | None, Predictor]):
        if not predictors:
            raise ValueError("ModelRouter needs at least one predictor")
        self.predictors = {normalize_magnification(key): predictor for key, predictor in predictors.items()}

    @classmethod
    def serving(cls, predictor: Predictor) -> "ModelRouter":
        """The router of one model, keyed by the magnification it was trained on: an all-magnification model
        serves every image, a single-magnification model only the images of its magnification (:meth:`route`
        refuses the others)."""
        return cls({predictor.magnification: predictor})

    @classmethod
    def from_run(cls, run: registry.Run, stage: str | None = None, model: keras.Model | None = None) -> "ModelRouter":
        """:meth:`serving` one registry model (``breakhis predict --model RUN[:stage]``).

        Args:
            run, stage, model: as for :meth:`Predictor.from_run`.

        Raises:
            RunNotFoundError: when the run has no such model file.
            ModelFileError: when the file cannot be loaded.
        """
        return cls.serving(Predictor.from_run(run, stage, model))

    @classmethod
    def from_registry(cls, root=None, stage: str | None = None) -> "ModelRouter":
        """The registry's models: the default (all-magnification) model, plus for each magnification
        the newest finished run trained on that magnification alone.

        Raises:
            RunNotFoundError: when the registry has no usable model.
        """
        predictors: dict[int | None, Predictor] = {}
        default = default_model.get_default(root)
        if default is not None:
            run, default_stage = default
            predictor = Predictor.from_run(run, stage or default_stage)
            predictors[predictor.magnification] = predictor
        for run in registry.list_runs(root):  # newest first
            magnification = run.config.magnification_filter if run.config else None
            if run.status == RunStatus.DONE and run.models and magnification is not None and magnification not in predictors:
                predictors[magnification] = Predictor.from_run(run, stage if stage in run.models else None)
        if not predictors:
            raise RunNotFoundError(f"no trained model in {runs_dir(root)}: train one or import a .keras file")
        return cls(predictors)

    def route(self, magnification: int | None) -> tuple[Predictor, str]:
        """The predictor for an image's magnification (None = unknown) and the reason.

        Raises:
            MagnificationError: when no model fits (unknown or untrained magnification and no all-magnification model).
        """
        if magnification is not None and magnification in self.predictors:
            predictor = self.predictors[magnification]
            return predictor, f"{magnification}X model {predictor.model_id}"
        if None in self.predictors:
            predictor = self.predictors[None]
            reason = f"all-magnification model {predictor.model_id}"
            if len(self.predictors) > 1:
                reason += " (magnification unknown)" if magnification is None else f" (no {magnification}X model)"
            return predictor, reason
        trained = ", ".join(f"{m}X" for m in sorted(self.predictors))
        if magnification is None:
            raise MagnificationError(
                f"the magnification is unknown and only single-magnification models ({trained}) are loaded: "
                "set the magnification. Received: magnification=None"
            )
        raise MagnificationError(f"no model for this magnification (models: {trained}). Received: magnification={magnification}")

    def refusal(self, name: str, magnification: int | str | None = None) -> str | None:
        """Why no model serves an image (the :class:`MagnificationError` of :meth:`route`), or None when one does.

        Args:
            name: the image's file name (a BreakHis name gives the magnification).
            magnification: the caller's value (40/100/200/400, "40X"), which wins over the name; None = from the name.
        """
        try:
            self.route(resolve_magnification(name, magnification)[0])
        except MagnificationError as exc:
            return str(exc)
        return None

    def predict(
        self,
        images: Sequence[np.ndarray],
        names: Sequence[str] | None = None,
        magnifications: int | str | Sequence[int | str | None] | None = None,
        **options,
    ) -> list[Prediction]:
        """Like :meth:`Predictor.predict`, each image served by :meth:`route`; ``Prediction.route`` says which.

        Raises:
            MagnificationError: before any prediction, when an image cannot be routed.
        """
        names, magnifications = _per_image(len(images), names, magnifications)
        groups: dict[int, list[int]] = defaultdict(list)
        routes = []
        for index, (name, given) in enumerate(zip(names, magnifications)):
            predictor, reason = self.route(resolve_magnification(name, given)[0])
            groups[id(predictor)].append(index)
            routes.append((predictor, reason))
        results: list[Prediction | None] = [None] * len(images)
        for indices in groups.values():
            predictor = routes[indices[0]][0]
            served = predictor.predict(
                [images[i] for i in indices], [names[i] for i in indices], [magnifications[i] for i in indices], **options
            )
            for index, prediction in zip(indices, served):
                prediction.route = routes[index][1]
                results[index] = prediction
        return results


# ----------------------------------------------------------------------------- cases


def group_cases(predictions: Sequence[Prediction], by: str = "slide", rule: str = "mean") -> list[Case]:
    """Group predictions into cases and give each a verdict.

    Args:
        predictions: image predictions.
        by: "slide" groups by the BreakHis slide id of each name (other names form ``ONE_CASE``);
            "upload" makes all images one case.
        rule: "mean": malignant when the mean P(malignant) >= the images' decision threshold
            (``Prediction.threshold``; their mean when models of different thresholds served them);
            "majority": malignant when at least half the images are malignant.

    Returns:
        Cases in order of first appearance.
    """
    if by not in ("slide", "upload"):
        raise ValueError(f"by must be slide or upload. Received: by={by}")
    if rule not in CASE_RULES:
        raise ValueError(f"rule must be one of {', '.join(CASE_RULES)}. Received: rule={rule}")
    groups: dict[str, list[Prediction]] = {}
    for prediction in predictions:
        key = (slide_from_name(prediction.name) if by == "slide" else None) or ONE_CASE
        groups.setdefault(key, []).append(prediction)
    cases = []
    for case_id, members in groups.items():
        verdict, score, text = _case_verdict(members, rule)
        rows = []
        by_mag: dict[int | None, list[Prediction]] = defaultdict(list)
        for p in members:
            by_mag[p.magnification].append(p)
        for magnification in sorted(by_mag, key=lambda m: (m is None, m or 0)):
            group = by_mag[magnification]
            rows.append({
                "magnification": f"{magnification}X" if magnification else "unknown",
                "images": len(group),
                "mean_p_malignant": float(np.mean([p.p_malignant for p in group])),
                "malignant_images": sum(p.verdict == "malignant" for p in group),
                "verdict": _case_verdict(group, rule)[0],
            })
        cases.append(Case(
            case_id=case_id,
            predictions=members,
            p_malignant=float(np.mean([p.p_malignant for p in members])),
            verdict=verdict,
            rule=text,
            low_confidence=abs(score - _case_threshold(members, rule)) < LOW_CONFIDENCE_MARGIN,
            by_magnification=rows,
        ))
    return cases


def _case_threshold(members: Sequence[Prediction], rule: str) -> float:
    """The threshold a case's score is compared with: the images' decision threshold ("mean") or 0.5 ("majority")."""
    return float(np.mean([p.threshold for p in members])) if rule == "mean" else 0.5


def _case_verdict(members: Sequence[Prediction], rule: str) -> tuple[str, float, str]:
    """(verdict, score in [0, 1], rule with its numbers)."""
    n = len(members)
    if rule == "mean":
        score = float(np.mean([p.p_malignant for p in members]))
        threshold = _case_threshold(members, rule)
        verdict = CLASS_NAMES[int(score >= threshold)]
        return verdict, score, (f"mean P(malignant) of {n} image(s) = {score:.2f} {'>=' if score >= threshold else '<'} "
                                f"{_threshold_text(threshold)} → {verdict}")
    malignant = sum(p.verdict == "malignant" for p in members)
    score = malignant / n
    verdict = CLASS_NAMES[int(score >= 0.5)]
    return verdict, score, f"majority vote: {malignant} of {n} image(s) malignant (ties count as malignant) → {verdict}"
