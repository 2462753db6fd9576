"""What the whole-slide viewer shows: the slide as Deep Zoom tiles (OpenSlide's ``DeepZoomGenerator``) with an
analysis' heat map and tissue mask as overlays, ready for OpenSeadragon (the app's ``ui/viewer``).

The tiles of every Deep Zoom level up to ``MAX_SIDE`` px on the slide's longer side are made at once and handed
to the browser as JPEG data; nothing is fetched from elsewhere, and the viewer zooms and pans over them. Deeper
zoom shows the finest level included, enlarged: for a closer look at a tile, the page shows it as read, with its
Grad-CAM, when it is clicked.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from breakhis_core.data.images import data_uri, encode_png
from breakhis_core.slides.wsi import open_slide

MAX_SIDE = 4096
"""Longer side, in px, of the finest Deep Zoom level the viewer gets (its tiles are all made at once)."""
TILE_SIZE = 254
"""Deep Zoom tile side, px (with the overlap, 256: OpenSlide's and OpenSeadragon's usual choice)."""
OVERLAP = 1
"""Deep Zoom tile overlap, px on each inner side."""
JPEG_QUALITY = 80
"""JPEG quality of the tiles (1..95)."""
MASK_COLOUR = (0, 170, 80, 110)
"""RGBA of tissue in the mask overlay (transparent elsewhere)."""


@dataclass(frozen=True)
class ViewerPyramid:
    """The Deep Zoom levels of a slide the viewer gets.

    Attributes:
        width, height: size in px of the finest level included (``top_level``).
        downsample: level-0 px of the slide per px of that level (>= 1).
        tile_size, overlap: Deep Zoom tile geometry, px.
        top_level: index of the finest level included; levels 0 (1 px) .. ``top_level`` are all there.
        tiles: ``"level/col_row"`` → JPEG bytes of that tile.
    """

    width: int
    height: int
    downsample: float
    tile_size: int
    overlap: int
    top_level: int
    tiles: dict[str, bytes]

    def to_viewer(self) -> dict:
        """JSON-ready description for OpenSeadragon: the image size, tile geometry and each tile as a data URI."""
        return {"width": self.width, "height": self.height, "downsample": self.downsample, "tileSize": self.tile_size,
                "overlap": self.overlap, "maxLevel": self.top_level,
                "tiles": {key: data_uri(data, "image/jpeg") for key, data in self.tiles.items()}}


def viewer_pyramid(path: str | Path, mpp: float | None = None, max_side: int = MAX_SIDE) -> ViewerPyramid:
    """The Deep Zoom levels of a slide up to ``max_side`` px on its longer side.

    Args:
        path: the slide file.
        mpp: µm per level-0 pixel when the slide does not record it (as analysed; the checks of ``wsi.open_slide``).
        max_side: longer side of the finest level included, px.

    Raises:
        SlideError, PixelSizeError: the slide cannot be read (one-line reason naming it).
    """
    with open_slide(path, mpp) as slide:
        zoom = slide.deep_zoom(TILE_SIZE, OVERLAP)
        top = max([level for level, size in enumerate(zoom.level_dimensions) if max(size) <= max_side] or [0])
        tiles = {}
        for level in range(top + 1):
            cols, rows = zoom.level_tiles[level]
            for row in range(rows):
                for col in range(cols):
                    tiles[f"{level}/{col}_{row}"] = _jpeg(zoom.get_tile(level, (col, row)))
        width, height = zoom.level_dimensions[top]
        return ViewerPyramid(width=width, height=height, downsample=slide.info.width / width, tile_size=TILE_SIZE,
                             overlap=OVERLAP, top_level=top, tiles=tiles)


def mask_overlay(mask: np.ndarray) -> np.ndarray:
    """``(h, w, 4)`` uint8 RGBA of a ``(h, w)`` bool tissue mask: ``MASK_COLOUR`` on tissue, transparent elsewhere."""
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[mask] = MASK_COLOUR
    return rgba


def png_data_uri(image: np.ndarray) -> str:
    """An RGB or RGBA uint8 array as a PNG data URI."""
    return data_uri(encode_png(image), "image/png")


def _jpeg(tile: Image.Image) -> bytes:
    out = io.BytesIO()
    tile.convert("RGB").save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()
