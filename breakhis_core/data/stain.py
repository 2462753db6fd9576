"""Stain normalisation of H&E images: Macenko and Reinhard, stateless, with fixed published targets.

Training (``data.load_arrays(transform=get_normalizer(config.stain_norm))``) and inference
apply the same function, chosen by ``TrainConfig.stain_norm``, before resizing.

- **Macenko** (Macenko et al., "A method for normalizing histology slides for quantitative
  analysis", ISBI 2009): the image's two stain vectors are estimated in optical-density (OD)
  space from the robust extremes of the pixel angles in the plane of the two largest
  eigenvectors, and the stain concentrations are re-rendered with the commonly used reference
  H&E matrix ``MACENKO_HE`` and maximum concentrations ``MACENKO_MAX_C`` (``IO`` = 240,
  ``ALPHA`` = 1, ``BETA`` = 0.15), as in the reference implementations, with one change:
  tissue pixels are those with OD >= ``BETA`` in *some* channel, not in all three. The
  all-channel rule drops eosin-only stroma (its red channel hardly absorbs) and turned a pink
  BreakHis mucinous-carcinoma sample white (2.5 % of its pixels kept).
- **Reinhard** (Reinhard et al., "Color transfer between images", 2001): each channel of
  Ruderman's lαβ space (natural log) is shifted and scaled to the target mean and standard
  deviation; the targets are HistomicsTK's "color norm. standard" (``REINHARD_MEAN``,
  ``REINHARD_STD``, computed on the TCGA-A2-A3XS-DX1 ROI of Amgad et al., 2019). The source
  statistics come from the same tissue pixels; every pixel is transformed.

Images with little tissue (under ``MIN_TISSUE_FRACTION`` of the pixels, e.g. mostly white
background), uniform images and images whose stains cannot be separated (greyscale) are
returned unchanged (as a copy): the fit is meaningless there, and falling back never produces
NaNs. A 700×460 image takes about 20-40 ms either way.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import cv2
import numpy as np

from breakhis_core.config import STAIN_METHODS
from breakhis_core.errors import ConfigError

IO = 240.0
"""Transmitted light intensity (Macenko): the brightness of an empty, unstained pixel."""

ALPHA = 1.0
"""Percentile (and 100 - ALPHA) of the pixel angles taken as the stain-vector extremes (Macenko)."""

BETA = 0.15
"""Optical density below which a channel counts as transparent (background)."""

MACENKO_HE = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
"""Reference stain matrix, ``(3, 2)``: OD of haematoxylin (column 0) and eosin (column 1) in R, G, B."""

MACENKO_MAX_C = np.array([1.9705, 1.0308])
"""Reference 99th-percentile concentrations of haematoxylin and eosin."""

REINHARD_MEAN = np.array([8.74108109, -0.12440419, 0.0444982])
"""Target means of the l, α, β channels (HistomicsTK standard, TCGA-A2-A3XS-DX1)."""

REINHARD_STD = np.array([0.6135447, 0.10989545, 0.0286032])
"""Target standard deviations of the l, α, β channels (HistomicsTK standard)."""

MIN_TISSUE_FRACTION = 0.02
"""Fewer tissue pixels than this fraction of the image: the image is returned unchanged."""

MIN_STAIN_ANGLE = 0.05
"""Stain vectors closer than this (radians, ~3°) cannot be separated: the image is returned unchanged."""

MIN_STD = 1e-3
"""An lαβ channel with a smaller standard deviation is uniform: the image is returned unchanged."""

FIT_PIXELS = 65_536
"""Macenko fits on a regular subsample of about this many pixels (a BreakHis image has 322,000)."""

_OD = (-np.log((np.arange(256) + 1.0) / IO)).astype(np.float32)  # OD of each 8-bit value, (256,)
_MAX_ABSORBING = int(np.flatnonzero(_OD >= BETA).max())  # 205: values up to this have OD >= BETA
_RGB_TO_LMS = np.array([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]])
_LMS_TO_LAB = np.diag([3**-0.5, 6**-0.5, 2**-0.5]) @ np.array([[1, 1, 1], [1, 1, -2], [1, -1, 0]])
_LAB_TO_LMS = np.linalg.inv(_LMS_TO_LAB)
_LMS_TO_RGB = np.linalg.inv(_RGB_TO_LMS)


def get_normalizer(method: str) -> Callable[[np.ndarray], np.ndarray] | None:
    """The stain normaliser of ``TrainConfig.stain_norm``.

    Args:
        method: "none", "macenko" or "reinhard".

    Returns:
        ``f(rgb_uint8) -> rgb_uint8`` (see :func:`normalize_stain`), or None for "none".

    Raises:
        ConfigError: for an unknown method.

    >>> get_normalizer("none") is None
    True
    """
    _check_method(method)
    return None if method == "none" else partial(normalize_stain, method=method)


def normalize_stain(image: np.ndarray, method: str) -> np.ndarray:
    """Normalise the H&E stain of an RGB image to the fixed reference of ``method``.

    Args:
        image: ``(H, W, 3)`` uint8 RGB; not modified.
        method: "none", "macenko" or "reinhard".

    Returns:
        A new ``(H, W, 3)`` uint8 RGB array. It equals ``image`` for "none" and whenever the
        method does not apply: under ``MIN_TISSUE_FRACTION`` tissue (a mostly white image),
        a uniform image, or stains that cannot be separated (e.g. a greyscale image).

    Raises:
        ConfigError: for an unknown method.
        ValueError: when ``image`` is not ``(H, W, 3)`` uint8.
    """
    _check_method(method)
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            "image must be an (H, W, 3) uint8 RGB array. "
            f"Received: shape={getattr(image, 'shape', None)}, dtype={getattr(image, 'dtype', type(image).__name__)}"
        )
    out = None
    if image.size and method != "none":
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # non-finite output falls back
            out = _macenko(image) if method == "macenko" else _reinhard(image)
    if out is None or not np.isfinite(out).all():
        return image.copy()
    return np.rint(np.clip(out, 0.0, 255.0)).astype(np.uint8)


def _check_method(method: str) -> None:
    if method not in STAIN_METHODS:
        raise ConfigError(f"stain_norm must be one of {', '.join(STAIN_METHODS)}. Received: stain_norm={method}")


def _tissue(pixels: np.ndarray) -> np.ndarray:
    """Boolean mask of uint8 RGB ``(..., 3)`` pixels where some channel absorbs (OD >= ``BETA``)."""
    return np.minimum(np.minimum(pixels[..., 0], pixels[..., 1]), pixels[..., 2]) <= _MAX_ABSORBING


def _macenko(image: np.ndarray) -> np.ndarray | None:
    """Macenko-normalised ``(H, W, 3)`` float32 RGB, or None when the method does not apply."""
    pixels = image.reshape(-1, 3)
    sample = np.ascontiguousarray(pixels[:: max(1, len(pixels) // FIT_PIXELS)])
    stained = _OD[sample[_tissue(sample)]]  # (n, 3) float32
    if len(stained) < max(MIN_TISSUE_FRACTION * len(sample), 3):
        return None
    centred = stained - stained.mean(axis=0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    plane = vectors[:, 1:3] * np.where(vectors[0, 1:3] < 0, -1.0, 1.0)  # two largest, pointing into OD > 0
    projected = stained @ plane
    angles = np.arctan2(projected[:, 1], projected[:, 0])
    low, high = np.percentile(angles, [ALPHA, 100.0 - ALPHA])
    if not high - low >= MIN_STAIN_ANGLE:
        return None
    v_low = plane @ np.array([np.cos(low), np.sin(low)])
    v_high = plane @ np.array([np.cos(high), np.sin(high)])
    stains = np.stack([v_low, v_high] if v_low[0] > v_high[0] else [v_high, v_low], axis=1)  # (3, 2): H, E
    unmix = np.linalg.pinv(stains)  # (2, 3): OD → concentrations
    max_c = np.percentile(_OD[sample] @ unmix.T, 99, axis=0)
    if not (max_c > 1e-6).all():
        return None
    # OD → concentrations → scaled to the reference maxima → reference OD, as one (3, 3) matrix
    to_reference = MACENKO_HE @ np.diag(MACENKO_MAX_C / max_c) @ unmix
    return IO * np.exp(cv2.transform(_OD[image], -to_reference))


def _reinhard(image: np.ndarray) -> np.ndarray | None:
    """Reinhard-normalised ``(H, W, 3)`` float32 RGB, or None when the method does not apply."""
    tissue = _tissue(image).astype(np.uint8)
    if cv2.countNonZero(tissue) < max(MIN_TISSUE_FRACTION * tissue.size, 2):
        return None
    # Ruderman lαβ as HistomicsTK: natural log of LMS (floored at 1 so black stays finite)
    log_lms = np.log(np.maximum(cv2.transform(image.astype(np.float32), _RGB_TO_LMS), 1.0))
    mean, std = (v.ravel() for v in cv2.meanStdDev(cv2.transform(log_lms, _LMS_TO_LAB), mask=tissue))
    if not (std >= MIN_STD).all():
        return None
    scale = REINHARD_STD / std
    # lαβ → target statistics → log LMS, as one affine (3, 4) matrix on log LMS
    linear = _LAB_TO_LMS @ np.diag(scale) @ _LMS_TO_LAB
    offset = _LAB_TO_LMS @ (REINHARD_MEAN - scale * mean)
    return cv2.transform(np.exp(cv2.transform(log_lms, np.column_stack([linear, offset]))), _LMS_TO_RGB)
