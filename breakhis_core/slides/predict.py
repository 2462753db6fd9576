"""Whole-slide prediction: tiles matched to the training field, streamed through the Predictor.

How a slide is analysed (the rule is stored in ``SlideResult.tile_rule``):

1. The slide is opened and checked (``wsi.open_slide``): dimensions, levels, pixel size.
2. A thumbnail gives the tissue mask (``tissue.tissue_mask``).
3. :func:`plan_tiles` lays a grid of tiles over the tissue, each covering the same physical field as
   one training image (``pixelsize.TrainingField``: e.g. 344.7 × 217.8 µm for BreakHis 40X), so a tile
   is ``field / slide MPP`` level-0 pixels. The grid is centred on the box around the tissue and holds
   as few tiles as cover it (to within one mask pixel at each edge, the mask's own resolution), kept
   inside the slide (where the tissue spans a whole side, the last tile overlaps its neighbour). Every
   tile holding tissue on the mask is predicted, so every tissue pixel falls in an analysed tile.
   Tiles are read from the coarsest pyramid level that still gives at least the model input's
   resolution (OpenSlide's best level for that downsample) and resized to the model input (S×S), as
   the training images were.
4. A reader thread reads and resizes batches of tiles into a queue of at most ``QUEUE_BATCHES``
   batches while the model computes the previous one, so memory is bounded whatever the slide
   size: the queue, one tile region, the thumbnail and the per-tile table.
5. The slide verdict (:func:`slide_verdict`) rests on the tiles that are at least ``min_tissue`` tissue (a
   tile of mostly glass is not what the model was trained on; they are shown but not counted, unless no
   tile reaches it): malignant when the mean P(malignant) of the ``k`` most suspicious of them
   (``k = min(TOP_K, tiles)``) reaches the decision threshold; the share of them at or above the threshold
   is reported beside it, with the share of the tissue area analysed and the share inside the counted
   tiles. A verdict resting on less than ``MIN_VERDICT_TISSUE`` of the tissue area is flagged.
6. A subtype model (``task.py``: 8 tumour types) gives the same verdict, on P(malignant) = the sum of its malignant
   types' probabilities; each tile also keeps its type probabilities and most probable type, and
   :func:`type_distribution` states the types over the counted tiles (``SlideResult.types``).

Exports (CSV, GeoJSON, heat map, summary) are in ``slide_export.py``.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from breakhis_core import CLASS_NAMES
from breakhis_core.config import DEFAULT_THRESHOLD
from breakhis_core.errors import CancelledError, SlideError
from breakhis_core.notice import NOTICE
from breakhis_core.data.images import resize
from breakhis_core.evaluation.learning_check import LearningStatus
from breakhis_core.data.pixelsize import TrainingField
from breakhis_core.inference.predict import Prediction, Predictor
from breakhis_core.slides.tissue import TissueMask, tissue_mask
from breakhis_core.slides.wsi import SlideInfo, WholeSlide, open_slide
from breakhis_core.task import MALIGNANCY, Task

TOP_K = 10
"""The slide score is the mean P(malignant) of at most this many most suspicious tissue tiles."""
MIN_TISSUE = 0.3
"""Default: a predicted tile counts in the verdict when at least this share of it is tissue on the mask."""
MIN_VERDICT_TISSUE = 0.5
"""A verdict whose counted tiles hold less than this share of the tissue area is flagged for review."""
QUEUE_BATCHES = 2
"""Batches of tiles read ahead by the reader thread."""


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class TilePlan:
    """Tile geometry of one slide for one model.

    Attributes:
        level: pyramid level read; downsample: its level-0 pixels per level pixel.
        tile_width, tile_height: tile size in level-0 pixels.
        read_width, read_height: tile size in pixels of ``level`` (what is read, then resized).
        input_size: model input side S.
        xs, ys: level-0 left edge of each grid column and top edge of each row (the grid over the tissue).
        field_width_um, field_height_um: physical field of one tile as read, µm.
    """

    level: int
    downsample: float
    tile_width: int
    tile_height: int
    read_width: int
    read_height: int
    input_size: int
    xs: tuple[int, ...]
    ys: tuple[int, ...]
    field_width_um: float
    field_height_um: float

    @property
    def rows(self) -> int:
        return len(self.ys)

    @property
    def cols(self) -> int:
        return len(self.xs)

    def cell_of(self, x: int, y: int) -> tuple[int, int]:
        """The grid cell (row, col) of the tile whose level-0 top-left corner is (x, y)."""
        return self.ys.index(y), self.xs.index(x)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, values: dict) -> "TilePlan":
        """A plan from :meth:`to_dict` (``summary.json``), also one saved before grids followed the tissue
        (``rows``/``cols`` of a grid anchored at the slide's corner)."""
        values = dict(values)
        rows, cols = values.pop("rows", None), values.pop("cols", None)
        values.setdefault("xs", [col * values["tile_width"] for col in range(cols or 0)])
        values.setdefault("ys", [row * values["tile_height"] for row in range(rows or 0)])
        return cls(**{**values, "xs": tuple(values["xs"]), "ys": tuple(values["ys"])})


@dataclass(frozen=True)
class SlideTile:
    """One predicted tissue tile: level-0 box, grid cell, tissue share (of the tile, on the mask) and P(malignant);
    a subtype model's tile also has its calibrated type probabilities (``class_probabilities``, in the task's class
    order, summing to 1) and its most probable type (``top_type``, a code); both None for a malignancy model."""

    x: int
    y: int
    width: int
    height: int
    row: int
    col: int
    tissue_fraction: float
    p_malignant: float
    class_probabilities: tuple[float, ...] | None = None
    top_type: str | None = None


@dataclass(frozen=True)
class TypeDistribution:
    """How a subtype model reads a slide's tissue: per tumour type, the tiles whose most probable type it is and its
    mean probability, over the tiles counted in the verdict (at least ``min_tissue`` tissue).

    Attributes:
        codes, names: the task's classes (``Task.codes``, ``Task.class_names``), in output order.
        top_tiles: for each class, how many counted tiles have it as their most probable type.
        mean_probability: for each class, its mean probability over the counted tiles, in [0, 1].
    """

    codes: tuple[str, ...]
    names: tuple[str, ...]
    top_tiles: tuple[int, ...]
    mean_probability: tuple[float, ...]

    @property
    def tiles(self) -> int:
        """The counted tiles the distribution is over."""
        return sum(self.top_tiles)

    @property
    def shares(self) -> tuple[float, ...]:
        """For each class, the share of the counted tiles whose most probable type it is, in [0, 1] (summing to 1)."""
        return tuple(count / self.tiles if self.tiles else 0.0 for count in self.top_tiles)

    def text(self) -> str:
        """The types that are some tile's most probable one, most tiles first, e.g. "DC 60 % (6 tiles), F 40 % (4)"."""
        order = sorted((i for i, count in enumerate(self.top_tiles) if count), key=lambda i: -self.top_tiles[i])
        return ", ".join(f"{self.codes[i]} {self.shares[i]:.0%} ({self.top_tiles[i]} tile{'s' if self.top_tiles[i] > 1 else ''})"
                         for i in order) + f" of {self.tiles} counted tiles"

    def to_dict(self) -> dict:
        """``{"tiles": n, "types": {code: {"name", "top_tiles", "share", "mean_probability"}}}`` (summary.json)."""
        return {"tiles": self.tiles, "types": {
            code: {"name": name, "top_tiles": count, "share": share, "mean_probability": mean}
            for code, name, count, share, mean in zip(self.codes, self.names, self.top_tiles, self.shares,
                                                      self.mean_probability)}}

    @classmethod
    def from_dict(cls, values: dict) -> "TypeDistribution":
        """The distribution of :meth:`to_dict`."""
        types = values["types"]
        return cls(codes=tuple(types), names=tuple(t["name"] for t in types.values()),
                   top_tiles=tuple(int(t["top_tiles"]) for t in types.values()),
                   mean_probability=tuple(float(t["mean_probability"]) for t in types.values()))


@dataclass(frozen=True)
class SlideVerdict:
    """The slide verdict with its rule and numbers.

    Attributes:
        verdict: "benign" or "malignant".
        rule: the rule with its numbers, for the user.
        threshold: tile decision threshold.
        tissue_tiles: tiles counted in the verdict; malignant_tiles: those with P(malignant) >= threshold.
        share_above_threshold: malignant_tiles / tissue_tiles.
        top_k: k of the top-k mean; top_k_mean: mean P(malignant) of the k most suspicious tiles.
        mean_p_malignant: mean over the counted tiles.
        tissue_analysed: share of the slide's tissue area (on the mask) inside the predicted tiles, in [0, 1].
        tissue_counted: share of the tissue area inside the tiles counted in the verdict, in [0, 1].
        flag: why the verdict needs a careful look (too little of the tissue behind it), or None.
    """

    verdict: str
    rule: str
    threshold: float
    tissue_tiles: int
    malignant_tiles: int
    share_above_threshold: float
    top_k: int
    top_k_mean: float
    mean_p_malignant: float
    tissue_analysed: float = 1.0
    tissue_counted: float = 1.0
    flag: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class SlideProgress:
    """Progress of a slide analysis: tiles done of total, seconds elapsed and estimated left."""

    done: int
    total: int
    elapsed_s: float
    eta_s: float | None
    message: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class SlideResult:
    """The analysis of one slide (a report section can render it from ``summary()`` alone).

    Attributes:
        info: the slide's checked metadata.
        field: the training field the tiles match.
        plan: tile geometry.
        mask: the tissue mask (thumbnail grid).
        thumbnail: ``(h, w, 3)`` uint8 RGB, the whole slide small.
        tiles: the predicted tissue tiles, row by row.
        min_tissue: tissue share (of a tile) from which a tile counts in the verdict.
        verdict: the slide verdict.
        model_id: the model that served the tiles.
        learning: that model's learning-check state.
        task: that model's task (``task.py``); the verdict is on P(malignant) for both tasks.
        types: a subtype model's tumour types over the counted tiles; None for a malignancy model.
        tile_rule: how tiles were made and fed to the model.
        seconds: wall time of the tile predictions (reading included); tiles_per_s: tiles / seconds.
    """

    info: SlideInfo
    field: TrainingField
    plan: TilePlan
    mask: TissueMask
    thumbnail: np.ndarray
    tiles: list[SlideTile]
    verdict: SlideVerdict
    model_id: str
    tile_rule: str
    seconds: float
    grid_tiles: int = 0
    learning: LearningStatus = LearningStatus()
    min_tissue: float = MIN_TISSUE
    notice: str = NOTICE
    task: Task = MALIGNANCY
    types: TypeDistribution | None = None

    @property
    def tiles_per_s(self) -> float:
        return len(self.tiles) / self.seconds if self.seconds > 0 else 0.0

    def most_suspicious(self, count: int) -> list[SlideTile]:
        """The ``count`` tiles with the highest P(malignant), highest first."""
        return sorted(self.tiles, key=lambda t: -t.p_malignant)[:count]

    def summary(self) -> dict:
        """JSON-ready summary (summary.json): slide, model, its task and its learning check (``LearningStatus.to_dict``),
        field, plan, tissue, verdict, timing; a subtype model's also "types" (``TypeDistribution.to_dict``)."""
        return {
            "slide": self.info.to_dict(),
            "model_id": self.model_id,
            "task": self.task.name,
            "learning_check": self.learning.to_dict(),
            "training_field": self.field.to_dict(),
            "plan": self.plan.to_dict(),
            "tile_rule": self.tile_rule,
            "tissue": {"threshold": self.mask.threshold, "method": self.mask.method, "share": self.mask.tissue_share,
                       "grid_tiles": self.grid_tiles, "tissue_tiles": len(self.tiles), "min_tissue": self.min_tissue},
            "verdict": self.verdict.to_dict(),
            "seconds": self.seconds,
            "tiles_per_s": self.tiles_per_s,
            "notice": self.notice,
        } | ({} if self.types is None else {"types": self.types.to_dict()})


# ----------------------------------------------------------------------------- geometry


def plan_tiles(info: SlideInfo, slide: WholeSlide, field: TrainingField, input_size: int,
               mask: TissueMask | None = None) -> TilePlan:
    """The tile grid and read level of a slide for a model trained on ``field`` with input S×S.

    The tile covers ``field`` (µm) on the glass; the grid covers the box around the tissue of ``mask``
    (the whole slide without a mask, or without tissue; see the module docstring); the read level is the
    coarsest one at which a tile is still at least S pixels on its shorter side.

    Raises:
        SlideError: when the slide is smaller than one tile.
    """
    tile_w0 = field.width_um / info.mpp_x
    tile_h0 = field.height_um / info.mpp_y
    cols, rows = int(info.width // round(tile_w0)), int(info.height // round(tile_h0))
    if rows < 1 or cols < 1:
        raise SlideError(
            f"{info.name}: the slide ({info.width}×{info.height} px at {info.mpp_x:g} µm/px) is smaller than one tile "
            f"({tile_w0:.0f}×{tile_h0:.0f} px = the {field.width_um:.0f}×{field.height_um:.0f} µm training field). "
            f"Received: dimensions={info.width}x{info.height}"
        )
    level = slide.best_level(min(tile_w0, tile_h0) / input_size)
    downsample = info.level_downsamples[level]
    read_w, read_h = max(1, round(tile_w0 / downsample)), max(1, round(tile_h0 / downsample))
    tile_w, tile_h = round(tile_w0), round(tile_h0)
    box = (mask.box() if mask is not None else None) or (0, 0, info.width, info.height)
    tolerance = mask.scale if mask is not None else 0.0
    return TilePlan(level=level, downsample=downsample, tile_width=tile_w, tile_height=tile_h,
                    read_width=read_w, read_height=read_h, input_size=input_size,
                    xs=_grid_positions(box[0], box[2], tile_w, info.width, tolerance),
                    ys=_grid_positions(box[1], box[3], tile_h, info.height, tolerance),
                    field_width_um=read_w * downsample * info.mpp_x, field_height_um=read_h * downsample * info.mpp_y)


def _grid_positions(start: float, end: float, tile: int, limit: int, tolerance: float) -> tuple[int, ...]:
    """Level-0 starts of the tiles of one axis covering ``[start, end)``: as few as cover it to within ``tolerance``
    at each end, centred on it and kept inside ``[0, limit)`` (``limit >= tile``); when they cannot lie side by
    side inside the slide, they cover the whole axis and the last one overlaps its neighbour."""
    count = max(1, int(np.ceil((end - start - 2 * tolerance) / tile)))
    if count * tile > limit:
        count = int(np.ceil(limit / tile))
        return tuple(min(index * tile, limit - tile) for index in range(count))
    first = int(round(start + (end - start - count * tile) / 2))
    first = min(max(first, 0), limit - count * tile)
    return tuple(first + index * tile for index in range(count))


def tissue_tiles(plan: TilePlan, mask: TissueMask) -> list[tuple[int, int, float]]:
    """(row, col, tissue fraction) of the grid cells holding any tissue on the mask, row by row."""
    cells = []
    for row, y in enumerate(plan.ys):
        for col, x in enumerate(plan.xs):
            share = mask.fraction(x, y, plan.tile_width, plan.tile_height)
            if share > 0:
                cells.append((row, col, share))
    return cells


def read_tile(slide: WholeSlide, plan: TilePlan, row: int, col: int) -> np.ndarray:
    """A grid cell at the read level, ``(read_height, read_width, 3)`` uint8 RGB (not resized)."""
    return slide.read(plan.level, plan.xs[col], plan.ys[row], plan.read_width, plan.read_height)


# ----------------------------------------------------------------------------- verdict


def slide_verdict(p_malignant: np.ndarray, threshold: float = DEFAULT_THRESHOLD, top_k: int = TOP_K,
                  tissue_analysed: float = 1.0, tissue_counted: float = 1.0) -> SlideVerdict:
    """The slide verdict from the P(malignant) of the tiles it counts (see the module docstring).

    Args:
        p_malignant: ``(n,)`` P(malignant) of the counted tiles.
        threshold: tile and slide decision threshold.
        top_k: the slide score is the mean of at most this many highest tile probabilities.
        tissue_analysed, tissue_counted: shares of the tissue area in the predicted and in the counted tiles,
            in [0, 1]; the verdict is flagged when the counted share is below ``MIN_VERDICT_TISSUE``.
    """
    p = np.sort(np.asarray(p_malignant, np.float64))[::-1]
    n = len(p)
    k = min(top_k, n)
    top_mean = float(p[:k].mean()) if k else 0.0
    above = int((p >= threshold).sum())
    verdict = CLASS_NAMES[int(k > 0 and top_mean >= threshold)]
    share = above / n if n else 0.0
    rule = (f"mean P(malignant) of the {k} most suspicious of {n} tissue tiles = {top_mean:.2f} "
            f"{'>=' if top_mean >= threshold else '<'} {threshold:g} → {verdict}; "
            f"{above} of {n} tiles ({share:.0%}) have P(malignant) >= {threshold:g}")
    flag = None
    if tissue_counted < MIN_VERDICT_TISSUE:
        flag = (f"the verdict rests on tiles holding {tissue_counted:.0%} of the tissue area (less than "
                f"{MIN_VERDICT_TISSUE:.0%}): most tissue lies in tiles that are mostly glass (edges, thin or scattered "
                f"tissue); review the slide")
    return SlideVerdict(verdict=verdict, rule=rule, threshold=threshold, tissue_tiles=n, malignant_tiles=above,
                        share_above_threshold=share, top_k=k, top_k_mean=top_mean,
                        mean_p_malignant=float(p.mean()) if n else 0.0, tissue_analysed=tissue_analysed,
                        tissue_counted=tissue_counted, flag=flag)


def type_distribution(tiles: list[SlideTile], task: Task) -> TypeDistribution:
    """A subtype model's tumour types over ``tiles`` (those counted in the verdict): the tiles per most probable type
    and each type's mean probability.

    Raises:
        ValueError: for a task without types (malignancy) or tiles without type probabilities.
    """
    if task.is_binary or any(t.class_probabilities is None for t in tiles):
        raise ValueError(f"a type distribution needs tiles of a subtype model. Received: task={task.name}")
    probabilities = np.array([t.class_probabilities for t in tiles], np.float64).reshape(len(tiles), task.n_classes)
    top = np.bincount(probabilities.argmax(axis=1), minlength=task.n_classes) if len(tiles) else np.zeros(task.n_classes)
    mean = probabilities.mean(axis=0) if len(tiles) else np.zeros(task.n_classes)
    return TypeDistribution(codes=task.codes, names=task.class_names, top_tiles=tuple(int(n) for n in top),
                            mean_probability=tuple(float(m) for m in mean))


# ----------------------------------------------------------------------------- analysis


def analyze_slide(
    path: str | Path,
    predictor: Predictor,
    field: TrainingField,
    mpp: float | None = None,
    tissue_threshold: float | None = None,
    min_tissue: float = MIN_TISSUE,
    progress: Callable[[SlideProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    threshold: float | None = None,
) -> SlideResult:
    """Predict every tissue tile of a slide.

    Args:
        path: the slide file.
        predictor: the model (batched by its ``batch_size``).
        field: the physical field of one training image (``pixelsize.training_field``).
        mpp: µm per level-0 pixel, when the slide's metadata lacks it (or to override it).
        tissue_threshold: saturation threshold of the tissue mask in [0, 1]; None: Otsu's.
        min_tissue: a predicted tile counts in the verdict when at least this share of it is tissue.
        progress: called after each batch (and once before the first).
        should_cancel: polled between batches; True stops the analysis with CancelledError.
        threshold: tile and slide decision threshold; None: the predictor's (the run's operating point,
            ``calibration.json``; 0.5 without one).

    Raises:
        SlideError, PixelSizeError: the slide cannot be used (one-line reason naming it).
        CancelledError: when ``should_cancel`` returned True.
    """
    with open_slide(path, mpp) as slide:
        info = slide.info
        thumbnail, scale = slide.thumbnail()
        mask = tissue_mask(thumbnail, scale, tissue_threshold)
        plan = plan_tiles(info, slide, field, predictor.input_size, mask)
        cells = tissue_tiles(plan, mask)
        if not cells:
            raise SlideError(f"{info.name}: no tissue found (saturation threshold {mask.threshold:.2f}, "
                             f"{mask.method}). Received: tissue_threshold={tissue_threshold}")
        started = time.perf_counter()
        predictions = _predict_cells(slide, plan, cells, predictor, progress, should_cancel, started)
        seconds = time.perf_counter() - started
    tiles = [
        SlideTile(x=plan.xs[col], y=plan.ys[row], width=plan.tile_width, height=plan.tile_height,
                  row=row, col=col, tissue_fraction=share, p_malignant=float(p.p_malignant),
                  class_probabilities=None if p.class_probabilities is None else tuple(p.class_probabilities.values()),
                  top_type=p.top_type)
        for (row, col, share), p in zip(cells, predictions)
    ]
    counted = [tile for tile in tiles if tile.tissue_fraction >= min_tissue] or tiles
    analysed_share, counted_share = (mask.covered_share([(t.x, t.y, t.width, t.height) for t in chosen])
                                     for chosen in (tiles, counted))
    rule = (f"{plan.rows}×{plan.cols} grid over the tissue of tiles of {plan.tile_width}×{plan.tile_height} level-0 px "
            f"({plan.field_width_um:.1f}×{plan.field_height_um:.1f} µm, the training field {field.width_um:.1f}×"
            f"{field.height_um:.1f} µm: {field.source}), read at level {plan.level} (downsample {plan.downsample:g}) "
            f"as {plan.read_width}×{plan.read_height} px and resized to {plan.input_size}×{plan.input_size} as in "
            f"training; every tile holding tissue on the mask is predicted ({analysed_share:.0%} of the tissue area), "
            f"those with >= {min_tissue:.0%} tissue count in the verdict ({len(counted)} of {len(tiles)}, holding "
            f"{counted_share:.0%} of the tissue area)")
    verdict = slide_verdict(np.asarray([t.p_malignant for t in counted], np.float32),
                            predictor.threshold if threshold is None else threshold,
                            tissue_analysed=analysed_share, tissue_counted=counted_share)
    task = predictor.task
    return SlideResult(info=info, field=field, plan=plan, mask=mask, thumbnail=thumbnail, tiles=tiles,
                       verdict=verdict, model_id=predictor.model_id, tile_rule=rule, seconds=seconds,
                       grid_tiles=plan.rows * plan.cols, min_tissue=min_tissue, learning=predictor.learning,
                       task=task, types=None if task.is_binary else type_distribution(counted, task))


def _predict_cells(slide, plan, cells, predictor, progress, should_cancel, started) -> list[Prediction]:
    """The prediction of each cell, in order; a reader thread fills a bounded queue of resized batches."""
    batch = max(1, predictor.batch_size)
    batches: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES)
    stop = threading.Event()

    def reader() -> None:
        try:
            for start in range(0, len(cells), batch):
                if stop.is_set():
                    return
                inputs = np.stack([resize(read_tile(slide, plan, row, col), plan.input_size)
                                   for row, col, _ in cells[start : start + batch]])
                _put(batches, inputs, stop)
            _put(batches, None, stop)
        except BaseException as exc:  # handed to the consumer, which raises it
            _put(batches, exc, stop)

    thread = threading.Thread(target=reader, name="slide-reader", daemon=True)
    thread.start()
    total, done, out = len(cells), 0, []
    try:
        _report(progress, 0, total, started)
        while True:
            if should_cancel is not None and should_cancel():
                raise CancelledError(f"{slide.info.name}: analysis cancelled after {done} of {total} tiles")
            item = batches.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            out += predictor.predict(list(item))
            done += len(item)
            _report(progress, done, total, started)
    finally:
        stop.set()
        while thread.is_alive():  # unblock a reader waiting on a full queue, then let it finish its read
            try:
                batches.get_nowait()
            except queue.Empty:
                thread.join(0.05)
    return out


def _put(batches: queue.Queue, item, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            batches.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _report(progress, done: int, total: int, started: float) -> None:
    if progress is None:
        return
    elapsed = time.perf_counter() - started
    eta = elapsed / done * (total - done) if done else None
    eta_text = "" if eta is None else f", ETA {int(eta // 60)}m{int(eta % 60):02d}s"
    progress(SlideProgress(done, total, elapsed, eta, f"{done}/{total} tissue tiles{eta_text}"))


def explain_tiles(path: str | Path, plan: TilePlan, predictor: Predictor, cells: list[tuple[int, int]],
                  mpp: float | None = None, cam: str = "gradcam") -> list[tuple[np.ndarray, np.ndarray]]:
    """Re-read grid cells (row, col) of a slide at the plan's read level and explain them.

    Args:
        path, mpp: the slide and the pixel size given for it (None: its metadata), as analysed.
        plan: the analysis' tile plan.
        predictor: the model that predicted the tiles.
        cells: the (row, col) of each tile to explain.
        cam: a method of ``explain.METHODS``.

    Returns:
        Per cell: ``(h, w, 3)`` uint8 RGB at the read level and its ``(h, w)`` float32 heat map in [0, 1].
    """
    if not cells:
        return []
    with open_slide(path, mpp) as slide:
        images = [read_tile(slide, plan, row, col) for row, col in cells]
    predictions = predictor.predict(images, cam=cam)
    return [(image, prediction.heatmap) for image, prediction in zip(images, predictions)]


# ----------------------------------------------------------------------------- model → field


def model_for_slides(model_ref: str | None, runs_root=None, magnification: int | str | None = None,
                     batch_size: int | None = None) -> tuple[Predictor, TrainingField]:
    """The predictor of ``model_ref`` ("RUN[:stage]", default: the registry's active model) and its training field.

    Raises:
        RunNotFoundError: no such run, or no active model.
        PixelSizeError: the training images' pixel size is unknown.
        MagnificationError: a magnification that is not 40/100/200/400 or not the model's own.
    """
    from breakhis_core.lab.paths import runs_dir
    from breakhis_core.runs import default_model, registry
    from breakhis_core.errors import RunNotFoundError
    from breakhis_core.data.pixelsize import training_field
    from breakhis_core.inference.predict import normalize_magnification

    magnification = normalize_magnification(magnification)
    if model_ref is None:
        default = default_model.get_default(runs_root)
        if default is None:
            raise RunNotFoundError(f"no active model in {runs_dir(runs_root)}: pass --model RUN or choose one")
        run, stage = default
    else:
        run, stage = registry.resolve_model(model_ref, runs_root)
    kind = (run.info.get("data") or {}).get("kind")
    field = training_field(run.config, run.path, magnification, "manifest" if kind == "manifest" else
                           ("breakhis" if kind else None))
    options = {} if batch_size is None else {"batch_size": batch_size}
    return Predictor.from_run(run, stage, **options), field
