"""breakhis_core: BreakHis benign/malignant classification with VGG16, Grad-CAM and a run registry.

A library: no UI code lives here. The Streamlit app (``app.py``, ``pages/``) and the
CLI (``python -m breakhis_core``, installed as ``breakhis``) are thin layers over these modules:

- ``config``    TrainConfig, the one configuration dataclass
- ``files``     atomic writes and JSON-lines helpers
- ``images``    decoding of image files and bytes into RGB uint8 arrays
- ``uploads``   uploaded files and zip archives read in memory, with limits
- ``paths``     the data roots and the checks that keep training data inside them
- ``access``    roles of signed-in users (viewer, pathologist, trainer, admin) from the roles file
- ``audit``     the audit log of predictions, training runs and case reads and changes (JSON lines, no pixels)
- ``cases``     the case store (subpackage): cases, reviews, sign-off on SQLite or PostgreSQL, the loop into training
- ``data``      BreakHis name parsing, folder / manifest scanning, splits, tf.data pipelines
- ``model``     the VGG16 builder and the trainable-layer switch of the two stages
- ``run_setup`` a new run directory: data scanned and split, weights checked, versions recorded
- ``train``     the two-stage training run and its run directory
- ``progress``  progress.json of a training run, its ETA, listener and log lines
- ``callbacks`` a training stage's epoch callback, checkpoints and kept epoch
- ``feeds``     what a training stage fits on: the images (plain path) or cached activations
- ``run_evaluation`` a trained run's test metrics and learning check
- ``cache``     the frozen-prefix activation cache of the cached training path
- ``distribute`` tf.distribute strategies and how batches are shared among replicas
- ``runtime``   TensorFlow's quiet start-up, devices, CPU features and compute precision (bf16 / fp16)
- ``evaluate``  metrics with patient-resampled bootstrap confidence intervals
- ``rundir``    the run directory: its file names, status and progress files, liveness, cancel, the run lock
- ``registry``  runs on disk, model names, model cards
- ``model_loading`` safe loading of a .keras classifier file
- ``default_model`` the active model of the runs folder
- ``transfer``  import of a .keras file as a run, export of a run as a zip
- ``cleanup``   deleting runs and activation cache parts
- ``jobs``      training as a background process the UI can poll
- ``predict``   batched diagnosis: magnification routing, tiling, TTA, case verdicts
- ``explain``   Grad-CAM (one compiled pass), Grad-CAM++ and Score-CAM (tf-keras-vis), overlays
- ``stain``     Macenko and Reinhard stain normalisation
- ``report``    the report of a diagnosis batch: HTML from jinja2 templates, the lab profile, PDF
- ``logs``      operator logs through ``logging`` at ``$BREAKHIS_LOG_LEVEL``
- ``cli``       the command line
"""

CLASS_NAMES = ("benign", "malignant")
"""Class order of every model and array in this package: index 0 = benign, 1 = malignant."""

__version__ = "0.1.0"
