"""Domain errors of breakhis_core.

Every error a user can cause derives from :class:`BreakHisError`; the CLI turns
them into exit code 2 with a one-line reason and the pages show them with
``st.error``. Anything else is an internal error (exit code 1).
"""


class BreakHisError(Exception):
    """Raised when a request cannot be served because of its input; the message is for the user."""


class DatasetLayoutError(BreakHisError):
    """Raised when a data folder or manifest holds no usable images or is laid out wrongly."""


class FilenameError(BreakHisError):
    """Raised when a file name does not follow the BreakHis naming convention."""


class ImageDecodeError(BreakHisError):
    """Raised when a file cannot be read as an RGB image (empty, truncated, not an image, too large)."""


class SplitError(BreakHisError):
    """Raised when a split cannot be made (too few patients per class, unknown protocol, bad Folds.csv)."""


class MagnificationError(BreakHisError):
    """Raised when a magnification is invalid or no loaded model serves it."""


class WeightsError(BreakHisError):
    """Raised when ImageNet weights cannot be obtained or a weights file does not fit the model."""


class ConfigError(BreakHisError):
    """Raised when a training configuration holds an invalid value."""


class DataPathError(ConfigError):
    """Raised when a data path does not exist or lies outside the configured data roots (``..``, symlinks, absolute paths)."""


class RunNotFoundError(BreakHisError):
    """Raised when a run id or run directory does not exist in the registry."""


class ModelFileError(BreakHisError):
    """Raised when a model file is missing, corrupt, unsafe (e.g. a Lambda layer) or of the wrong shape."""


class JobError(BreakHisError):
    """Raised when a training job cannot be started, e.g. because another one is running."""


class DiskSpaceError(BreakHisError):
    """Raised when there is not enough free disk space for a file that must be written."""


class PixelSizeError(BreakHisError):
    """Raised when the physical pixel size (µm per pixel) of a slide or of a model's training images is unknown or absurd."""


class SlideError(BreakHisError):
    """Raised when a whole-slide image cannot be used (not a slide, unsupported format, corrupt, absurd size, no tissue)."""


class CancelledError(BreakHisError):
    """Raised when a slide analysis is cancelled by its user."""


class ReportError(BreakHisError):
    """Raised when a report cannot be made: a bad lab profile (``lab.toml``, its logo) or a PDF renderer that is
    not installed (WeasyPrint, or its Pango system libraries)."""


class SampleError(BreakHisError):
    """Raised when the sample images shipped with the app are missing (an incomplete installation or checkout)."""


class CaseError(BreakHisError):
    """Raised when a case request cannot be served: an unknown case, an accession number or patient reference that is
    not allowed, a review of a signed case, an image that cannot be stored."""


class AccessionExistsError(CaseError):
    """Raised when a new case is given an accession number that another case already has; ``case_id`` names that
    case so that the caller can offer to open it."""

    def __init__(self, message: str, case_id: int):
        super().__init__(message)
        self.case_id = case_id


class CaseConflictError(CaseError):
    """Raised when a case was changed by someone else since it was read (its version moved on); nothing of the
    request was saved, and the caller still holds what the user typed."""


class PermissionDeniedError(BreakHisError):
    """Raised when the signed-in user's role does not allow what was asked (e.g. a viewer signing a case)."""


class DatabaseError(BreakHisError):
    """Raised when the case database cannot be used: unreachable, not a database, or at another schema version
    than this program (the message names the migration to run)."""
