"""Files of a slide analysis: tile table, QuPath GeoJSON, heat map, summary; read back for the app.

``write_slide_outputs(result, folder)`` writes, atomically:

- ``tiles.csv``: ``x,y,w,h,p_malignant,tissue_fraction`` (level-0 pixels), one row per tissue tile; a subtype
  model's table adds each type's probability (``p_A`` … ``p_PC``, ``Task.probability_columns``) and ``top_type``
  (:func:`tile_columns`);
- ``tiles.geojson``: a FeatureCollection of tile rectangles in level-0 pixel coordinates (x right,
  y down, as QuPath expects), each a QuPath "tile" object with the measurements
  ``P(malignant)`` and ``Tissue fraction`` and a Benign/Malignant classification (File → Import objects); a
  subtype model's tile is classified by its most probable type (its code, e.g. "DC") and also measures each type's
  probability (``P(A)`` … ``P(PC)``); the collection's ``properties`` name the model, its task and its
  learning-check state (``LearningStatus.text``);
- ``heatmap.png``: the P(malignant) grid coloured (jet, 0 blue … 1 red) at thumbnail size, RGBA,
  transparent where no tissue tile was predicted;
- ``thumbnail.png`` (RGB) and ``tissue_mask.png`` (white = tissue), the thumbnail's size;
- ``summary.json``: ``SlideResult.summary()`` (slide, training field, tile plan and rule, tissue, verdict; a subtype
  model's tumour types over the counted tiles).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from breakhis_core.inference.explain import colorize
from breakhis_core.files import read_json, write_bytes_atomic, write_json_atomic, write_text_atomic
from breakhis_core.data.images import encode_png
from breakhis_core.evaluation.learning_check import LearningStatus, report_fields
from breakhis_core.inference.report import ReportSection, html_report
from breakhis_core.slides.analysisdir import SlideAnalysisDir
from breakhis_core.slides.predict import SlideResult, TypeDistribution
from breakhis_core.task import TOP_TYPE_COLUMN, Task, task_named

TILE_MEASURES = ("p_malignant", "tissue_fraction")
"""The tiles.csv columns holding fractions in [0, 1] (read back as floats; the box columns as ints)."""
TILE_COLUMNS = ("x", "y", "w", "h", *TILE_MEASURES)
"""The tiles.csv columns of every analysis (a malignancy model's whole table)."""
CLASS_COLORS = {"Benign": [0, 160, 0], "Malignant": [200, 0, 0]}
"""QuPath classification colours (RGB) of a malignancy model's tiles."""


def tile_columns(task: Task) -> tuple[str, ...]:
    """The tiles.csv header of a model of ``task``: ``TILE_COLUMNS``, and for a subtype model each type's
    probability (``Task.probability_columns``) and the most probable type's code (``TOP_TYPE_COLUMN``)."""
    return TILE_COLUMNS if task.is_binary else (*TILE_COLUMNS, *task.probability_columns, TOP_TYPE_COLUMN)


def type_colors(task: Task) -> dict[str, list[int]]:
    """QuPath classification colours (RGB) of a subtype model's tiles, by type code: benign types in greens and
    blues, malignant types in reds and oranges (each side's types told apart by their shade)."""
    colors, seen = {}, {False: 0, True: 0}
    for code, malignant in zip(task.codes, task.malignant):
        shade = 50 * seen[malignant]
        colors[code] = [200, shade, shade // 2] if malignant else [0, 160 - shade // 2, shade]
        seen[malignant] += 1
    return colors


def tiles_csv(result: SlideResult) -> str:
    """The tile table as CSV text (columns :func:`tile_columns` of the result's task)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(tile_columns(result.task))
    for t in result.tiles:
        types = [] if result.task.is_binary else [*(f"{p:.6f}" for p in t.class_probabilities), t.top_type]
        writer.writerow([t.x, t.y, t.width, t.height, f"{t.p_malignant:.6f}", f"{t.tissue_fraction:.4f}", *types])
    return out.getvalue()


def tiles_geojson(result: SlideResult) -> dict:
    """A GeoJSON FeatureCollection of the tissue tiles in level-0 pixels, QuPath's object shape."""
    features = []
    threshold = result.verdict.threshold
    task = result.task
    colors = CLASS_COLORS if task.is_binary else type_colors(task)
    for t in result.tiles:
        ring = [[t.x, t.y], [t.x + t.width, t.y], [t.x + t.width, t.y + t.height], [t.x, t.y + t.height], [t.x, t.y]]
        measurements = {"P(malignant)": round(t.p_malignant, 6), "Tissue fraction": round(t.tissue_fraction, 4)}
        if task.is_binary:
            name = "Malignant" if t.p_malignant >= threshold else "Benign"
        else:
            name = t.top_type
            measurements |= {f"P({code})": round(p, 6) for code, p in zip(task.codes, t.class_probabilities)}
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": "tile",
                "name": f"tile r{t.row} c{t.col}",
                "classification": {"name": name, "color": colors[name]},
                "measurements": measurements,
            },
        })
    return {"type": "FeatureCollection",
            "properties": {"model_id": result.model_id, "task": task.name, "learning_check": result.learning.text},
            "features": features}


def heatmap_rgba(result: SlideResult) -> np.ndarray:
    """``(h, w, 4)`` uint8: each predicted tile's P(malignant) coloured over its box at thumbnail size, alpha 0
    where no tile was predicted (a thumbnail pixel belongs to the tile whose level-0 box holds its top-left)."""
    height, width = result.thumbnail.shape[:2]
    scale = result.mask.scale
    values = np.full((height, width), np.nan, np.float32)
    for tile in result.tiles:
        top, left = int(np.ceil(tile.y / scale)), int(np.ceil(tile.x / scale))
        bottom, right = int(np.ceil((tile.y + tile.height) / scale)), int(np.ceil((tile.x + tile.width) / scale))
        values[top:bottom, left:right] = tile.p_malignant
    known = ~np.isnan(values)
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[..., :3] = colorize(np.nan_to_num(values, nan=0.0))
    rgba[..., 3] = np.where(known, 255, 0)
    return rgba


def blend(thumbnail: np.ndarray, heatmap: np.ndarray, opacity: float) -> np.ndarray:
    """The thumbnail with the RGBA heat map laid over it at ``opacity`` in [0, 1] (RGB uint8)."""
    alpha = (heatmap[..., 3:4].astype(np.float32) / 255.0) * float(np.clip(opacity, 0.0, 1.0))
    mixed = thumbnail.astype(np.float32) * (1.0 - alpha) + heatmap[..., :3].astype(np.float32) * alpha
    return np.rint(mixed).astype(np.uint8)


def write_slide_outputs(result: SlideResult, folder: str | Path) -> Path:
    """Write the files of ``analysisdir.OUTPUT_FILES`` into ``folder`` (created); summary.json last. Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = SlideAnalysisDir(folder)
    write_text_atomic(files.tiles_csv, tiles_csv(result))
    write_text_atomic(files.tiles_geojson, json.dumps(tiles_geojson(result)))
    write_bytes_atomic(files.heatmap, encode_png(heatmap_rgba(result)))
    write_bytes_atomic(files.thumbnail, encode_png(result.thumbnail))
    write_bytes_atomic(files.tissue_mask, encode_png(np.repeat(result.mask.mask[..., None] * np.uint8(255), 3, 2)))
    write_json_atomic(files.summary, result.summary())
    return folder


def write_slide_report(folder: str | Path, lab=None) -> Path:
    """Write ``report.html`` (:func:`slide_report`) beside a saved analysis; returns its path."""
    saved = load_slide_outputs(folder)
    if saved is None:
        raise FileNotFoundError(f"no complete slide analysis in {folder}")
    path = Path(folder) / "report.html"
    write_text_atomic(path, slide_report(saved, lab))
    return path


@dataclass
class SavedSlide:
    """A slide analysis read back from its folder (what the app shows on reopening)."""

    folder: Path
    summary: dict
    thumbnail: np.ndarray
    heatmap: np.ndarray
    mask: np.ndarray
    tiles: list[dict]

    @property
    def verdict(self) -> dict:
        return self.summary["verdict"]

    @property
    def learning(self) -> LearningStatus:
        """The serving model's learning-check state at the time of the analysis ("not checked" for older analyses)."""
        return LearningStatus.from_record(self.summary.get("learning_check"))

    @property
    def task(self) -> Task:
        """The serving model's task (malignancy for analyses saved before tasks)."""
        return task_named(self.summary.get("task"))

    @property
    def types(self) -> TypeDistribution | None:
        """A subtype model's tumour types over the counted tiles; None for a malignancy model."""
        types = self.summary.get("types")
        return None if types is None else TypeDistribution.from_dict(types)


def load_slide_outputs(folder: str | Path) -> SavedSlide | None:
    """The saved analysis in ``folder``, or None when it is not complete (no summary.json)."""
    folder = Path(folder)
    files = SlideAnalysisDir(folder)
    summary = read_json(files.summary)
    if not isinstance(summary, dict):
        return None
    fractions = {*TILE_MEASURES, *task_named(summary.get("task")).probability_columns}
    with files.tiles_csv.open(newline="") as handle:
        tiles = [{k: v if k == TOP_TYPE_COLUMN else float(v) if k in fractions else int(v) for k, v in row.items()}
                 for row in csv.DictReader(handle)]
    return SavedSlide(folder=folder, summary=summary, thumbnail=_read_png(files.thumbnail),
                      heatmap=_read_png(files.heatmap, rgba=True), mask=_read_png(files.tissue_mask)[..., 0] > 127,
                      tiles=tiles)


def report_section(saved: SavedSlide, opacity: float = 0.5) -> ReportSection:
    """The slide's section of the HTML / PDF report: the heat map over the thumbnail (at ``opacity``) and the
    numbers behind the verdict (slide, pixel size, training field, tiles, tissue, verdict and its rule)."""
    summary, verdict, slide = saved.summary, saved.summary["verdict"], saved.summary["slide"]
    field, tissue = summary["training_field"], summary["tissue"]
    rows = {
        "Slide": slide["name"],
        "Size": f"{slide['width']} × {slide['height']} px at {slide['mpp_x']:.4g} × {slide['mpp_y']:.4g} µm/px "
                f"({slide['mpp_source']})",
        "Model": summary["model_id"],
        "Learning check": saved.learning.text,
        "Training field": f"{field['width_px']} × {field['height_px']} px at {field['mpp_x']:.3g} µm/px ({field['source']})",
        "Tiles": f"{tissue['tissue_tiles']} tissue tiles predicted of {tissue['grid_tiles']} in the grid; {summary['tile_rule']}",
        "Tissue": f"{tissue['share']:.0%} of the thumbnail (saturation threshold {tissue['threshold']:.2f}, {tissue['method']})",
        "Tissue analysed": coverage_text(summary),
        "Slide verdict": verdict["verdict"],
        "Rule": verdict["rule"],
    }
    if saved.types is not None:
        rows["Tumour types"] = (f"most probable type per tile: {saved.types.text()} (the verdict above rests on "
                                "P(malignant), the sum of the malignant types' probabilities)")
    if verdict.get("flag"):
        rows["Review"] = verdict["flag"]
    return ReportSection(title=f"Whole slide: {slide['name']}", template="_slide.html.j2",
                         data={"image": blend(saved.thumbnail, saved.heatmap, opacity), "rows": rows})


def coverage_text(summary: dict) -> str:
    """How much of the tissue area an analysis predicted and counted in its verdict, in words (an analysis saved
    before coverage was recorded says so)."""
    verdict, tissue = summary["verdict"], summary["tissue"]
    if "tissue_analysed" not in verdict:
        return "not recorded (analysed before the grid followed the tissue; analyse the slide again)"
    return (f"{verdict['tissue_analysed']:.0%} of the tissue area lies in predicted tiles; the verdict counts the "
            f"tiles with at least {tissue['min_tissue']:.0%} tissue, which hold {verdict['tissue_counted']:.0%} of it")


def slide_report(saved: SavedSlide, lab=None) -> str:
    """A self-contained HTML report of one slide analysis (the report's slide section alone)."""
    return html_report([], [], report_fields({saved.summary["model_id"]: saved.learning}), title=f"Whole-slide analysis: {saved.summary['slide']['name']}",
                       lab=lab, sections=[report_section(saved)])


def _read_png(path: Path, rgba: bool = False) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FileNotFoundError(f"cannot read {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if rgba else cv2.COLOR_BGR2RGB)
