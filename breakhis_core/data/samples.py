"""The product's own sample: a few real images shipped with the app, to try it and to check an installation
without a data set.

:func:`sample_root` (``assets/samples/`` of the app: the source tree's, or ``breakhis_app/assets/samples/`` once
installed) holds:

- ``breakhis/``: ``BREAKHIS_IMAGES``, 8 BreakHis images (700×460 RGB PNG) in the official folder layout, one per
  tumour type (benign: adenosis, fibroadenoma, phyllodes tumour, tubular adenoma; malignant: ductal, lobular,
  mucinous, papillary carcinoma), two at each magnification (40X, 100X, 200X, 400X: one benign, one malignant);
- ``idc/``: 200 invasive ductal carcinoma patches (50×50 RGB PNG) of 5 patients, 20 IDC-negative (benign) and
  20 IDC-positive (malignant) each, described by ``manifest.csv`` (``path,label,patient``).

Where they come from and their terms: ``assets/samples/README.md``.
"""

from __future__ import annotations

from pathlib import Path

from breakhis_core.errors import SampleError
from breakhis_core.data.images import display_name
from breakhis_core.data.uploads import Skipped, Upload

BREAKHIS_IMAGES = (
    "benign/SOB/adenosis/SOB_B_A_14-22549AB/100X/SOB_B_A-14-22549AB-100-027.png",
    "benign/SOB/fibroadenoma/SOB_B_F_14-25197/40X/SOB_B_F-14-25197-40-023.png",
    "benign/SOB/phyllodes_tumor/SOB_B_PT_14-22704/400X/SOB_B_PT-14-22704-400-026.png",
    "benign/SOB/tubular_adenoma/SOB_B_TA_14-16184/200X/SOB_B_TA-14-16184-200-025.png",
    "malignant/SOB/ductal_carcinoma/SOB_M_DC_14-3909/100X/SOB_M_DC-14-3909-100-014.png",
    "malignant/SOB/lobular_carcinoma/SOB_M_LC_14-13412/200X/SOB_M_LC-14-13412-200-003.png",
    "malignant/SOB/mucinous_carcinoma/SOB_M_MC_14-10147/40X/SOB_M_MC-14-10147-40-001.png",
    "malignant/SOB/papillary_carcinoma/SOB_M_PC_14-9146/400X/SOB_M_PC-14-9146-400-014.png",
)
"""The BreakHis sample's images, relative to :func:`breakhis_sample`."""

_APP_FOLDERS = (Path("assets", "samples"), Path("breakhis_app", "assets", "samples"))
"""Where the sample lies beside ``breakhis_core``: in the source tree, and in an installation."""


def sample_root() -> Path:
    """The sample folder: the first of the tree's and the installation's that exists (else the tree's)."""
    beside = Path(__file__).resolve().parents[2]
    for folder in _APP_FOLDERS:
        if (beside / folder).is_dir():
            return beside / folder
    return beside / _APP_FOLDERS[0]


def breakhis_sample() -> Path:
    """The BreakHis sample folder (official layout; ``data.scan`` reads it)."""
    return sample_root() / "breakhis"


def idc_manifest() -> Path:
    """The IDC sample's ``manifest.csv``."""
    return sample_root() / "idc" / "manifest.csv"


def sample_uploads() -> tuple[list[Upload], list[Skipped]]:
    """The BreakHis sample images read into memory, as uploads of them would be.

    Returns:
        ``(uploads, skipped)``: the images read, and those missing or unreadable, each with its reason
        (a damaged image is found when it is decoded, as for any upload).

    Raises:
        SampleError: when the sample folder itself is missing.
    """
    folder = breakhis_sample()
    if not folder.is_dir():
        raise SampleError(f"the sample images are not installed with this copy of the app. Received: {folder}")
    uploads, skipped = [], []
    for relative in BREAKHIS_IMAGES:
        path = folder / relative
        label = display_name(path.name)
        try:
            uploads.append(Upload(path.name, label, path.read_bytes()))
        except OSError as exc:
            skipped.append(Skipped(label, f"sample file missing or unreadable ({exc.strerror or exc})"))
    return uploads, skipped
