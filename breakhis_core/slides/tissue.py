"""Tissue detection on a slide thumbnail: Otsu on saturation, then morphological clean-up.

Glass and background are bright and grey (low saturation); H&E-stained tissue is coloured.
:func:`tissue_mask` thresholds the HSV saturation of the thumbnail (Otsu's threshold by default,
kept within ``MIN_SATURATION`` .. ``MAX_AUTO_SATURATION`` so an empty slide's noise is not called
tissue and pale tissue is not called glass; or a threshold the user sets), drops near-black pixels (slide labels, edges, black pen), closes small gaps, opens
away specks and removes connected regions smaller than ``MIN_REGION_FRACTION`` of the thumbnail.
:meth:`TissueMask.fraction` gives the share of tissue inside any level-0 box, :meth:`TissueMask.box` the level-0 box
around all the tissue, and :meth:`TissueMask.covered_share` the share of the tissue area that a set of boxes covers.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MIN_SATURATION = 0.07
"""Lowest saturation threshold (fraction of 255) Otsu may pick: below it lies bare glass."""
MAX_AUTO_SATURATION = 0.10
"""Highest threshold Otsu may pick: when tissue is stained unevenly Otsu splits strong from pale
staining (BreakHis 40X fields have median saturations near 0.1), and pale tissue is still tissue."""
DARK_VALUE = 0.15
"""Pixels darker than this (HSV value, fraction of 255) are not tissue (labels, black pen, slide edges)."""
MIN_REGION_FRACTION = 0.0005
"""Connected tissue regions smaller than this share of the thumbnail are removed."""
KERNEL_PX = 7
"""Side of the square structuring element of the closing and opening, thumbnail pixels."""


@dataclass
class TissueMask:
    """Where the tissue is, on the thumbnail grid.

    Attributes:
        mask: ``(h, w)`` bool, True on tissue (thumbnail pixels).
        scale: level-0 pixels per mask pixel.
        threshold: saturation threshold used, fraction of 255 in [0, 1].
        method: "otsu" or "given".
    """

    mask: np.ndarray
    scale: float
    threshold: float
    method: str

    @property
    def tissue_share(self) -> float:
        """Share of the thumbnail that is tissue, in [0, 1]."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def fraction(self, x0: float, y0: float, width: float, height: float) -> float:
        """Share of tissue in a level-0 box (x0, y0, width, height), in [0, 1] (0 outside the mask)."""
        window = self.mask[self._window(x0, y0, width, height)]
        return float(window.mean()) if window.size else 0.0

    def box(self) -> tuple[float, float, float, float] | None:
        """The level-0 box ``(x0, y0, x1, y1)`` around every tissue pixel of the mask, or None without tissue."""
        rows, cols = np.nonzero(self.mask)
        if not rows.size:
            return None
        return (cols.min() * self.scale, rows.min() * self.scale, (cols.max() + 1) * self.scale,
                (rows.max() + 1) * self.scale)

    def covered_share(self, boxes: list[tuple[float, float, float, float]]) -> float:
        """Share of the tissue area (mask pixels) inside the union of level-0 boxes ``(x0, y0, width, height)``,
        in [0, 1]; a mask pixel partly inside a box counts as inside, as in :meth:`fraction`. 0 without tissue."""
        covered = np.zeros_like(self.mask)
        for box in boxes:
            covered[self._window(*box)] = True
        total = int(self.mask.sum())
        return float((covered & self.mask).sum() / total) if total else 0.0

    def _window(self, x0: float, y0: float, width: float, height: float) -> tuple[slice, slice]:
        """The mask pixels a level-0 box touches, as a (rows, cols) slice."""
        left, top = int(np.floor(x0 / self.scale)), int(np.floor(y0 / self.scale))
        right, bottom = int(np.ceil((x0 + width) / self.scale)), int(np.ceil((y0 + height) / self.scale))
        return slice(max(top, 0), max(bottom, 0)), slice(max(left, 0), max(right, 0))


def tissue_mask(thumbnail: np.ndarray, scale: float, threshold: float | None = None) -> TissueMask:
    """The tissue mask of a thumbnail.

    Args:
        thumbnail: ``(h, w, 3)`` uint8 RGB.
        scale: level-0 pixels per thumbnail pixel.
        threshold: saturation threshold in [0, 1] (fraction of 255); None: Otsu's, kept within ``MIN_SATURATION`` .. ``MAX_AUTO_SATURATION``.

    Raises:
        ValueError: for a threshold outside [0, 1].
    """
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"the tissue threshold is a saturation in [0, 1]. Received: threshold={threshold}")
    hsv = cv2.cvtColor(np.ascontiguousarray(thumbnail, dtype=np.uint8), cv2.COLOR_RGB2HSV)
    saturation, value = hsv[..., 1], hsv[..., 2]
    if threshold is None:
        otsu, _ = cv2.threshold(saturation, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        threshold, method = min(max(otsu / 255.0, MIN_SATURATION), MAX_AUTO_SATURATION), "otsu"
    else:
        method = "given"
    mask = (saturation > threshold * 255.0) & (value >= DARK_VALUE * 255.0)
    kernel = np.ones((KERNEL_PX, KERNEL_PX), np.uint8)
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = np.zeros(count, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= MIN_REGION_FRACTION * mask.size
    return TissueMask(mask=keep[labels], scale=float(scale), threshold=float(threshold), method=method)
