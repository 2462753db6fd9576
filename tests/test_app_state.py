"""app_state: data roots (no path escapes), data-set discovery, in-memory upload and zip unpacking with limits."""

from __future__ import annotations

import io
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import app_state
from breakhis_core.errors import ConfigError


@dataclass
class FakeUpload:
    """What st.file_uploader returns, as far as read_uploads uses it."""

    name: str
    data: bytes

    def getvalue(self) -> bytes:
        return self.data


def zip_bytes(members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            if name.endswith("/"):
                archive.writestr(zipfile.ZipInfo(name), b"")
            else:
                archive.writestr(name, data)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- data roots


@pytest.fixture
def roots(tmp_path) -> list[Path]:
    root = tmp_path / "data"
    (root / "set").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (root / "escape").symlink_to(tmp_path / "secret", target_is_directory=True)
    return [root.resolve()]


def test_inside_data_roots_accepts_paths_inside(roots):
    assert app_state.inside_data_roots(roots[0] / "set", roots) == roots[0] / "set"
    assert app_state.inside_data_roots("set", roots) == roots[0] / "set"  # relative to the first root
    assert app_state.inside_data_roots(str(roots[0]), roots) == roots[0]


@pytest.mark.parametrize("path", ["../secret", "set/../../secret", "escape", "/etc", "missing"])
def test_inside_data_roots_refuses_escapes(roots, path):
    with pytest.raises(ConfigError):
        app_state.inside_data_roots(path, roots)


def test_data_roots_from_environment(monkeypatch, tmp_path):
    (tmp_path / "a").mkdir()
    monkeypatch.setenv(app_state.DATA_ROOTS_ENV, f"{tmp_path / 'a'}{__import__('os').pathsep}{tmp_path / 'missing'}")
    assert app_state.data_roots() == [(tmp_path / "a").resolve()]
    assert len(app_state.configured_data_roots()) == 2


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
    found = app_state.discover((str(root),))
    kinds = {Path(c.path).name: (c.kind, c.images) for c in found}
    assert kinds["manifest.csv"] == ("manifest", 0)
    assert kinds["Folds.csv"] == ("folds", 0)
    assert kinds["vgg16.h5"] == ("weights", 0)
    assert "notes.csv" not in kinds and "other" not in kinds and "linked" not in kinds
    folders = [c for c in found if c.kind == "folder"]
    assert folders[0].label.startswith("data/breakhis (folder, 37")  # the data set itself first, not its root
    assert any(c.path == str(root) and c.images == 37 for c in folders)


# ----------------------------------------------------------------------------- uploads


def test_plain_images_pass_through():
    uploads, skipped = app_state.read_uploads([FakeUpload("a.png", b"1"), FakeUpload("b.tif", b"2")])
    assert [(u.name, u.data) for u in uploads] == [("a.png", b"1"), ("b.tif", b"2")]
    assert skipped == []


def test_zip_members_are_read_in_memory_and_unsafe_ones_skipped(sample_files):
    image = sample_files[0].read_bytes()
    archive = zip_bytes({
        "folder/": b"",
        f"folder/{sample_files[0].name}": image,
        "../../etc/evil.png": b"x",
        "/abs.png": b"x",
        "C:/windows.png": b"x",
        "readme.txt": b"hello",
        "inner.zip": b"PK",
        "__MACOSX/._x.png": b"x",
        ".hidden.png": b"x",
    })
    uploads, skipped = app_state.read_uploads([FakeUpload("batch.zip", archive)])
    assert [(u.name, u.data) for u in uploads] == [(sample_files[0].name, image)]
    assert uploads[0].label == f"batch.zip › folder/{sample_files[0].name}"
    reasons = {label.split(" › ")[1]: reason for label, reason in skipped}
    assert set(reasons) == {"../../etc/evil.png", "/abs.png", "C:/windows.png", "readme.txt", "inner.zip"}
    assert all("unsafe path" in reasons[n] for n in ("../../etc/evil.png", "/abs.png", "C:/windows.png"))
    assert "not an image file" in reasons["readme.txt"] and "zip inside a zip" in reasons["inner.zip"]


def test_zip_bomb_and_member_count_are_capped(monkeypatch):
    monkeypatch.setattr(app_state, "ZIP_MAX_TOTAL_BYTES", 1_000_000)
    monkeypatch.setattr(app_state, "ZIP_MAX_MEMBERS", 3)
    bomb = zip_bytes({"bomb.png": b"\0" * 50_000_000})  # 50 MB of zeros, ~50 kB compressed
    assert len(bomb) < 200_000
    many = zip_bytes({f"img{i}.png": b"x" * 10 for i in range(5)})
    uploads, skipped = app_state.read_uploads([FakeUpload("bomb.zip", bomb), FakeUpload("many.zip", many)])
    assert [u.name for u in uploads] == ["img0.png", "img1.png", "img2.png"]
    reasons = dict(skipped)
    assert "too large to unpack" in reasons["bomb.zip › bomb.png"]
    assert "more than 3 images" in reasons["many.zip › img3.png"]


def test_zip_lying_about_its_size_is_capped(monkeypatch):
    """A member whose header understates its size is cut at the budget, never read whole."""
    monkeypatch.setattr(app_state, "ZIP_MAX_TOTAL_BYTES", 1000)
    archive = bytearray(zip_bytes({"liar.png": b"\0" * 100_000}))
    # Patch the declared uncompressed size (central directory and local header) to 10 bytes.
    for signature, offset in ((b"PK\x01\x02", 24), (b"PK\x03\x04", 22)):
        at = archive.index(signature)
        archive[at + offset : at + offset + 4] = (10).to_bytes(4, "little")
    uploads, skipped = app_state.read_uploads([FakeUpload("liar.zip", bytes(archive))])
    assert uploads == []
    assert len(skipped) == 1 and skipped[0][0] == "liar.zip › liar.png"


def test_corrupt_zip_is_reported():
    uploads, skipped = app_state.read_uploads([FakeUpload("broken.zip", b"PK\x03\x04 not really a zip")])
    assert uploads == []
    assert skipped[0][0] == "broken.zip" and "not a readable zip" in skipped[0][1]


def test_metric_text():
    assert app_state.metric_text({"value": 0.8734, "ci": [0.801, 0.93]}) == "87.3 % (95 % CI 80.1–93.0 %)"
    assert app_state.metric_text({"value": None, "ci": None}) == "n/a"
    assert app_state.percent(None) == "n/a"
