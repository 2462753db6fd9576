"""BreakHis parsing, scanning, splits and pipelines on the real sample in ../shared."""

from __future__ import annotations

import csv
import filecmp
import shutil

import numpy as np
import pytest

from breakhis_core.config import TrainConfig
from breakhis_core.data.records import ImageRecord, filter_magnification, parse_breakhis_name, scan
from breakhis_core.training.pipeline import class_weights, make_dataset
from breakhis_core.data.splits import make_split, split_by_folds, split_by_image, split_by_patient
from breakhis_core.errors import DatasetLayoutError, FilenameError, SplitError


def test_parse_name_fields():
    fields = parse_breakhis_name("SOB_B_A-14-22549AB-40-001.png")
    assert fields == {"label": 0, "tumour_type": "A", "slide": "14-22549AB", "magnification": 40, "sequence": 1}
    assert parse_breakhis_name("SOB_M_DC-14-2523-400-010.png")["label"] == 1


@pytest.mark.parametrize(
    "name", ["photo.png", "SOB_B_XX-14-1-40-001.png", "SOB_B_DC-14-1-40-001.png", "SOB_M_DC-14-1-50-001.png"]
)
def test_parse_name_rejects(name):
    with pytest.raises(FilenameError, match="Received"):
        parse_breakhis_name(name)


def test_case_groups_slides_of_one_case():
    a = ImageRecord("a.png", 0, "14-22549AB")
    b = ImageRecord("b.png", 0, "14-22549CD")
    assert a.case == b.case == "14-22549"
    assert a.group("slide") != b.group("slide")


def test_scan_sample(sample_dir):
    summary = scan(sample_dir).summary()
    assert summary["images"] == 37
    assert summary["patients"] == 23
    assert summary["magnifications"] == [40, 100, 200, 400]
    assert len(summary["tumour_types"]) == 8
    assert summary["classes"] == {"benign": 21, "malignant": 16}
    assert summary["by_class_and_magnification"]["benign"] == {"40": 7, "100": 2, "200": 3, "400": 9}
    assert summary["rejected"] == []


def test_scan_lists_bad_files_and_keeps_the_rest(sample_files, tmp_path):
    good = sample_files[0]
    shutil.copy(good, tmp_path / good.name)
    (tmp_path / "holiday.png").write_bytes(good.read_bytes())
    corrupt = tmp_path / good.name.replace("-001", "-901").replace(good.name.split("-")[-1], "901.png")
    corrupt.write_bytes(good.read_bytes()[:2000])
    (tmp_path / "notes.txt").write_text("not an image, ignored")
    result = scan(tmp_path)
    assert [r.path for r in result.records] == [str((tmp_path / good.name).resolve())]
    reasons = {r.path.split("/")[-1]: r.reason for r in result.rejected}
    assert "not a BreakHis name" in reasons["holiday.png"]
    assert "unreadable" in reasons[corrupt.name]
    assert "notes.txt" not in reasons


def test_scan_empty_and_missing(tmp_path):
    with pytest.raises(DatasetLayoutError, match="no usable BreakHis images"):
        scan(tmp_path)
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        scan(tmp_path / "nowhere")
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(DatasetLayoutError, match="1 files rejected"):
        scan(tmp_path)


def test_magnification_filter(sample_dir):
    records = scan(sample_dir).records
    assert len(filter_magnification(records, 200)) == 6
    only_40 = filter_magnification(records, 40)
    with pytest.raises(DatasetLayoutError, match="magnification=100"):
        filter_magnification(only_40, 100)


@pytest.mark.parametrize("group_by", ["slide", "case"])
def test_patient_split_shares_no_patient(sample_dir, group_by):
    records = scan(sample_dir).records
    split = split_by_patient(records, seed=3, group_by=group_by)
    assert not split.leaky
    assert split.leakage() == {}
    groups = [{r.group(group_by) for r in split.parts[name]} for name in ("train", "val", "test")]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    assert sum(len(p) for p in split.parts.values()) == 37
    for name in ("train", "val", "test"):
        assert {r.label for r in split.parts[name]} == {0, 1}, f"{name} lacks a class"


def test_case_grouping_is_stricter(sample_dir):
    """Grouping by case keeps every case and every slide whole; grouping by slide can split a case's two slides
    (the sample holds two such cases), and ``leakage`` at case level names exactly those cases."""
    records = scan(sample_dir).records
    leaked_cases = set()
    for seed in range(5):
        by_case = split_by_patient(records, seed=seed, group_by="case")
        assert by_case.leakage() == {}
        by_case.group_by = "slide"
        assert by_case.leakage() == {}
        by_slide = split_by_patient(records, seed=seed, group_by="slide")
        parts_of_case = {}
        for name, part in by_slide.parts.items():
            for record in part:
                parts_of_case.setdefault(record.case, set()).add(name)
        by_slide.group_by = "case"  # the slide split checked again at case level
        assert by_slide.leakage() == {case: sorted(p) for case, p in parts_of_case.items() if len(p) > 1}
        leaked_cases |= set(by_slide.leakage())
    assert leaked_cases == {"14-16184", "14-22549"}


def test_image_split_is_leaky(idc_dir):
    records = scan(idc_dir / "manifest.csv", verify=False).records
    split = split_by_image(records, seed=0)
    assert split.leaky and split.protocol == "image"
    assert len(split.leakage()) > 30  # most of the 60 patients straddle splits
    assert split_by_patient(records, seed=0).leakage() == {}


def test_split_is_reproducible(sample_dir, tmp_path):
    records = scan(sample_dir).records
    config = TrainConfig(data=str(sample_dir), seed=7)
    make_split(records, config).save_csv(tmp_path / "a.csv")
    make_split(records, config).save_csv(tmp_path / "b.csv")
    config.seed = 8
    make_split(records, config).save_csv(tmp_path / "c.csv")
    assert filecmp.cmp(tmp_path / "a.csv", tmp_path / "b.csv", shallow=False)
    assert not filecmp.cmp(tmp_path / "a.csv", tmp_path / "c.csv", shallow=False)


def test_split_too_few_patients():
    records = [ImageRecord(f"{i}.png", 0, "p1") for i in range(5)] + [ImageRecord("m.png", 1, "p2")]
    with pytest.raises(SplitError, match="too few"):
        split_by_patient(records)


def test_official_folds(sample_dir, tmp_path):
    records = scan(sample_dir).records
    slides = sorted({r.patient for r in records})
    test_slides = set(slides[::4])
    folds = tmp_path / "Folds.csv"
    with open(folds, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["fold", "mag", "grp", "filename"])
        for r in records:
            group = "test" if r.patient in test_slides else "train"
            writer.writerow([1, r.magnification, group, f"BreaKHis_v1/histology_slides/breast/x/{r.path.split('/')[-1]}"])
            writer.writerow([2, r.magnification, "train", f"x/{r.path.split('/')[-1]}"])
    split = split_by_folds(records, folds, fold=1, val_fraction=0.25, seed=0)
    assert split.protocol == "folds:1"
    assert {r.patient for r in split.parts["test"]} == test_slides
    assert split.leakage() == {}
    assert split.parts["val"], "validation is carved from the fold's train part"
    with pytest.raises(SplitError, match="fold=2"):
        split_by_folds(records, folds, fold=2)
    with pytest.raises(SplitError, match="cannot read"):
        split_by_folds(records, tmp_path / "missing.csv", fold=1)


def test_manifest_idc(idc_dir):
    result = scan(idc_dir / "manifest.csv", verify=False)
    assert result.kind == "manifest"
    assert len(result.records) == 5020
    assert len({r.patient for r in result.records}) == 60
    assert sum(r.label for r in result.records) == 2420


def test_manifest_problems_listed(sample_files, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,label\n"
        f"{sample_files[0]},benign\n"
        f"{sample_files[1]},maybe\n"
        "missing.png,malignant\n"
    )
    result = scan(manifest)
    assert len(result.records) == 1
    assert result.records[0].patient == "14-22549AB" or result.records[0].patient  # slide id from the name
    reasons = " | ".join(r.reason for r in result.rejected)
    assert "line 3" in reasons and "label" in reasons
    assert "line 4" in reasons and "not found" in reasons
    (tmp_path / "bad.csv").write_text("file,class\nx.png,benign\n")
    with pytest.raises(DatasetLayoutError, match="path,label"):
        scan(tmp_path / "bad.csv")


def test_class_weights_breakhis_ratio():
    labels = np.array([0] * 2480 + [1] * 5429)
    weights = class_weights(labels)
    assert weights[0] == pytest.approx(1.595, abs=1e-3)
    assert weights[1] == pytest.approx(0.7285, abs=1e-3)


def test_dataset_batches_and_augmentation():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(10, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 1] * 5, dtype=np.int32)
    plain = next(iter(make_dataset(images, labels, 4, training=False)))
    assert plain[0].shape == (4, 32, 32, 3) and plain[0].dtype.name == "float32"
    np.testing.assert_array_equal(plain[0].numpy(), images[:4].astype(np.float32))
    augmented = next(iter(make_dataset(images, labels, 10, training=True, augment_images=True, seed=1)))[0].numpy()
    assert augmented.shape == (10, 32, 32, 3)
    assert augmented.min() >= 0 and augmented.max() <= 255
    assert not np.allclose(np.sort(augmented.ravel()), np.sort(images.astype(np.float32).ravel()))
