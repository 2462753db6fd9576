"""Images decoded and resized once into arrays, for training and evaluation."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from breakhis_core.data.images import read_image, resize
from breakhis_core.data.records import ImageRecord, Rejected
from breakhis_core.errors import ImageDecodeError
from breakhis_core.task import MALIGNANCY, Task


@dataclass(frozen=True, eq=False)  # eq=False: numpy arrays do not compare with ==
class ImageArrays:
    """Images decoded and resized once (:func:`load_arrays`), for training and evaluation.

    Attributes:
        images: ``(N, S, S, 3)`` uint8 RGB in [0, 255], S the side asked for (``N`` = 0 gives ``(0, S, S, 3)``).
        labels: ``(N,)`` int32 class index of the task asked for (malignancy: 0 = benign, 1 = malignant;
            subtype: the tumour type's index in ``task.TUMOUR_TYPES``).
        records: the N records the rows come from, in the same order.
        rejected: the records' files that failed to decode, each with its reason (not in ``images``).
    """

    images: np.ndarray
    labels: np.ndarray
    records: list[ImageRecord]
    rejected: list[Rejected]


def load_arrays(records: list[ImageRecord], size: int, transform=None, workers: int = 2,
                task: Task = MALIGNANCY) -> ImageArrays:
    """Decode and resize images once, for training and evaluation.

    Args:
        records: images to load.
        size: output side in pixels (square; BreakHis 700×460 is resized without cropping).
        transform: optional ``f(rgb_uint8) -> rgb_uint8`` applied before resizing (stain normalisation).
        workers: decoding threads.
        task: whose class index each label is (``Task.label_of``).

    Returns:
        The images that decoded (``(N, size, size, 3)`` uint8 RGB), their labels and records in the same order,
        and the files that failed to decode with reasons.
    """

    def load(record: ImageRecord):
        try:
            image = read_image(record.path)
            if transform is not None:
                image = transform(image)
            return resize(image, size), None
        except ImageDecodeError as exc:
            return None, Rejected(record.path, str(exc))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(load, records))
    kept = [(r, img) for r, (img, err) in zip(records, results) if err is None]
    rejected = [err for _, err in results if err is not None]
    images = np.stack([img for _, img in kept]) if kept else np.zeros((0, size, size, 3), np.uint8)
    labels = np.array([task.label_of(r) for r, _ in kept], dtype=np.int32)
    return ImageArrays(images, labels, [r for r, _ in kept], rejected)
