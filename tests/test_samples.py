"""breakhis_core.data.samples: the real images shipped with the app (assets/samples) are complete, readable and usable
as a data set and as uploads; a missing or damaged sample file gives a reason, a missing sample a clear error."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import pytest

from breakhis_core.data import samples
from breakhis_core.data.records import parse_breakhis_name, scan
from breakhis_core.errors import SampleError
from breakhis_core.data.uploads import decode_uploads

MAX_SAMPLE_BYTES = 5 * 2**20
"""The sample stays small: at most 5 MiB in all."""


def test_the_sample_is_small_and_lies_in_the_app_assets():
    root = samples.sample_root()
    assert root == Path(__file__).resolve().parents[1] / "assets" / "samples"
    total = sum(path.stat().st_size for path in root.rglob("*") if path.is_file())
    assert 0 < total <= MAX_SAMPLE_BYTES, total


def test_breakhis_sample_covers_every_tumour_type_and_magnification():
    scanned = scan(samples.breakhis_sample())
    assert not scanned.rejected
    assert sorted(Path(r.path).name for r in scanned.records) == sorted(Path(p).name for p in samples.BREAKHIS_IMAGES)
    parsed = [parse_breakhis_name(Path(p).name) for p in samples.BREAKHIS_IMAGES]
    assert len({p["tumour_type"] for p in parsed}) == 8
    per_magnification = Counter((p["magnification"], p["label"]) for p in parsed)
    assert per_magnification == Counter({(m, label): 1 for m in (40, 100, 200, 400) for label in (0, 1)})


def test_idc_sample_manifest_names_every_patch():
    manifest = samples.idc_manifest()
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 200
    per_patient = Counter((row["patient"], row["label"]) for row in rows)
    assert len({row["patient"] for row in rows}) == 5 and set(per_patient.values()) == {20}
    scanned = scan(manifest)
    assert len(scanned.records) == 200 and not scanned.rejected


def test_sample_uploads_decode_with_their_breakhis_names():
    uploads, skipped = samples.sample_uploads()
    assert not skipped
    decoded, undecodable = decode_uploads(uploads)
    assert not undecodable
    assert [item.name for item in decoded] == [Path(p).name for p in samples.BREAKHIS_IMAGES]
    assert all(item.image.shape == (460, 700, 3) for item in decoded)


def test_a_missing_or_damaged_sample_file_is_named_with_its_reason(tmp_path, monkeypatch):
    copy = tmp_path / "samples"
    shutil.copytree(samples.sample_root(), copy)
    monkeypatch.setattr(samples, "sample_root", lambda: copy)
    missing, damaged = samples.BREAKHIS_IMAGES[0], samples.BREAKHIS_IMAGES[1]
    (copy / "breakhis" / missing).unlink()
    (copy / "breakhis" / damaged).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    uploads, skipped = samples.sample_uploads()
    assert [s.label for s in skipped] == [Path(missing).name] and "missing" in skipped[0].reason
    decoded, undecodable = decode_uploads(uploads)
    assert len(decoded) == len(samples.BREAKHIS_IMAGES) - 2
    assert [s.label for s in undecodable] == [Path(damaged).name]


def test_a_missing_sample_folder_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(samples, "sample_root", lambda: tmp_path / "nowhere")
    with pytest.raises(SampleError, match="not installed.*Received: .*nowhere"):
        samples.sample_uploads()
