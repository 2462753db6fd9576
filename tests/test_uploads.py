"""breakhis_core.data.uploads: in-memory upload and zip reading with limits (cases in tests/badfiles.py)."""

from __future__ import annotations

import hashlib

import pytest

from badfiles import make_zip, upload_cases
from breakhis_core.data.images import NAME_LIMIT, encode_png
from breakhis_core.data.uploads import (
    ZIP_SEPARATOR,
    Budget,
    Skipped,
    Upload,
    declared_entries,
    decode_uploads,
    read_uploads,
    read_zip_file,
)
from badfiles import pattern

CASES = upload_cases()


class FakeUpload:
    """What ``st.file_uploader`` returns: ``.name`` and ``.getvalue()``."""

    def __init__(self, name: str, data: bytes):
        self.name, self._data = name, data

    def getvalue(self) -> bytes:
        return self._data


@pytest.mark.parametrize("case", CASES, ids=[ascii(c.name)[1:-1][:30] for c in CASES])
def test_upload_case(case):
    options = {} if case.max_upload_bytes is None else {"max_upload_bytes": case.max_upload_bytes}
    uploads, skipped = read_uploads([FakeUpload(case.name, case.data)], budget=Budget(**(case.limits or {})), **options)
    assert (len(uploads), len(skipped)) == (case.images, case.skipped), skipped
    for label, reason in skipped:
        assert case.reason in reason and "\n" not in reason and "\n" not in label
    for upload in uploads:
        assert isinstance(upload, Upload) and "\n" not in upload.label and len(upload.label) <= 2 * NAME_LIMIT + 10
        assert "/" not in upload.name  # a zip member is known by its base name


def test_zip_members_keep_order_labels_and_bytes():
    png = encode_png(pattern())
    uploads, skipped = read_uploads([("a.png", png), ("batch.zip", make_zip([("x/SOB_B_A-14-22549AB-40-001.png", png),
                                                                             ("y.png", b"junk")]))])
    assert [u.name for u in uploads] == ["a.png", "SOB_B_A-14-22549AB-40-001.png", "y.png"]
    assert uploads[1].label == f"batch.zip{ZIP_SEPARATOR}x/SOB_B_A-14-22549AB-40-001.png"
    assert uploads[1].data == png and skipped == []
    # members not read come back as (label, reason) pairs, in archive order, named by the archive
    _, refused = read_uploads([("batch.zip", make_zip([("inner.zip", png), ("../up.png", png), ("ok.png", png)]))])
    (nested_label, nested_reason), (unsafe_label, unsafe_reason) = refused
    assert (nested_label, nested_reason) == (f"batch.zip{ZIP_SEPARATOR}inner.zip", "zip inside a zip; not opened")
    assert unsafe_label == f"batch.zip{ZIP_SEPARATOR}../up.png" and unsafe_reason.startswith("unsafe path")
    assert refused[0] == Skipped(label=nested_label, reason=nested_reason)


def test_budget_is_shared_by_all_zips_of_a_request():
    member = b"\0" * 2**20
    archive = make_zip([(f"m{i}.png", member) for i in range(3)])
    budget = Budget(remaining=4 * 2**20)
    uploads, skipped = read_uploads([("one.zip", archive), ("two.zip", archive)], budget=budget)
    assert len(uploads) == 4 and len(skipped) == 2 and budget.remaining == 0


def test_zip_file_on_disk(tmp_path):
    path = tmp_path / "batch.zip"
    path.write_bytes(make_zip([("a.png", encode_png(pattern()))]))
    uploads, skipped = read_zip_file(path)
    assert len(uploads) == 1 and skipped == []
    assert read_zip_file(path, max_bytes=10)[1][0].reason.startswith("file too large")
    assert "cannot read file" in read_zip_file(tmp_path / "missing.zip")[1][0].reason


def test_declared_entries():
    assert declared_entries(make_zip([(f"f{i}", b"") for i in range(7)])) == 7
    assert declared_entries(b"not a zip") is None


def test_decode_uploads_keeps_order_and_gives_reasons_without_the_name():
    import numpy as np

    image = np.zeros((4, 6, 3), np.uint8)
    image[1, 2] = (255, 0, 0)
    uploads = [Upload("a.png", "a.png", encode_png(image)), Upload("b.png", "x.zip › b.png", b"<html>"),
               Upload("c.png", "c.png", encode_png(image[::-1]))]
    decoded, skipped = decode_uploads(uploads)
    assert [item.name for item in decoded] == ["a.png", "c.png"]
    assert decoded[0].upload is uploads[0] and decoded[0].sha256 == hashlib.sha256(uploads[0].data).hexdigest()
    np.testing.assert_array_equal(decoded[0].image, image)
    assert skipped == [Skipped("x.zip › b.png", "not a PNG, JPEG, TIFF or BMP image")]
