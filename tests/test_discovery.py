"""discovery: what the data roots offer to train on, found by BreakHis names and by the CSV headers data.py reads."""

from __future__ import annotations

import shutil
from pathlib import Path

from breakhis_core.data import discovery
from breakhis_core.data.records import FOLDS_COLUMNS, MANIFEST_COLUMNS, scan, scan_manifest
from breakhis_core.data.splits import split_by_folds


def test_discover_lists_folders_manifests_folds_and_weights(tmp_path, sample_dir):
    root = tmp_path / "data"
    root.mkdir()
    shutil.copytree(sample_dir, root / "breakhis")
    (root / "linked").symlink_to(sample_dir, target_is_directory=True)  # not followed: it would be refused anyway
    (root / "manifest.csv").write_text("path,label\na.png,benign\n")
    (root / "Folds.csv").write_text("fold,mag,grp,filename\n1,40,train,x.png\n")
    (root / "notes.csv").write_text("a,b\n1,2\n")
    (root / "vgg16.h5").write_bytes(b"")
    (root / "other").mkdir()
    (root / "other" / "photo.png").write_bytes(b"")  # not a BreakHis name: not a data set
    found = discovery.discover((str(root),))
    kinds = {Path(c.path).name: (c.kind, c.images) for c in found}
    assert kinds["manifest.csv"] == ("manifest", 0)
    assert kinds["Folds.csv"] == ("folds", 0)
    assert kinds["vgg16.h5"] == ("weights", 0)
    assert "notes.csv" not in kinds and "other" not in kinds and "linked" not in kinds
    folders = [c for c in found if c.kind == "folder"]
    assert folders[0].label.startswith("data/breakhis (folder, 37")  # the data set itself first, not its root
    assert any(c.path == str(root) and c.images == 37 for c in folders)
    assert [c.kind for c in found] == sorted((c.kind for c in found), key=discovery.KINDS.index)


def test_a_csv_is_a_manifest_or_folds_by_the_columns_data_reads(tmp_path, sample_files, sample_dir):
    """What discovery offers as a manifest scans as one, and its Folds.csv splits: one definition of each header."""
    manifest = tmp_path / "listed.csv"
    image = sample_files[0]
    manifest.write_text(f" Label ,PATH,patient\nbenign,{image}\n")  # any order, case and spacing
    assert discovery.csv_kind(manifest) == "manifest"
    assert len(scan_manifest(manifest).records) == 1
    folds = tmp_path / "Folds.csv"
    folds.write_text(",".join(FOLDS_COLUMNS) + "\n1,train,a.png\n")
    assert discovery.csv_kind(folds) == "folds"
    records = scan(sample_dir).records
    test_slides = set(sorted({r.patient for r in records})[::4])
    shouted = tmp_path / "FOLDS.CSV"  # any case and spacing here too: what is offered must split
    shouted.write_text(" FOLD ,Grp,FILENAME\n" + "".join(
        f"1,{'TEST' if r.patient in test_slides else 'train'}, {Path(r.path).name}\n" for r in records))
    assert discovery.csv_kind(shouted) == "folds"
    split = split_by_folds(records, shouted, fold=1, val_fraction=0.25, seed=0)
    assert {r.patient for r in split.parts["test"]} == test_slides
    for missing in MANIFEST_COLUMNS:
        partial = tmp_path / f"without_{missing}.csv"
        partial.write_text(",".join(c for c in MANIFEST_COLUMNS if c != missing) + ",patient\nx,y\n")
        assert discovery.csv_kind(partial) is None
    for missing in FOLDS_COLUMNS:
        partial = tmp_path / f"folds_without_{missing}.csv"
        partial.write_text(",".join(c for c in FOLDS_COLUMNS if c != missing) + "\n1,2\n")
        assert discovery.csv_kind(partial) is None
    (tmp_path / "not_utf8.csv").write_bytes(b"\xff\xfep\x00a\x00t\x00h\x00,\x00l\x00")
    assert discovery.csv_kind(tmp_path / "not_utf8.csv") is None
    assert discovery.csv_kind(tmp_path / "absent.csv") is None


def test_discover_offers_folders_down_to_folder_depth_and_stops_after_max_files(tmp_path, sample_files):
    root = tmp_path / "data"
    for folder in ("a/b/c", "x", "y"):
        (root / folder).mkdir(parents=True)
        for path in sample_files[:3]:
            shutil.copy(path, root / folder / path.name)
    found = discovery.discover((str(root),), folder_depth=1)
    assert {Path(c.path).relative_to(root).as_posix(): c.images for c in found} == {".": 9, "a": 3, "x": 3, "y": 3}
    walked = discovery.discover((str(root),), max_files=4)  # the listing ends with the folder that passes the bound
    assert {Path(c.path).relative_to(root).as_posix(): c.images for c in walked} == {".": 6, "a": 3, "a/b": 3, "x": 3}  # y not walked
