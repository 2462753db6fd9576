"""Decoding image files and bytes into RGB uint8 arrays, and resizing them.

Every path into a model (training, evaluation, prediction, Grad-CAM, the pages)
reads pixels through :func:`decode_image`, so the same conversions apply everywhere:

- only PNG, JPEG, TIFF and BMP are decoded (``FORMATS``); anything else, e.g. a text, HTML
  or PostScript file renamed ``.png``, is refused (PostScript would start Ghostscript);
- EXIF orientation is applied (a phone or scanner JPEG shows upright);
- 16-bit images keep their high byte (``value >> 8``, as Pillow does for 16-bit RGB),
  greyscale is repeated to 3 channels, palette and CMYK are converted to RGB, and
  alpha (or a transparent palette entry) is composited on white;
- anything that is empty, truncated, not an image, larger than ``MAX_PIXELS`` or
  ``MAX_FILE_BYTES`` raises :class:`ImageDecodeError` with a one-line reason that names the
  file (shortened by :func:`display_name`); decompression bombs are refused from the header,
  before any pixel is decoded.

Arrays are ``(height, width, 3)`` uint8 RGB, C-contiguous, writeable, and never share memory
with the input. Model preprocessing (the backbone's; VGG16 "caffe": RGB→BGR, ImageNet mean subtracted)
happens inside the model, see ``models/backbones.py``.
"""

from __future__ import annotations

import base64
import io
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from breakhis_core.errors import ImageDecodeError

MAX_PIXELS = 64_000_000
"""Largest image accepted, in pixels (64 MP; a 4000×3000 capture is 12 MP, BreakHis 0.32 MP)."""

MAX_FILE_BYTES = 512 * 2**20
"""Largest file accepted, in bytes (512 MiB; an uncompressed 64 MP 16-bit RGB TIFF is 384 MB)."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
"""File endings scanned as images."""

FORMATS = ("PNG", "JPEG", "TIFF", "BMP")
"""Pillow formats decoded ("JPEG" includes the multi-picture JPEGs some cameras write)."""

NAME_LIMIT = 80
"""Longest file name shown in a message, in characters."""

# Images over MAX_PIXELS are refused below, so Pillow's bomb warning (from 89 MP) is noise;
# its DecompressionBombError (from 179 MP) is turned into an ImageDecodeError.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def display_name(name: str, limit: int = NAME_LIMIT) -> str:
    """``name`` made safe for a one-line message.

    Non-printable characters (newlines, tabs, U+2028, lone surrogates) are escaped as in
    ``ascii()``, and a name longer than ``limit`` characters keeps its start and end around "…".
    """
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(name))
    if len(text) <= limit:
        return text
    head = (limit - 1) * 2 // 3
    return text[:head] + "…" + text[len(text) - (limit - 1 - head) :]


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes to a ``(H, W, 3)`` uint8 RGB array.

    Args:
        data: the file's bytes (PNG, JPEG, TIFF, BMP); any bytes-like object, never modified.
        name: the file name, used only in error messages (shortened to ``NAME_LIMIT``).

    Returns:
        A new C-contiguous, writeable array sharing no memory with ``data``.

    Raises:
        ImageDecodeError: with a one-line reason naming ``name``.
    """
    label = display_name(name)
    size = memoryview(data).nbytes
    if size == 0:
        raise ImageDecodeError(f"{label}: empty file (0 bytes)")
    _check_file_size(size, label)
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageDecodeError(
                    f"{label}: image too large ({width}×{height} = {width * height / 1e6:.0f} MP; "
                    f"the limit is {MAX_PIXELS / 1e6:.0f} MP)"
                )
            if width * height == 0:
                raise ImageDecodeError(f"{label}: image has no pixels ({width}×{height})")
            image.load()
            return _to_rgb_uint8(ImageOps.exif_transpose(image))
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{label}: not a PNG, JPEG, TIFF or BMP image") from None
    except Image.DecompressionBombError:  # Pillow's own check, over 2 × Image.MAX_IMAGE_PIXELS
        raise ImageDecodeError(
            f"{label}: image too large (its header declares over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} MP; "
            f"the limit is {MAX_PIXELS / 1e6:.0f} MP)"
        ) from None
    except MemoryError:
        raise ImageDecodeError(f"{label}: not enough memory to decode this image") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ... on bad data
        reason = display_name(str(exc) or type(exc).__name__, 160)
        raise ImageDecodeError(f"{label}: unreadable or truncated image ({reason})") from None


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file into a ``(H, W, 3)`` uint8 RGB array; see :func:`decode_image`."""
    path = Path(path)
    return decode_image(read_image_bytes(path), path.name)


def read_image_bytes(path: str | Path) -> bytes:
    """The bytes of an image file, refusing files over ``MAX_FILE_BYTES`` before reading them.

    Raises:
        ImageDecodeError: when the file is too large, missing, a folder or unreadable (one line).
    """
    path = Path(path)
    try:
        _check_file_size(path.stat().st_size, display_name(path.name))
        return path.read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"{display_name(path.name)}: cannot read file ({exc.strerror or exc})") from None


def _check_file_size(size: int, label: str) -> None:
    if size > MAX_FILE_BYTES:
        raise ImageDecodeError(f"{label}: file too large ({size:,} bytes; the limit is {MAX_FILE_BYTES:,})")


def _to_rgb_uint8(image: Image.Image) -> np.ndarray:
    """A new ``(H, W, 3)`` uint8 RGB array from a decoded Pillow image of any mode."""
    mode = image.mode
    if mode.startswith("I;16"):
        return _grey_to_rgb(np.asarray(image) >> 8)
    if mode == "I":  # 32-bit signed: 16-bit data keeps its high byte, wider data is scaled to its maximum
        array = np.clip(np.asarray(image), 0, None)
        hi = int(array.max(initial=0))
        return _grey_to_rgb(array >> 8 if hi <= 65535 else np.rint(array * (255.0 / hi)))
    if mode == "F":  # 32-bit float: [0, 1] or, when larger, [0, max] is mapped to [0, 255]
        array = np.nan_to_num(np.asarray(image, dtype=np.float64), posinf=0.0, neginf=0.0)
        hi = max(float(array.max(initial=1.0)), 1.0)
        return _grey_to_rgb(np.rint(np.clip(array, 0.0, None) * (255.0 / hi)))
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.array(image.convert("RGB"), dtype=np.uint8, order="C")


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)


def resize(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize an RGB uint8 image to ``size`` (side, or (height, width)); area interpolation when shrinking."""
    height, width = (size, size) if isinstance(size, int) else size
    if image.shape[0] == height and image.shape[1] == width:
        return image
    shrinking = height * width < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def encode_png(image: np.ndarray) -> bytes:
    """Encode an ``(h, w, 3)`` RGB or ``(h, w, 4)`` RGBA uint8 array as PNG bytes."""
    conversion = cv2.COLOR_RGBA2BGRA if image.ndim == 3 and image.shape[2] == 4 else cv2.COLOR_RGB2BGR
    ok, buffer = cv2.imencode(".png", cv2.cvtColor(image, conversion))
    if not ok:  # pragma: no cover - OpenCV fails only on invalid arrays
        raise ValueError(f"PNG encoding failed for an array of shape {image.shape}")
    return buffer.tobytes()


def data_uri(data: bytes, mime: str) -> str:
    """``data:<mime>;base64,…`` of encoded ``data`` (reports and the slide viewer embed their images)."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
