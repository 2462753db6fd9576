"""breakhis_core.lab.paths: the data roots and the checks that keep training data inside them."""

from __future__ import annotations

import os

import pytest

from breakhis_core.errors import ConfigError, DataPathError
from breakhis_core.lab import paths
from breakhis_core.data import samples
from breakhis_core.lab.paths import (
    DATA_ROOTS_ENV,
    HOME_ENV,
    SOURCE_DIR,
    app_home,
    check_dataset,
    configured_data_roots,
    data_roots,
    ensure_app_home,
    home_folder,
    inside_data_roots,
)


def test_configured_roots_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_ROOTS_ENV, raising=False)
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    # in a source checkout: the app home's data folder, the product's sample, and ../shared beside the checkout
    assert configured_data_roots() == [tmp_path / "home" / "data", samples.sample_root(), SOURCE_DIR.parent / "shared"]
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


def test_the_app_home_holds_data_runs_cases_and_logs(monkeypatch, tmp_path):
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    monkeypatch.delenv(paths.RUNS_ENV, raising=False)
    assert ensure_app_home() == tmp_path / "home"
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["data", "logs", "runs"]
    assert paths.runs_dir() == home_folder("runs") == tmp_path / "home" / "runs"
    with pytest.raises(ValueError, match="Received: name='site'"):
        home_folder("site")


def test_the_default_app_home_is_the_users_data_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(HOME_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert app_home() == tmp_path / "xdg" / "breakhis"
    assert not app_home().is_relative_to(SOURCE_DIR)


def test_an_app_home_that_cannot_be_written_is_named(monkeypatch, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "a_file" / "home"))
    with pytest.raises(ConfigError, match=r"BREAKHIS_HOME=.*a_file/home.*Received: .*a_file/home"):
        ensure_app_home()
