"""Files of a slide analysis: tile table, QuPath GeoJSON, heat map, summary; read back for the app.

``write_slide_outputs(result, folder)`` writes, atomically:

- ``tiles.csv``: ``x,y,w,h,p_malignant,tissue_fraction`` (level-0 pixels), one row per tissue tile;
- ``tiles.geojson``: a FeatureCollection of tile rectangles in level-0 pixel coordinates (x right,
  y down, as QuPath expects), each a QuPath "tile" object with the measurements
  ``P(malignant)`` and ``Tissue fraction`` and a Benign/Malignant classification (File → Import objects);
  the collection's ``properties`` name the model and its learning-check state (``LearningStatus.text``);
- ``heatmap.png``: the P(malignant) grid coloured (jet, 0 blue … 1 red) at thumbnail size, RGBA,
  transparent where no tissue tile was predicted;
- ``thumbnail.png`` (RGB) and ``tissue_mask.png`` (white = tissue), the thumbnail's size;
- ``summary.json``: ``SlideResult.summary()`` (slide, training field, tile plan and rule, tissue, verdict).
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
from breakhis_core.slides.predict import SlideResult

TILE_MEASURES = ("p_malignant", "tissue_fraction")
"""The tiles.csv columns holding fractions in [0, 1] (read back as floats; the box columns as ints)."""
TILE_COLUMNS = ("x", "y", "w", "h", *TILE_MEASURES)
CLASS_COLORS = {"Benign": [0, 160, 0], "Malignant": [200, 0, 0]}


def tiles_csv(result: SlideResult) -> str:
    """The tile table as CSV text."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(TILE_COLUMNS)
    for t in result.tiles:
        writer.writerow([t.x, t.y, t.width, t.height, f"{t.p_malignant:.6f}", f"{t.tissue_fraction:.4f}"])
    return out.getvalue()


def tiles_geojson(result: SlideResult) -> dict:
    """A GeoJSON FeatureCollection of the tissue tiles in level-0 pixels, QuPath's object shape."""
    features = []
    threshold = result.verdict.threshold
    for t in result.tiles:
        ring = [[t.x, t.y], [t.x + t.width, t.y], [t.x + t.width, t.y + t.height], [t.x, t.y + t.height], [t.x, t.y]]
        name = "Malignant" if t.p_malignant >= threshold else "Benign"
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": "tile",
                "name": f"tile r{t.row} c{t.col}",
                "classification": {"name": name, "color": CLASS_COLORS[name]},
                "measurements": {"P(malignant)": round(t.p_malignant, 6), "Tissue fraction": round(t.tissue_fraction, 4)},
            },
        })
    return {"type": "FeatureCollection", "properties": {"model_id": result.model_id, "learning_check": result.learning.text},
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


def load_slide_outputs(folder: str | Path) -> SavedSlide | None:
    """The saved analysis in ``folder``, or None when it is not complete (no summary.json)."""
    folder = Path(folder)
    files = SlideAnalysisDir(folder)
    summary = read_json(files.summary)
    if not isinstance(summary, dict):
        return None
    with files.tiles_csv.open(newline="") as handle:
        tiles = [{k: float(v) if k in TILE_MEASURES else int(v) for k, v in row.items()}
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
