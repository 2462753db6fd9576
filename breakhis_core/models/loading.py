"""Loading a classifier file safely: Keras safe mode only, input and output checked.

A ``.keras`` file is a zip; one that is not, or that holds a Lambda layer (arbitrary code) or
unknown custom objects, or whose shapes are wrong, is refused with ``ModelFileError``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from breakhis_core.errors import ModelFileError


def load_model(path: str | Path):
    """Load a ``.keras`` classifier in Keras safe mode and check its input and output.

    Returns:
        A ``keras.Model`` taking ``(None, S, S, 3)`` RGB in [0, 255] and returning ``(None, K)`` class
        probabilities of a task (``task.py``: 2 benign/malignant, 8 tumour types).

    Raises:
        ModelFileError: for a missing, truncated or corrupt file, one that is not a ``.keras``
            zip, one holding a Lambda layer or unknown custom objects, or wrong shapes (an output size that
            fits no task included).
    """
    import keras

    from breakhis_core.models import classifier as _model  # registers the preprocessing layers before deserialising

    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelFileError(f"model file not found. Received: {path}")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"not a .keras model (not a zip archive: truncated, corrupt or another format). Received: {path.name}"
        )
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # keras raises ValueError, TypeError, BadZipFile, OSError, … for bad files
        message = str(exc)
        if "Lambda" in message:
            reason = "contains a Lambda layer (arbitrary code); refused in safe mode"
        elif "arbitrary code" in message or "safe_mode" in message:
            reason = "contains serialised Python code; refused in safe mode"
        else:
            reason = f"cannot be loaded ({type(exc).__name__}: {message.splitlines()[0] if message else ''})"
        raise ModelFileError(f"model file {reason}. Received: {path.name}") from None
    try:
        _model.check_model_io(model)
    except ModelFileError as exc:
        raise ModelFileError(f"{path.name}: {exc}") from None
    return model



def check_softmax_head(model, name: str) -> None:
    """Refuse a classifier whose last layer is not a Dense softmax (its outputs would not be probabilities)."""
    import keras

    head = model.layers[-1]
    activation = getattr(getattr(head, "activation", None), "__name__", None)
    if not isinstance(head, keras.layers.Dense) or activation != "softmax":
        raise ModelFileError(
            f"model's last layer must be a Dense layer with softmax activation (class probabilities). "
            f"Received: {name} ends with {type(head).__name__}({activation or 'no activation'})"
        )

