"""images.py: decoding of real samples and of the generated bad-input corpus (tests/badfiles.py)."""

from __future__ import annotations

import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from badfiles import ERROR, ODD_NAMES, OK, bomb_jpeg, bomb_png, corpus_cases, exif_rotated_jpeg, make_bad_corpus, pattern
from breakhis_core.data import images
from breakhis_core.errors import ImageDecodeError
from breakhis_core.data.images import NAME_LIMIT, decode_image, display_name, encode_png, read_image, resize

REPO_ROOT = Path(__file__).resolve().parents[1]
CASES = corpus_cases()
MAX_MESSAGE = NAME_LIMIT + 200
"""Longest acceptable error message, in characters."""


def assert_one_line_error(exc: ImageDecodeError, name: str) -> None:
    message = str(exc)
    assert len(message.splitlines()) == 1 and "\n" not in message and "\r" not in message, message
    assert message.startswith(display_name(name) + ": "), message
    assert len(message) <= MAX_MESSAGE, message


def assert_fresh_rgb(image: np.ndarray) -> None:
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.flags.c_contiguous and image.flags.writeable and image.flags.owndata


# ----------------------------------------------------------------------------- the corpus


def test_corpus_has_both_outcomes_and_writes_every_file(tmp_path):
    corpus = make_bad_corpus(tmp_path / "corpus")
    assert [e for _, e in corpus].count(OK) >= 10 and [e for _, e in corpus].count(ERROR) >= 10
    assert all(path.is_file() for path, _ in corpus)
    assert [path.name for path, _ in corpus] == [case.name for case in CASES]


@pytest.mark.parametrize("case", CASES, ids=[ascii(c.name)[1:-1][:40] for c in CASES])
def test_corpus_file_decodes_or_fails_on_one_line(case, tmp_path):
    path = tmp_path / case.name
    path.write_bytes(case.data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about corrupt EXIF data and 89+ MP images
        if case.expectation == ERROR:
            with pytest.raises(ImageDecodeError) as info:
                read_image(path)
            assert_one_line_error(info.value, case.name)
            return
        image = read_image(path)
    assert_fresh_rgb(image)
    assert image.shape == case.expected.shape
    assert np.abs(image.astype(np.int16) - case.expected).mean() <= case.tolerance


def test_exif_orientation_6_is_rotated_clockwise():
    data, _ = exif_rotated_jpeg()
    image = decode_image(data, "rotated.jpg")
    # stored 32×48: red top-left, green top-right, blue bottom-left, white bottom-right
    assert image.shape == (48, 32, 3)
    colour = lambda y, x: tuple(int(v) for v in np.round(image[y, x] / 255.0))  # noqa: E731
    assert colour(4, 4) == (0, 0, 1)  # top-left: blue
    assert colour(4, 27) == (1, 0, 0)  # top-right: red
    assert colour(43, 4) == (1, 1, 1)  # bottom-left: white
    assert colour(43, 27) == (0, 1, 0)  # bottom-right: green


# ----------------------------------------------------------------------------- bombs and limits


@pytest.mark.parametrize("data", [bomb_png(), bomb_jpeg()], ids=["png", "jpeg"])
def test_decompression_bomb_is_refused_from_the_header_quickly(data):
    assert len(data) < 50_000
    start = time.perf_counter()
    with pytest.raises(ImageDecodeError, match="image too large"):
        decode_image(data, "bomb.png")
    assert time.perf_counter() - start < 1.0


def test_decompression_bomb_uses_bounded_memory():
    # A complete 9,000² bomb (~240 kB): decoding it would take ~1.4 GB; refusing it, almost nothing.
    script = (
        "import resource, sys; sys.path.insert(0, 'tests')\n"
        "from badfiles import bomb_png\n"
        "from breakhis_core.errors import ImageDecodeError\n"
        "from breakhis_core.data.images import decode_image\n"
        "data = bomb_png(9_000, rows=9_000)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    decode_image(data, 'bomb.png')\nexcept ImageDecodeError:\n    pass\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) < 32 * 1024  # KiB


def test_file_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_FILE_BYTES", 100)
    data = encode_png(pattern(64, 64))
    with pytest.raises(ImageDecodeError, match="file too large") as info:
        decode_image(data, "big.png")
    assert_one_line_error(info.value, "big.png")
    (tmp_path / "big.png").write_bytes(data)
    with pytest.raises(ImageDecodeError, match="file too large"):
        read_image(tmp_path / "big.png")


# ----------------------------------------------------------------------------- names and messages


@pytest.mark.parametrize("name", ODD_NAMES, ids=[f"name{i}" for i in range(len(ODD_NAMES))])
def test_odd_names_give_one_short_line(name):
    with pytest.raises(ImageDecodeError) as info:
        decode_image(b"not an image", name)
    assert_one_line_error(info.value, name)
    assert len(display_name(name)) <= NAME_LIMIT


def test_display_name_keeps_start_and_end():
    long = "SOB_B_A-14-22549AB-40-" + "0" * 300 + "1.png"
    shown = display_name(long)
    assert len(shown) == NAME_LIMIT and shown.startswith("SOB_B_A-14") and shown.endswith("01.png") and "…" in shown
    assert display_name("a\nb\u2028c") == "a\\nb\\u2028c"
    assert display_name("short.png") == "short.png"


def test_missing_file_and_folder(tmp_path):
    for path in (tmp_path / "missing.png", tmp_path):
        with pytest.raises(ImageDecodeError, match="cannot read file") as info:
            read_image(path)
        assert_one_line_error(info.value, path.name)


# ----------------------------------------------------------------------------- inputs and outputs


def test_decode_never_modifies_or_keeps_the_input():
    encoded = encode_png(pattern())
    buffer = bytearray(encoded)
    refs = sys.getrefcount(encoded)
    image = decode_image(encoded, "a.png")
    from_buffer = decode_image(buffer, "a.png")
    from_view = decode_image(memoryview(buffer), "a.png")
    assert sys.getrefcount(encoded) == refs
    assert bytes(buffer) == encoded
    buffer[:] = b"\0" * len(buffer)  # the outputs must not see this
    for output in (image, from_buffer, from_view):
        assert_fresh_rgb(output)
        np.testing.assert_array_equal(output, pattern())


def test_decode_leaves_global_warning_filters_alone():
    before = list(warnings.filters)
    decode_image(encode_png(pattern()), "a.png")
    with pytest.raises(ImageDecodeError):
        decode_image(b"junk", "b.png")
    assert warnings.filters == before


def test_real_samples_decode_to_rgb(sample_files):
    for path in sample_files[:5]:
        image = read_image(path)
        assert_fresh_rgb(image)
        assert image.shape == (460, 700, 3)
        assert 20 < image.mean() < 250


def test_resize_and_png_round_trip():
    image = pattern(46, 70)
    small = resize(image, 32)
    assert small.shape == (32, 32, 3) and small.dtype == np.uint8
    assert resize(image, (46, 70)) is image
    np.testing.assert_array_equal(decode_image(encode_png(image), "x.png"), image)
