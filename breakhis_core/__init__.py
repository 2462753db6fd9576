"""breakhis_core: BreakHis benign/malignant classification with VGG16, Grad-CAM and a run registry.

A library: no UI code lives here. The Streamlit app (``app.py``, ``pages/``) and the
CLI (``python -m breakhis_core``) are thin layers over these modules:

- ``config``    TrainConfig, the one configuration dataclass
- ``files``     atomic writes and JSON-lines helpers
- ``images``    decoding of image files and bytes into RGB uint8 arrays
- ``uploads``   uploaded files and zip archives read in memory, with limits
- ``paths``     the data roots and the checks that keep training data inside them
- ``audit``     the audit log of predictions and training runs (JSON lines, no pixels)
- ``data``      BreakHis name parsing, folder / manifest scanning, splits, tf.data pipelines
- ``model``     the VGG16 builder and the trainable-layer switch of the two stages
- ``train``     the two-stage training run and its run directory
- ``cache``     the frozen-prefix activation cache of the cached training path
- ``distribute`` tf.distribute strategies and how batches are shared among replicas
- ``runtime``   TensorFlow's quiet start-up, devices, CPU features and compute precision (bf16 / fp16)
- ``evaluate``  metrics with patient-resampled bootstrap confidence intervals
- ``registry``  runs on disk, model cards, safe model loading
- ``jobs``      training as a background process the UI can poll
- ``predict``   batched diagnosis: magnification routing, tiling, TTA, case verdicts
- ``explain``   Grad-CAM (one compiled pass), Grad-CAM++ and Score-CAM (tf-keras-vis), overlays
- ``stain``     Macenko and Reinhard stain normalisation
- ``report``    self-contained HTML report of a diagnosis batch
- ``cli``       the command line
"""

CLASS_NAMES = ("benign", "malignant")
"""Class order of every model and array in this package: index 0 = benign, 1 = malignant."""

__version__ = "0.1.0"
