"""Reading whole-slide images with OpenSlide: checked metadata, regions on demand, thumbnails.

:func:`open_slide` opens a slide (Aperio ``.svs``, Hamamatsu ``.ndpi``, 3DHistech ``.mrxs``,
Philips TIFF, generic tiled pyramidal TIFF and the other formats of OpenSlide 4) and checks,
before any pixel is decoded, its declared dimensions, level count, level geometry and pixel
size. A :class:`WholeSlide` then reads regions from one pyramid level at a time; a slide is
never decoded whole, and the thumbnail comes from a level small enough to hold in memory.

Files that are not slides get a one-line reason: images renamed ``.svs``, strip (non-tiled)
TIFFs, formats OpenSlide does not read (Philips iSyntax, Leica ``.lif``, Olympus ``.vsi``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide
from openslide.deepzoom import DeepZoomGenerator

from breakhis_core.errors import PixelSizeError, SlideError
from breakhis_core.data.images import resize

MAX_SIDE = 500_000
"""Largest accepted level-0 width or height in pixels (real slides reach ~150,000)."""
MAX_LEVELS = 32
MAX_THUMBNAIL_SOURCE_PIXELS = 64_000_000
"""A thumbnail is made only from a pyramid level of at most this many pixels (the image decoder's own cap)."""
THUMBNAIL_SIDE = 1024
"""Longer side of the thumbnail in pixels (tissue mask and heat map are drawn on it)."""
MPP_RANGE = (0.01, 100.0)
"""Plausible µm per pixel of a slide's level 0."""
UNSUPPORTED_SUFFIXES = {
    ".isyntax": "Philips iSyntax", ".lif": "Leica LIF", ".vsi": "Olympus VSI",
    ".qptiff": "Akoya QPTIFF", ".kfb": "KFBio KFB", ".sdpc": "SQRAY SDPC",
}
"""Vendor formats OpenSlide 4 does not read (convert them to pyramidal TIFF, e.g. with QuPath or bfconvert)."""
_IMAGE_MAGIC = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"BM": "a BMP image", b"PK\x03\x04": "a zip file"}


@dataclass(frozen=True)
class SlideInfo:
    """A slide's checked metadata.

    Attributes:
        name: file name.
        path: the slide file.
        vendor: OpenSlide's format name ("aperio", "generic-tiff", ...).
        width, height: level-0 size in pixels.
        level_dimensions: (width, height) of each pyramid level, level 0 first.
        level_downsamples: level-0 pixels per level pixel of each level (1.0 for level 0).
        mpp_x, mpp_y: µm per level-0 pixel, horizontally and vertically (None only from :func:`read_slide_info`,
            for a slide that records none).
        mpp_source: "metadata" (``openslide.mpp-x/y``), "given" (by the user) or "missing".
        objective_power: the scanner's nominal objective ("40"), when recorded.
    """

    name: str
    path: str
    vendor: str
    width: int
    height: int
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp_x: float | None
    mpp_y: float | None
    mpp_source: str
    objective_power: str | None = None

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def to_dict(self) -> dict:
        return {"name": self.name, "path": self.path, "vendor": self.vendor, "width": self.width, "height": self.height,
                "level_count": self.level_count, "level_dimensions": [list(d) for d in self.level_dimensions],
                "level_downsamples": list(self.level_downsamples), "mpp_x": self.mpp_x, "mpp_y": self.mpp_y,
                "mpp_source": self.mpp_source, "objective_power": self.objective_power}


class WholeSlide:
    """An open slide: regions read on demand from one pyramid level. Use :func:`open_slide`.

    Not thread-safe for concurrent reads from several threads of the caller; one reader thread
    reads while the model computes (see ``slide.py``). Close it (or use ``with``) to free the file.
    """

    def __init__(self, handle: openslide.OpenSlide, info: SlideInfo):
        self._handle = handle
        self.info = info

    def __enter__(self) -> "WholeSlide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._handle.close()

    def best_level(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed ``downsample`` (level-0 px per wanted px)."""
        return int(self._handle.get_best_level_for_downsample(max(downsample, 1.0)))

    def read(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        """A region of ``level``, as ``(height, width, 3)`` uint8 RGB (transparent areas on white).

        Args:
            level: pyramid level.
            x0, y0: top-left corner in level-0 pixels.
            width, height: size in pixels of ``level``.

        Raises:
            SlideError: when the file cannot be decoded there (truncated or corrupt).
        """
        try:
            region = self._handle.read_region((int(x0), int(y0)), int(level), (int(width), int(height)))
        except openslide.OpenSlideError as exc:
            raise SlideError(f"{self.info.name}: cannot read the slide at level {level}, ({x0}, {y0}) - the file is "
                             f"truncated or corrupt: {_one_line(exc)}") from None
        return _rgba_on_white(np.asarray(region))

    def deep_zoom(self, tile_size: int, overlap: int) -> DeepZoomGenerator:
        """OpenSlide's Deep Zoom view of the slide: levels from 1 px up to level 0's size, each halving the next,
        cut in tiles of ``tile_size`` px plus ``overlap`` px on each inner side."""
        return DeepZoomGenerator(self._handle, tile_size=tile_size, overlap=overlap, limit_bounds=False)

    def thumbnail(self, side: int | None = None) -> tuple[np.ndarray, float]:
        """The whole slide at most ``side`` px (default ``THUMBNAIL_SIDE``) on its longer side.

        Returns:
            ``(h, w, 3)`` uint8 RGB and its scale: level-0 pixels per thumbnail pixel.

        Raises:
            SlideError: when no level is small enough to read whole, or the file cannot be decoded.
        """
        scale = max(self.info.width, self.info.height) / (side or THUMBNAIL_SIDE)
        level = self.best_level(scale)
        width, height = self.info.level_dimensions[level]
        if width * height > MAX_THUMBNAIL_SOURCE_PIXELS:
            raise SlideError(
                f"{self.info.name}: no pyramid level is small enough for a thumbnail (smallest level {width}×{height} px "
                f"> {MAX_THUMBNAIL_SOURCE_PIXELS:,} px); the slide needs a pyramid. Received: levels={self.info.level_count}"
            )
        region = self.read(level, 0, 0, width, height)
        out_w, out_h = max(1, round(self.info.width / scale)), max(1, round(self.info.height / scale))
        return resize(region, (out_h, out_w)), self.info.width / out_w


def open_slide(path: str | Path, mpp: float | None = None) -> WholeSlide:
    """Open and check a slide before any pixel is read.

    Args:
        path: the slide file.
        mpp: µm per level-0 pixel given by the user; used when the slide's metadata has none
            (a given value also overrides the metadata).

    Raises:
        SlideError: not a slide OpenSlide reads (with the likely cause), absurd dimensions or level geometry.
        PixelSizeError: no pixel size in the metadata and none given, or an implausible one.
    """
    path = Path(path)
    handle, vendor = _open_handle(path)
    try:
        info = _check(handle, path, vendor, mpp)
    except BaseException:
        handle.close()
        raise
    return WholeSlide(handle, info)


def read_slide_info(path: str | Path) -> SlideInfo:
    """A slide's checked metadata, as :func:`open_slide` checks it, except that a slide recording no pixel size
    is described too (``mpp_x``, ``mpp_y`` None, ``mpp_source`` "missing"); the slide is closed again.

    Raises:
        SlideError: as :func:`open_slide`.
        PixelSizeError: an implausible recorded pixel size.
    """
    path = Path(path)
    handle, vendor = _open_handle(path)
    try:
        return _check(handle, path, vendor, None, require_mpp=False)
    finally:
        handle.close()


def _open_handle(path: Path) -> tuple[openslide.OpenSlide, str]:
    """The open OpenSlide handle of ``path`` and its vendor; a one-line :class:`SlideError` for what is not a slide."""
    name = path.name
    if not path.is_file():
        raise SlideError(f"{name}: no such file. Received: path={path}")
    vendor = openslide.OpenSlide.detect_format(str(path))
    if vendor is None:
        raise SlideError(f"{name}: {_not_a_slide(path)}")
    try:
        return openslide.OpenSlide(str(path)), vendor
    except (openslide.OpenSlideError, OSError) as exc:
        raise SlideError(f"{name}: OpenSlide cannot open this {vendor} file (truncated or corrupt?): {_one_line(exc)}") from None


def _check(handle: openslide.OpenSlide, path: Path, vendor: str, mpp: float | None, require_mpp: bool = True) -> SlideInfo:
    name = path.name
    dims = tuple((int(w), int(h)) for w, h in handle.level_dimensions)
    downsamples = tuple(float(d) for d in handle.level_downsamples)
    if not 1 <= len(dims) <= MAX_LEVELS:
        raise SlideError(f"{name}: a slide must have 1 to {MAX_LEVELS} pyramid levels. Received: levels={len(dims)}")
    width, height = dims[0]
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise SlideError(f"{name}: declared size {width}×{height} px is outside 1..{MAX_SIDE:,} px a side. "
                         f"Received: dimensions={width}x{height}")
    for level in range(1, len(dims)):
        if not (dims[level][0] <= dims[level - 1][0] and dims[level][1] <= dims[level - 1][1]
                and downsamples[level] >= downsamples[level - 1]):
            raise SlideError(f"{name}: pyramid level {level} ({dims[level][0]}×{dims[level][1]}) is not smaller than "
                             f"level {level - 1}. Received: level_dimensions={list(dims)}")
    properties = handle.properties
    source = "metadata"
    if mpp is not None:
        mpp_x = mpp_y = float(mpp)
        source = "given"
    else:
        try:
            mpp_x = float(properties[openslide.PROPERTY_NAME_MPP_X])
            mpp_y = float(properties[openslide.PROPERTY_NAME_MPP_Y])
        except (KeyError, ValueError):
            if not require_mpp:
                mpp_x = mpp_y = None
                source = "missing"
            else:
                raise PixelSizeError(
                    f"{name}: the slide does not record its pixel size (openslide.mpp-x/y): give it with --mpp "
                    f"(µm per pixel; the scanner's 40× is usually about 0.25). Received: mpp=None"
                ) from None
    for value in (mpp_x, mpp_y) if source != "missing" else ():
        if not MPP_RANGE[0] <= value <= MPP_RANGE[1]:
            raise PixelSizeError(f"{name}: pixel size {value:g} µm/px ({source}) is outside "
                                 f"{MPP_RANGE[0]}..{MPP_RANGE[1]}. Received: mpp={value:g}")
    return SlideInfo(name=name, path=str(path), vendor=vendor, width=width, height=height, level_dimensions=dims,
                     level_downsamples=downsamples, mpp_x=mpp_x, mpp_y=mpp_y, mpp_source=source,
                     objective_power=properties.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER))


def _not_a_slide(path: Path) -> str:
    """Why OpenSlide does not recognise ``path``, as precisely as its first bytes and name allow."""
    lower = path.name.lower()
    for suffix, vendor in UNSUPPORTED_SUFFIXES.items():
        if lower.endswith(suffix):
            return (f"{vendor} is a format OpenSlide does not read; convert it to a pyramidal TIFF "
                    f"(e.g. with QuPath or bfconvert). Received: format={suffix}")
    with path.open("rb") as handle:
        head = handle.read(8)
    for magic, what in _IMAGE_MAGIC.items():
        if head.startswith(magic):
            return f"this is {what}, not a whole-slide image (use Diagnose / predict for single images). Received: suffix={path.suffix}"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return ("a TIFF OpenSlide cannot read as a slide: truncated or corrupt, or not tiled (a strip TIFF; use "
                "predict --tile for large single images). Received: format=tiff")
    return f"not a whole-slide image OpenSlide reads (a renamed or unsupported file?). Received: suffix={path.suffix or 'none'}"


def _rgba_on_white(rgba: np.ndarray) -> np.ndarray:
    """``(h, w, 4)`` uint8 RGBA (OpenSlide's output) composited on white → ``(h, w, 3)`` uint8 RGB."""
    alpha = rgba[..., 3:4]
    if alpha.min(initial=255) == 255:
        return np.ascontiguousarray(rgba[..., :3])
    weight = alpha.astype(np.float32) / 255.0
    return np.rint(rgba[..., :3] * weight + 255.0 * (1.0 - weight)).astype(np.uint8)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]
