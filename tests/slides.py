"""Pyramidal tiled TIFF slides built at test time from the real BreakHis sample (tests and bench).

A test slide is white glass with a band of tissue assembled from real 40X BreakHis images:
benign images on the left, malignant on the right, each scaled from its BreakHis pixel size to
the slide's, and placed on the tile grid of a BreakHis 40X model so that every tissue tile is one
training-sized field. The white margin is at least one tile wide on every side.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tifffile

from breakhis_core.data.images import read_image
from breakhis_core.data.pixelsize import breakhis_field

SLIDE_MPP = 0.5
"""µm per level-0 pixel of the test slides (a "20×" scanner)."""
DOWNSAMPLES = (1, 4, 16)


@dataclass
class BuiltSlide:
    """A test slide on disk and where its tissue is.

    Attributes:
        path: the TIFF file.
        width, height: level-0 size in pixels.
        tile_width, tile_height: level-0 size of one 40X training field at ``SLIDE_MPP``.
        tissue_box: (x0, y0, x1, y1) level-0 box holding all the tissue.
        benign_box, malignant_box: the boxes of each half.
        mpp: µm per level-0 pixel (also when not written into the file).
    """

    path: Path
    width: int
    height: int
    tile_width: int
    tile_height: int
    tissue_box: tuple[int, int, int, int]
    benign_box: tuple[int, int, int, int]
    malignant_box: tuple[int, int, int, int]
    mpp: float


def sample_40x(sample_dir: Path, label: str) -> list[Path]:
    """The 40X images of one class in the sample, sorted."""
    return sorted((sample_dir / label).rglob("*-40-*.png"))


def build_slide(path: Path, sample_dir: Path, rows: int = 2, cols_per_class: int = 2, margin_tiles: float = 1,
                mpp: float = SLIDE_MPP, write_mpp: bool = True, tissue: bool = True,
                downsamples: tuple[int, ...] = DOWNSAMPLES) -> BuiltSlide:
    """Write a pyramidal tiled TIFF of BreakHis tissue on white glass.

    Args:
        path: file to write.
        sample_dir: ../shared/breakhis_sample.
        rows, cols_per_class: tissue band of ``rows`` × ``2 * cols_per_class`` training fields (images repeat when
            the sample has fewer).
        margin_tiles: white margin, in tiles, on every side (1.5: the tissue lies half a tile off a grid anchored at
            the slide's corner).
        mpp: µm per level-0 pixel; ``write_mpp=False`` leaves it out of the file.
        tissue: False gives an empty (all white) slide.
        downsamples: pyramid levels.
    """
    field = breakhis_field(40)
    tile_w, tile_h = round(field.width_um / mpp), round(field.height_um / mpp)
    cols = 2 * cols_per_class
    x0, y0 = round(margin_tiles * tile_w), round(margin_tiles * tile_h)
    width, height = cols * tile_w + 2 * x0, rows * tile_h + 2 * y0
    canvas = np.full((height, width, 3), 255, np.uint8)
    if tissue:
        for index, label in enumerate(("benign", "malignant")):
            images = sample_40x(sample_dir, label)
            for row in range(rows):
                for col in range(cols_per_class):
                    image = read_image(images[(row * cols_per_class + col) % len(images)])
                    patch = cv2.resize(image, (tile_w, tile_h), interpolation=cv2.INTER_AREA)
                    left = x0 + (index * cols_per_class + col) * tile_w
                    top = y0 + row * tile_h
                    canvas[top : top + tile_h, left : left + tile_w] = patch
    write_pyramid(path, canvas, mpp if write_mpp else None, downsamples)
    box = (x0, y0, x0 + cols * tile_w, y0 + rows * tile_h)
    middle = x0 + cols_per_class * tile_w
    return BuiltSlide(path, width, height, tile_w, tile_h, box, (x0, y0, middle, box[3]), (middle, y0, box[2], box[3]), mpp)


def write_pyramid(path: Path, level0: np.ndarray, mpp: float | None, downsamples: tuple[int, ...] = DOWNSAMPLES) -> None:
    """A generic tiled pyramidal TIFF (one IFD per level, 256 px tiles, deflate), MPP as resolution in cm."""
    with tifffile.TiffWriter(path) as tif:
        for index, factor in enumerate(downsamples):
            height, width = level0.shape[0] // factor, level0.shape[1] // factor
            level = level0 if factor == 1 else cv2.resize(level0, (width, height), interpolation=cv2.INTER_AREA)
            options = {}
            if mpp is not None:
                options = dict(resolution=(1e4 / (mpp * factor), 1e4 / (mpp * factor)), resolutionunit="CENTIMETER")
            tif.write(level, tile=(256, 256), photometric="rgb", compression="zlib",
                      subfiletype=0 if index == 0 else 1, **options)


# ----------------------------------------------------------------------------- bad slides


def write_bad_slides(folder: Path, sample_dir: Path) -> dict[str, Path]:
    """One file per way a slide can be unusable, keyed by case name."""
    folder.mkdir(parents=True, exist_ok=True)
    png = sample_40x(sample_dir, "benign")[0]
    cases = {}
    cases["renamed"] = folder / "renamed.svs"
    cases["renamed"].write_bytes(png.read_bytes())
    good = build_slide(folder / "good.tiff", sample_dir, rows=1, cols_per_class=1).path
    data = good.read_bytes()
    cases["truncated"] = folder / "truncated.tiff"
    cases["truncated"].write_bytes(data[: len(data) // 3])
    cases["no_mpp"] = build_slide(folder / "no_mpp.tiff", sample_dir, rows=1, cols_per_class=1, write_mpp=False).path
    cases["absurd"] = folder / "absurd.tiff"
    cases["absurd"].write_bytes(_declare_size(data, 4_000_000, 3_000_000))
    cases["no_tissue"] = build_slide(folder / "no_tissue.tiff", sample_dir, rows=1, cols_per_class=1, tissue=False).path
    cases["unsupported"] = folder / "scan.isyntax"
    cases["unsupported"].write_bytes(b"<UFSImport>" + bytes(501))
    good.unlink()
    return cases


def _declare_size(tiff: bytes, width: int, height: int) -> bytes:
    """The TIFF with its first IFD's ImageWidth / ImageLength changed (classic little-endian TIFF)."""
    assert tiff[:4] == b"II*\x00"
    data = bytearray(tiff)
    ifd = struct.unpack_from("<I", data, 4)[0]
    count = struct.unpack_from("<H", data, ifd)[0]
    for index in range(count):
        entry = ifd + 2 + 12 * index
        tag, kind = struct.unpack_from("<HH", data, entry)
        if tag in (256, 257):
            value = width if tag == 256 else height
            struct.pack_into("<HHII", data, entry, tag, 4, 1, value)  # LONG
    return bytes(data)
