"""Decoding image files and bytes into RGB uint8 arrays, and resizing them.

Every path into a model (training, evaluation, prediction, Grad-CAM, the pages)
reads pixels through :func:`decode_image`, so the same conversions apply everywhere:

- EXIF orientation is applied (a phone or scanner JPEG shows upright);
- 16-bit images are scaled to 8 bit (value / 257), greyscale is repeated to 3 channels,
  palette and CMYK are converted to RGB, alpha is composited on white;
- anything that is empty, truncated, not an image, or larger than ``MAX_PIXELS``
  raises :class:`ImageDecodeError` with a one-line reason (decompression bombs are
  refused from the header, before any pixel is decoded).

Arrays are ``(height, width, 3)`` uint8 RGB. Model preprocessing (VGG16 "caffe":
RGB→BGR, ImageNet mean subtracted) happens inside the model, see ``model.py``.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageDecodeError

MAX_PIXELS = 64_000_000
"""Largest image accepted, in pixels (64 MP; a 4000×3000 capture is 12 MP, BreakHis 0.32 MP)."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
"""File endings scanned as images."""

# Pillow's own bomb guard is a warning up to 2× its limit; we check sizes ourselves.
Image.MAX_IMAGE_PIXELS = None


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes to a ``(H, W, 3)`` uint8 RGB array.

    Args:
        data: the file's bytes (PNG, JPEG, TIFF, BMP).
        name: shown in error messages.

    Raises:
        ImageDecodeError: with a one-line reason naming ``name``.
    """
    if not data:
        raise ImageDecodeError(f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageDecodeError(
                    f"{name}: image too large ({width}×{height} = {width * height / 1e6:.0f} MP; "
                    f"the limit is {MAX_PIXELS / 1e6:.0f} MP)"
                )
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb_uint8(image)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{name}: not an image file (format not recognised)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"{name}: unreadable or truncated image ({exc})") from None


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file into a ``(H, W, 3)`` uint8 RGB array; see :func:`decode_image`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"{path.name}: cannot read file ({exc.strerror or exc})") from None
    return decode_image(data, path.name)


def _to_rgb_uint8(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image)
        scale = 257.0 if array.max(initial=0) <= 65535 else float(array.max()) / 255.0
        grey = np.clip(array.astype(np.float64) / scale, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        array = np.asarray(image, dtype=np.float64)
        hi = array.max(initial=1.0)
        grey = np.clip(array / (hi if hi > 1.0 else 1.0) * 255.0, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3 or array.size == 0:
        raise ImageDecodeError(f"unsupported image layout: mode {mode}, shape {array.shape}")
    return np.ascontiguousarray(array)


def resize(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize an RGB uint8 image to ``size`` (side, or (height, width)); area interpolation when shrinking."""
    height, width = (size, size) if isinstance(size, int) else size
    if image.shape[0] == height and image.shape[1] == width:
        return image
    shrinking = height * width < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def encode_png(image: np.ndarray) -> bytes:
    """Encode an RGB uint8 array as PNG bytes."""
    ok, buffer = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV fails only on invalid arrays
        raise ValueError(f"PNG encoding failed for an array of shape {image.shape}")
    return buffer.tobytes()
