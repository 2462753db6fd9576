"""Image files of cases, stored once on disk by the SHA-256 of their bytes, and the models' heat maps of them.

``<runs folder>/cases/images/<first 2 hex digits>/<sha256><suffix>`` (``layout``): the same image given twice (again, or in
another case) is one file. Files are written whole (temp file + rename) *before* the database transaction that
names them, so an upload survives a database that cannot be reached (the retry finds the file there), and a file
is never removed by a failed save. A heat map is an 8-bit grey PNG of the image's size, one per image and model:
``<sha256>.heatmap-<first 12 hex digits of the SHA-1 of the model id>.png`` beside the image.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from breakhis_core.errors import CaseError
from breakhis_core.files import write_bytes_atomic
from breakhis_core.data.images import decode_image
from breakhis_core.cases.records import NewImage

SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class StoredFile:
    """One image file in the store: its SHA-256 (hex), suffix (".png"), size in bytes and pixels (width, height)."""

    sha256: str
    suffix: str
    n_bytes: int
    width: int
    height: int


class ImageFiles:
    """The image files under ``root`` (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, sha256: str, suffix: str) -> Path:
        """Where the file of ``sha256`` lies."""
        return self.root / sha256[:2] / f"{sha256}{suffix}"

    def store(self, data: bytes, name: str) -> StoredFile:
        """Keep ``data`` (an image file named ``name``; it must decode) once; nothing is written when the same bytes
        are already there.

        Raises:
            ImageDecodeError: when ``data`` is not an image ``images.decode_image`` reads.
            CaseError: for a name whose suffix is not an image file's.
            DiskSpaceError: when the disk is full (nothing half-written remains).
        """
        suffix = Path(name).suffix.lower()
        if suffix not in SUFFIXES:
            raise CaseError(f"a case image is a {', '.join(SUFFIXES)} file. Received: {name}")
        height, width = decode_image(data, name).shape[:2]
        digest = hashlib.sha256(data).hexdigest()
        path = self.path(digest, suffix)
        if not path.is_file() or path.stat().st_size != len(data):
            write_bytes_atomic(path, data)
        return StoredFile(digest, suffix, len(data), int(width), int(height))

    def keep(self, images: tuple[NewImage, ...]) -> list[StoredFile]:
        """Store the files of ``images`` and their heat maps (one ``StoredFile`` per image, in order). Needs no
        database: a page calls it before saving a case, so the upload is on disk even when the database is down.

        Raises:
            see :meth:`store`.
        """
        kept = []
        for image in images:
            file = self.store(image.data, image.name)
            if image.heatmap is not None and image.prediction is not None:
                self.store_heatmap(file.sha256, image.prediction.model_id, image.heatmap)
            kept.append(file)
        return kept

    def heatmap_path(self, sha256: str, model_id: str) -> Path:
        """Where the heat map of image ``sha256`` by model ``model_id`` lies."""
        model_key = hashlib.sha1(model_id.encode("utf-8")).hexdigest()[:12]
        return self.root / sha256[:2] / f"{sha256}.heatmap-{model_key}.png"

    def store_heatmap(self, sha256: str, model_id: str, heatmap: np.ndarray) -> None:
        """Keep ``heatmap`` (``(H, W)`` float in [0, 1]) as an 8-bit grey PNG.

        Raises:
            DiskSpaceError: when the disk is full.
        """
        grey = np.clip(np.rint(np.asarray(heatmap, dtype=np.float32) * 255), 0, 255).astype(np.uint8)
        ok, encoded = cv2.imencode(".png", grey)
        if not ok:  # pragma: no cover - OpenCV fails only on invalid arrays
            raise ValueError(f"PNG encoding failed for a heat map of shape {grey.shape}")
        write_bytes_atomic(self.heatmap_path(sha256, model_id), encoded.tobytes())

    def heatmap(self, sha256: str, model_id: str) -> np.ndarray | None:
        """The stored heat map, ``(H, W)`` float32 in [0, 1], or None when there is none."""
        path = self.heatmap_path(sha256, model_id)
        if not path.is_file():
            return None
        grey = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_GRAYSCALE)
        return None if grey is None else grey.astype(np.float32) / 255.0
