"""breakhis_core.paths: the data roots and the checks that keep training data inside them."""

from __future__ import annotations

import os

import pytest

from breakhis_core.errors import ConfigError, DataPathError
from breakhis_core.paths import APP_DIR, DATA_ROOTS_ENV, check_dataset, configured_data_roots, data_roots, inside_data_roots


def test_configured_roots_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_ROOTS_ENV, raising=False)
    assert configured_data_roots() == [APP_DIR / "data", APP_DIR.parent / "shared"]
    (tmp_path / "a").mkdir()
    monkeypatch.setenv(DATA_ROOTS_ENV, f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'missing'}{os.pathsep}{tmp_path / 'a'}")
    assert data_roots() == [(tmp_path / "a").resolve()]


def test_paths_inside_and_outside(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "set").mkdir(parents=True)
    outside.mkdir()
    (root / "link_out").symlink_to(outside, target_is_directory=True)
    (root / "link_in").symlink_to(root / "set", target_is_directory=True)
    assert inside_data_roots("set", [root]) == (root / "set").resolve()
    assert inside_data_roots(root / "set", [root]) == (root / "set").resolve()
    assert inside_data_roots("link_in", [root]) == (root / "set").resolve()
    for bad in ("../outside", str(outside), "set/../../outside", "link_out", "missing", "", "a\0b"):
        with pytest.raises(DataPathError, match="Received"):
            inside_data_roots(bad, [root])
    with pytest.raises(ConfigError, match="no data folder"):  # DataPathError is a ConfigError
        inside_data_roots("set", [tmp_path / "none"])


def test_dataset_files_must_stay_inside(tmp_path, sample_files):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "set").mkdir(parents=True)
    outside.mkdir()
    for path in sample_files[:6]:
        (root / "set" / path.name).write_bytes(path.read_bytes())
        (outside / path.name).write_bytes(path.read_bytes())
    assert check_dataset("set", [root]) == (root / "set").resolve()
    (root / "set" / "SOB_B_A-14-99999AB-40-001.png").symlink_to(outside / sample_files[0].name)
    with pytest.raises(DataPathError, match="1 file"):
        check_dataset("set", [root])
    (root / "manifest.csv").write_text(f"path,label\nset/{sample_files[1].name},benign\n../outside/{sample_files[2].name},benign\n")
    with pytest.raises(DataPathError, match="outside the data folders"):
        check_dataset("manifest.csv", [root])
