"""Physical pixel size of training images: what one model input covers on the glass, in µm.

A whole-slide tile must show the model the same physical field as one training image, so each
model needs the pixel size (µm per pixel, "MPP") of its training images and their size in pixels.

BreakHis (Spanhol, Oliveira, Petitjean, Heutte, "A Dataset for Breast Cancer Histopathological
Image Classification", IEEE Trans. Biomed. Eng. 63(7):1455-1462, 2016, doi:10.1109/TBME.2015.2496264,
section II "Image acquisition"): an Olympus BX-50 microscope with a relay lens of magnification 3.3×
coupled to a Samsung SCC-131AN camera, whose 1/3" Sony Super-HAD CCD has pixels of 6.5 µm × 6.25 µm
(752 × 582 pixels); the magnifying factors 40×, 100×, 200×, 400× correspond to objective lenses
4×, 10×, 20×, 40× (the 10× ocular is not in the camera's light path). A camera pixel therefore
covers, on the specimen,

    6.5 µm / (objective × 3.3)  horizontally,   6.25 µm / (objective × 3.3)  vertically:

    40X  (4×):  0.492 × 0.473 µm/px      100X (10×): 0.197 × 0.189 µm/px
    200X (20×): 0.0985 × 0.0947 µm/px    400X (40×): 0.0492 × 0.0473 µm/px

and a 700 × 460 px BreakHis image (a crop of the 752 × 582 frame) spans 344.7 × 217.8 µm at 40X.
One public benchmark card (kaiko-ai "eva", BreakHis dataset page) lists "40x (0.25)" µm/px; that
is the usual pixel size of a whole-slide scanner at its "40×" setting, not of BreakHis' 4× objective
with a 3.3× relay, and it is half the value the acquisition set-up gives. We use the set-up's
values; a tile predicted at 0.25 µm/px would show the model a field 4× smaller in area than it
was trained on.

Manifest data (a lab's own images) has no magnification to derive this from: the run records the
pixel size given at training (``TrainConfig.mpp``, CLI ``train --mpp``), and the training images'
size is read from the run's split (median width and height of the training images).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from breakhis_core.config import MAGNIFICATIONS, TrainConfig
from breakhis_core.errors import MagnificationError, PixelSizeError

CAMERA_PIXEL_UM = (6.5, 6.25)
"""(horizontal, vertical) pixel pitch of the BreakHis camera's CCD, µm (Spanhol et al. 2016)."""
RELAY_LENS = 3.3
"""Magnification of the relay lens between microscope and camera (Spanhol et al. 2016)."""
OBJECTIVE = {40: 4, 100: 10, 200: 20, 400: 40}
"""BreakHis magnifying factor → objective lens magnification (the ocular is 10×)."""
BREAKHIS_IMAGE_PX = (700, 460)
"""(width, height) in pixels of a BreakHis image."""
BREAKHIS_MPP = {m: (CAMERA_PIXEL_UM[0] / (OBJECTIVE[m] * RELAY_LENS), CAMERA_PIXEL_UM[1] / (OBJECTIVE[m] * RELAY_LENS))
                for m in MAGNIFICATIONS}
"""BreakHis magnification → (µm per pixel horizontally, vertically) of its images."""
DEFAULT_SLIDE_MAGNIFICATION = 40
"""The BreakHis field a tile matches when the model was trained on all magnifications and none is chosen."""
FIELD_SAMPLE = 64
"""Training images whose headers are read to find the training image size of manifest data."""


@dataclass(frozen=True)
class TrainingField:
    """The physical field of one training image.

    Attributes:
        mpp_x, mpp_y: µm per pixel of the training images, horizontally and vertically.
        width_px, height_px: size of a training image in pixels.
        source: where the numbers come from, for the user (e.g. "BreakHis 40X (Spanhol et al. 2016)").
    """

    mpp_x: float
    mpp_y: float
    width_px: int
    height_px: int
    source: str

    @property
    def width_um(self) -> float:
        return self.width_px * self.mpp_x

    @property
    def height_um(self) -> float:
        return self.height_px * self.mpp_y

    def to_dict(self) -> dict:
        return {"mpp_x": self.mpp_x, "mpp_y": self.mpp_y, "width_px": self.width_px, "height_px": self.height_px,
                "width_um": self.width_um, "height_um": self.height_um, "source": self.source}


def breakhis_field(magnification: int) -> TrainingField:
    """The field of a 700 × 460 BreakHis image at ``magnification`` (40/100/200/400)."""
    if magnification not in BREAKHIS_MPP:
        raise MagnificationError(f"magnification must be 40, 100, 200 or 400. Received: magnification={magnification}")
    mpp_x, mpp_y = BREAKHIS_MPP[magnification]
    return TrainingField(mpp_x, mpp_y, *BREAKHIS_IMAGE_PX,
                         source=f"BreakHis {magnification}X: 6.5 × 6.25 µm camera pixels / ({OBJECTIVE[magnification]}× "
                                f"objective × 3.3× relay lens), Spanhol et al. 2016")


def training_field(config: TrainConfig | None, run_dir: str | Path | None = None, magnification: int | None = None,
                   data_kind: str | None = None) -> TrainingField:
    """The physical field one model input was trained on.

    Args:
        config: the run's TrainConfig (None for an imported model).
        run_dir: the run folder (its ``split.csv`` gives the training image size of manifest data).
        magnification: the BreakHis magnification whose field to match, for a model trained on all
            magnifications (default ``DEFAULT_SLIDE_MAGNIFICATION``); it must agree with a
            single-magnification model's own.
        data_kind: the run's data kind ("breakhis" or "manifest", from run.json), when known.

    Raises:
        PixelSizeError: when the pixel size of the training images is unknown (manifest data
            trained without ``--mpp``).
        MagnificationError: for a magnification other than the model's own.
    """
    if config is not None and config.mpp:
        width, height = _training_image_size(run_dir) if data_kind != "breakhis" else BREAKHIS_IMAGE_PX
        return TrainingField(config.mpp, config.mpp, width, height, source=f"given at training: {config.mpp:g} µm/px")
    if data_kind == "manifest":
        raise PixelSizeError(
            "the model was trained on manifest data without a pixel size, so the field a slide tile must cover is "
            "unknown: retrain with --mpp (µm per pixel of the training images). Received: mpp=None"
        )
    own = config.magnification_filter if config is not None else None
    if own is not None and magnification is not None and magnification != own:
        raise MagnificationError(f"the model was trained on {own}X images only. Received: magnification={magnification}")
    return breakhis_field(own or magnification or DEFAULT_SLIDE_MAGNIFICATION)


def _training_image_size(run_dir: str | Path | None) -> tuple[int, int]:
    """Median (width, height) of up to ``FIELD_SAMPLE`` training images of the run's split (headers only)."""
    from breakhis_core.runs.rundir import RunDir

    split = RunDir(run_dir).split_file if run_dir is not None else None
    if split is None or not split.is_file():
        raise PixelSizeError(f"the run has no split.csv to find its training image size. Received: run_dir={run_dir}")
    sizes = []
    with split.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("split") != "train":
                continue
            try:
                with Image.open(row["path"]) as image:
                    sizes.append(image.size)
            except (OSError, KeyError):
                continue
            if len(sizes) >= FIELD_SAMPLE:
                break
    if not sizes:
        raise PixelSizeError(f"no training image of the run could be read to find their size. Received: split={split}")
    widths, heights = sorted(w for w, _ in sizes), sorted(h for _, h in sizes)
    return widths[len(widths) // 2], heights[len(heights) // 2]
