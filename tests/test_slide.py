"""Whole-slide reading, tissue, tiling, prediction and exports on pyramidal TIFFs built from real BreakHis pixels."""

from __future__ import annotations

import dataclasses
import json

import markupsafe
import numpy as np
import pytest

from breakhis_core import cli
from breakhis_core.slides import wsi
from breakhis_core.errors import BreakHisError, PixelSizeError, SlideError
from breakhis_core.evaluation.learning_check import DID_NOT_LEARN, LearningStatus
from breakhis_core.data.pixelsize import BREAKHIS_MPP, breakhis_field, training_field
from breakhis_core.inference.predict import Predictor
from breakhis_core.slides.predict import analyze_slide, model_for_slides, plan_tiles, slide_verdict
from breakhis_core.slides.analysisdir import OUTPUT_FILES
from breakhis_core.slides.export import (
    load_slide_outputs,
    slide_report,
    tiles_geojson,
    write_slide_outputs,
)
from breakhis_core.slides.tissue import tissue_mask
from slides import SLIDE_MPP, build_slide, write_bad_slides


@pytest.fixture(scope="module")
def built(breakhis_dir, tmp_path_factory):
    return build_slide(tmp_path_factory.mktemp("slides") / "breakhis.tiff", breakhis_dir)


@pytest.fixture(scope="module")
def bad(breakhis_dir, tmp_path_factory):
    return write_bad_slides(tmp_path_factory.mktemp("bad_slides"), breakhis_dir)


@pytest.fixture(scope="module")
def result(built, tiny_model):
    return analyze_slide(built.path, Predictor(tiny_model, "tiny", batch_size=4), breakhis_field(40))


def test_breakhis_pixel_size_follows_the_acquisition_setup():
    # 6.5 µm camera pixels behind a 3.3× relay lens and the 4× objective of "40X"
    assert BREAKHIS_MPP[40][0] == pytest.approx(6.5 / 13.2)
    assert BREAKHIS_MPP[400][1] == pytest.approx(6.25 / 132)
    assert breakhis_field(40).width_um == pytest.approx(344.7, abs=0.1)


def test_training_field_of_a_run(tiny_run):
    from breakhis_core.runs import registry

    run = registry.load_run(tiny_run)
    assert training_field(run.config, run.path, None, "breakhis").source.startswith("BreakHis 40X")  # all-mag default
    assert training_field(run.config, run.path, 200, "breakhis").mpp_x == pytest.approx(BREAKHIS_MPP[200][0])
    with pytest.raises(PixelSizeError, match="--mpp"):
        training_field(None, None, None, "manifest")


def test_reading_checks_metadata_and_picks_the_level(built):
    with wsi.open_slide(built.path) as slide:
        info = slide.info
        assert (info.width, info.height, info.level_count) == (built.width, built.height, 3)
        assert (info.mpp_x, info.mpp_source) == (pytest.approx(SLIDE_MPP), "metadata")
        plan = plan_tiles(info, slide, breakhis_field(40), 32)
    # needed downsample = shorter tile side / input = 436 / 32 ≈ 13.6 → the coarsest level not above it is 4×
    needed = min(built.tile_width, built.tile_height) / 32
    expected = max(i for i, d in enumerate(info.level_downsamples) if d <= needed)
    assert plan.level == expected == 1
    assert min(plan.read_width, plan.read_height) >= 32


def test_tile_covers_the_training_field(result):
    field = breakhis_field(40)
    assert result.plan.field_width_um == pytest.approx(field.width_um, rel=0.02)
    assert result.plan.field_height_um == pytest.approx(field.height_um, rel=0.02)
    tile = result.tiles[0]
    assert tile.width * SLIDE_MPP == pytest.approx(field.width_um, rel=0.02)
    assert tile.height * SLIDE_MPP == pytest.approx(field.height_um, rel=0.02)


def test_the_grid_lies_on_the_tissue_and_covers_it(result, built):
    x0, y0, x1, y1 = built.tissue_box
    assert result.tiles, "the tissue band must give tiles"
    for t in result.tiles:  # the band is 2 × 4 training fields: no tile lies in the white margin
        assert t.tissue_fraction > 0
        assert x0 < t.x + t.width and t.x < x1 and y0 < t.y + t.height and t.y < y1, t
    assert (result.plan.rows, result.plan.cols) == (2, 4) and result.grid_tiles == 8  # as few tiles as cover it
    assert 6 <= len(result.tiles) <= 8  # a pale field may hold no tissue on the mask
    assert result.verdict.tissue_analysed == 1.0  # every tissue pixel of the mask lies in a predicted tile
    assert result.verdict.flag is None


def test_tissue_off_a_corner_grid_is_still_covered_tile_for_field(breakhis_dir, tiny_model, tmp_path):
    """Tissue half a tile off the slide corner's grid: a grid anchored at the corner, predicting tiles of >= 30 %
    tissue, left part of the tissue unanalysed; the grid now follows the tissue and covers all of it."""
    shifted = build_slide(tmp_path / "shifted.tiff", breakhis_dir, rows=1, margin_tiles=1.5)
    result = analyze_slide(shifted.path, Predictor(tiny_model, "tiny", batch_size=4), breakhis_field(40))
    mask, plan = result.mask, result.plan
    tile_w, tile_h = plan.tile_width, plan.tile_height
    corner_grid = [(col * tile_w, row * tile_h, tile_w, tile_h) for row in range(shifted.height // tile_h)
                   for col in range(shifted.width // tile_w)]
    corner_kept = [box for box in corner_grid if mask.fraction(*box) >= 0.3]
    assert mask.covered_share(corner_kept) < 0.95  # what a corner-anchored grid missed on this slide
    x0, y0, x1, y1 = mask.box()
    assert plan.xs[0] <= x0 + mask.scale and plan.xs[-1] + tile_w >= x1 - mask.scale
    assert plan.ys[0] <= y0 + mask.scale and plan.ys[-1] + tile_h >= y1 - mask.scale
    assert plan.cols * tile_w < (x1 - x0) + tile_w + 2 * mask.scale  # as few columns as cover the tissue
    assert result.verdict.tissue_analysed == 1.0 and result.verdict.tissue_counted > mask.covered_share(corner_kept)
    assert "100% of the tissue area" in result.tile_rule


def test_tissue_mask_threshold_is_adjustable(built):
    with wsi.open_slide(built.path) as slide:
        thumbnail, scale = slide.thumbnail()
    auto, strict = tissue_mask(thumbnail, scale), tissue_mask(thumbnail, scale, threshold=0.3)
    assert strict.threshold == 0.3 and strict.method == "given"
    assert strict.tissue_share < auto.tissue_share
    x0, y0, x1, y1 = built.tissue_box
    assert auto.fraction(0, 0, x0 - 2 * scale, built.height) == 0.0  # left margin (less the edge pixel): no tissue
    assert auto.fraction(x0, y0, x1 - x0, y1 - y0) > 0.5


def test_geojson_is_level0_inside_the_slide_one_feature_per_tile(result, built, tmp_path):
    folder = write_slide_outputs(result, tmp_path / "out")
    assert sorted(p.name for p in folder.iterdir()) == sorted(OUTPUT_FILES)
    collection = json.loads((folder / "tiles.geojson").read_text())
    assert collection == tiles_geojson(result)
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == len(result.tiles)
    assert collection["properties"] == {"model_id": "tiny", "task": "malignancy", "learning_check": "not checked"}  # a bare model file
    for feature, tile in zip(collection["features"], result.tiles):
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        ring = np.array(feature["geometry"]["coordinates"][0])
        assert ring.shape == (5, 2) and (ring[0] == ring[-1]).all()
        assert ring[:, 0].min() == tile.x and ring[:, 0].max() == tile.x + tile.width  # level-0 px, not thumbnail px
        assert 0 <= ring[:, 0].min() and ring[:, 0].max() <= built.width
        assert 0 <= ring[:, 1].min() and ring[:, 1].max() <= built.height
        assert feature["properties"]["measurements"]["P(malignant)"] == pytest.approx(tile.p_malignant, abs=1e-6)
    saved = load_slide_outputs(folder)
    assert len(saved.tiles) == len(result.tiles) and saved.verdict == result.verdict.to_dict()
    assert saved.learning == result.learning == LearningStatus()
    failed = LearningStatus(DID_NOT_LEARN, ("validation ROC AUC 0.000 (95 % CI 0.000–0.000): ranks reversed",))
    flagged = dataclasses.replace(result, learning=failed)
    assert tiles_geojson(flagged)["properties"]["learning_check"] == failed.text
    page = slide_report(load_slide_outputs(write_slide_outputs(flagged, tmp_path / "flagged")))
    assert failed.warning("tiny") in page and "Learning check" in page
    assert saved.heatmap.shape[:2] == saved.thumbnail.shape[:2] == result.thumbnail.shape[:2]
    assert saved.heatmap[..., 3].any() and not saved.heatmap[:5, :5, 3].any()  # transparent in the margin


def test_slide_verdict_rule_and_numbers():
    verdict = slide_verdict(np.array([0.9, 0.8, 0.1, 0.2, 0.3]), top_k=2)
    assert verdict.verdict == "malignant" and verdict.top_k_mean == pytest.approx(0.85)
    assert verdict.malignant_tiles == 2 and verdict.share_above_threshold == pytest.approx(0.4)
    assert "0.85" in verdict.rule and "2 of 5" in verdict.rule
    assert verdict.flag is None


def test_a_verdict_on_too_little_of_the_tissue_is_flagged():
    verdict = slide_verdict(np.array([0.2, 0.1]), tissue_analysed=1.0, tissue_counted=0.35)
    assert verdict.verdict == "benign" and "35% of the tissue area" in verdict.flag and "review" in verdict.flag
    assert slide_verdict(np.array([0.2]), tissue_counted=0.5).flag is None


def test_tile_plans_saved_before_the_grid_followed_the_tissue_still_open():
    from breakhis_core.slides.predict import TilePlan

    old = {"level": 1, "downsample": 4.0, "tile_width": 700, "tile_height": 460, "read_width": 175, "read_height": 115,
           "input_size": 32, "rows": 2, "cols": 3, "field_width_um": 344.7, "field_height_um": 217.8}
    plan = TilePlan.from_dict(old)
    assert (plan.rows, plan.cols, plan.xs, plan.ys) == (2, 3, (0, 700, 1400), (0, 460))
    assert plan.cell_of(1400, 460) == (1, 2)
    assert TilePlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    assert slide_verdict(np.array([0.4, 0.1])).verdict == "benign"


def test_bad_slides_each_get_their_reason(bad, tiny_model, monkeypatch):
    predictor = Predictor(tiny_model, "tiny")
    expected = {
        "renamed": "PNG image, not a whole-slide image",
        "truncated": "truncated or corrupt",
        "no_mpp": "does not record its pixel size",
        "absurd": "generic-tiff",
        "no_tissue": "no tissue found",
        "unsupported": "Philips iSyntax is a format OpenSlide does not read",
    }
    for case, path in bad.items():
        with pytest.raises(BreakHisError, match=expected[case]) as caught:
            analyze_slide(path, predictor, breakhis_field(40))
        assert "\n" not in str(caught.value) and path.name in str(caught.value)
    # a given pixel size lets the slide without one be read
    assert analyze_slide(bad["no_mpp"], predictor, breakhis_field(40), mpp=SLIDE_MPP).tiles
    monkeypatch.setattr(wsi, "MAX_SIDE", 1000)  # our own check, before any read
    with pytest.raises(SlideError, match="outside 1..1,000 px a side"):
        wsi.open_slide(bad["no_mpp"], mpp=SLIDE_MPP)


def test_cli_predict_slide(tiny_run, built, bad, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["predict-slide", str(built.path), str(bad["renamed"]), "--model", str(tiny_run), "--out", str(out),
                     "--batch-size", "4", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["slides"]) == 1 and report["errors"][0]["slide"] == str(bad["renamed"])
    summary = report["slides"][0]
    assert summary["verdict"]["verdict"] in ("benign", "malignant") and summary["tissue"]["tissue_tiles"] > 0
    assert (out / "breakhis" / "tiles.csv").read_text().startswith("x,y,w,h,p_malignant,tissue_fraction\n")
    page = (out / "breakhis" / "report.html").read_text()
    assert f"Whole slide: {built.path.name}" in page and "data:image/png;base64," in page
    assert str(markupsafe.escape(summary["verdict"]["rule"])) in page  # the rule, as the autoescaped page writes it
    assert f"{summary['tissue']['tissue_tiles']} tissue tiles predicted" in page
    code = cli.main(["predict-slide", str(bad["renamed"]), str(bad["no_tissue"]), "--model", str(tiny_run)])
    err = capsys.readouterr().err
    assert code == 2 and "none of the 2 slides could be read" in err
    for bad_option in (["--mag", "50"], ["--tissue-threshold", "2"], ["--mpp", "-1"], ["--batch-size", "0"]):
        assert cli.main(["predict-slide", str(built.path), "--model", str(tiny_run), *bad_option]) == 2
        assert capsys.readouterr().err.count("\n") == 1  # one line


def test_model_for_slides_uses_the_runs_field(tiny_run):
    predictor, field = model_for_slides(str(tiny_run), None, "100")
    assert field.mpp_x == pytest.approx(BREAKHIS_MPP[100][0]) and predictor.input_size == 32


def test_training_field_of_manifest_data_from_mpp_and_image_size(idc_manifest, tmp_path):
    from breakhis_core.config import TrainConfig
    from breakhis_core.errors import ConfigError

    images = sorted(idc_manifest.parent.rglob("*.png"))[:3]
    (tmp_path / "split.csv").write_text("path,label,split\n" + "".join(f"{p},0,train\n" for p in images))
    field = training_field(TrainConfig(data="m.csv", mpp=2.0), tmp_path, None, "manifest")
    assert (field.width_px, field.height_px, field.width_um) == (50, 50, 100.0)
    with pytest.raises(ConfigError, match="mpp must be between"):
        TrainConfig(mpp=0.0).validate()
    args = cli.build_parser().parse_args(["train", "data", "--mpp", "0.25"])
    assert cli.config_from_args(args).mpp == 0.25


def test_a_tile_that_cannot_be_decoded_stops_the_slide_with_its_reason(sample_dir, tiny_model, tmp_path, monkeypatch):
    """Level 1 (the read level) corrupt, level 2 (the thumbnail's) intact: the reader thread's error reaches the caller."""
    import threading

    import tifffile

    path = build_slide(tmp_path / "corrupt.tiff", sample_dir, rows=1, cols_per_class=1).path
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[1]
        for offset, count in zip(page.dataoffsets, page.databytecounts):
            data[offset : offset + count] = bytes(count)
    path.write_bytes(bytes(data))
    monkeypatch.setattr(wsi, "THUMBNAIL_SIDE", 120)  # thumbnail from level 2
    a_tile = r"level 1, \([1-9]\d*, [1-9]\d*\)"  # a tissue tile in the band, not the thumbnail at (0, 0)
    with pytest.raises(SlideError, match=a_tile + ".*truncated or corrupt") as caught:
        analyze_slide(path, Predictor(tiny_model, "tiny", batch_size=1), breakhis_field(40))
    assert "\n" not in str(caught.value)
    assert not any(t.name == "slide-reader" for t in threading.enumerate())


def test_progress_with_eta_and_cancel_between_batches(built, tiny_model):
    from breakhis_core.errors import CancelledError

    events = []
    with pytest.raises(CancelledError, match=r"cancelled after 2 of \d+ tiles"):
        analyze_slide(built.path, Predictor(tiny_model, "tiny", batch_size=2), breakhis_field(40),
                      progress=events.append, should_cancel=lambda: len(events) >= 2)
    assert [e.done for e in events] == [0, 2]
    assert events[0].eta_s is None and events[1].eta_s > 0 and "ETA" in events[1].message


def test_tissue_box_and_covered_share():
    from breakhis_core.slides.tissue import TissueMask

    mask = np.zeros((10, 20), bool)
    mask[2:6, 4:12] = True  # 32 tissue pixels
    tissue = TissueMask(mask, scale=10.0, threshold=0.1, method="given")
    assert tissue.box() == (40.0, 20.0, 120.0, 60.0)
    assert tissue.covered_share([(40, 20, 80, 40)]) == 1.0
    assert tissue.covered_share([(40, 20, 40, 40)]) == 0.5
    assert tissue.covered_share([(0, 0, 30, 30)]) == 0.0
    assert TissueMask(np.zeros((4, 4), bool), 1.0, 0.1, "given").box() is None


@pytest.fixture(scope="module")
def subtype_result(built):
    """A slide analysed by an untrained 8-output (subtype) model at 32 px."""
    from breakhis_core.models.classifier import build_model

    model = build_model(32, "none", num_classes=8, seed=0)
    return analyze_slide(built.path, Predictor(model, "tiny-subtype", batch_size=4), breakhis_field(40))


def test_a_subtype_slide_keeps_each_tiles_type_probabilities_in_its_outputs(subtype_result, tmp_path):
    import csv
    from collections import Counter

    from breakhis_core.slides.export import TILE_COLUMNS
    from breakhis_core.task import SUBTYPE

    result = subtype_result
    assert result.task is SUBTYPE and result.summary()["task"] == "subtype"
    folder = write_slide_outputs(result, tmp_path / "subtype")
    with open(folder / "tiles.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == (*TILE_COLUMNS, *(f"p_{code}" for code in SUBTYPE.codes), "top_type")
    malignant = [code for code, is_malignant in zip(SUBTYPE.codes, SUBTYPE.malignant) if is_malignant]
    for row in rows:
        probabilities = np.array([float(row[f"p_{code}"]) for code in SUBTYPE.codes])
        assert probabilities.sum() == pytest.approx(1, abs=1e-4)
        assert row["top_type"] == SUBTYPE.codes[int(np.argmax(probabilities))]
        # The verdict's P(malignant) is the malignant types' sum.
        assert float(row["p_malignant"]) == pytest.approx(sum(float(row[f"p_{c}"]) for c in malignant), abs=1e-5)
    features = json.loads((folder / "tiles.geojson").read_text())["features"]
    assert len(features) == len(rows)
    for feature, row in zip(features, rows):
        properties = feature["properties"]
        assert properties["classification"]["name"] == row["top_type"]
        assert properties["measurements"][f"P({row['top_type']})"] == pytest.approx(float(row[f"p_{row['top_type']}"]),
                                                                                  abs=1e-6)
    # The summary's type shares, recomputed from the table over the tiles counted in the verdict.
    summary = json.loads((folder / "summary.json").read_text())
    counted = [row for row in rows if float(row["tissue_fraction"]) >= summary["tissue"]["min_tissue"]] or rows
    assert summary["types"]["tiles"] == len(counted) == summary["verdict"]["tissue_tiles"]
    top = Counter(row["top_type"] for row in counted)
    for code, entry in summary["types"]["types"].items():
        assert entry["top_tiles"] == top.get(code, 0)
        assert entry["share"] == pytest.approx(top.get(code, 0) / len(counted))
        assert entry["mean_probability"] == pytest.approx(np.mean([float(r[f"p_{code}"]) for r in counted]), abs=1e-5)
    assert list(summary["types"]["types"]) == list(SUBTYPE.codes)
    saved = load_slide_outputs(folder)
    assert saved.task is SUBTYPE and saved.types == result.types
    assert isinstance(saved.tiles[0]["top_type"], str) and isinstance(saved.tiles[0]["p_DC"], float)
    page = slide_report(saved)
    most = max(top, key=top.get)
    assert "Tumour types" in page and f"{most} {top[most] / len(counted):.0%}" in page


def test_a_malignancy_slide_has_no_type_columns(result, tmp_path):
    from breakhis_core.slides.export import TILE_COLUMNS

    folder = write_slide_outputs(result, tmp_path / "malignancy")
    assert (folder / "tiles.csv").read_text().splitlines()[0] == ",".join(TILE_COLUMNS)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["task"] == "malignancy" and "types" not in summary
    assert {f["properties"]["classification"]["name"] for f in tiles_geojson(result)["features"]} <= {"Benign", "Malignant"}
    assert load_slide_outputs(folder).types is None and "Tumour types" not in slide_report(load_slide_outputs(folder))
