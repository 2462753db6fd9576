"""Models in and out of the runs folder: an external ``.keras`` file imported as a run, a run exported as a zip.

An imported model is a run without config.json: ``run.json`` holds ``"imported": {"source_file",
"sha256", "input_size", "task"}`` (the task told by the output size: 2 malignancy, 8 subtype), status is done and
there are no metrics; its model is ``<run_id>:finetuned``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import shutil
import tempfile
import zipfile
from datetime import datetime
from pathlib import Path

from breakhis_core import runtime
from breakhis_core.files import write_bytes_atomic, write_json_atomic
from breakhis_core.models.loading import check_softmax_head, load_model
from breakhis_core.lab.paths import runs_dir
from breakhis_core.runs.registry import Run, load_run
from breakhis_core.runs.rundir import CHECKPOINTS_DIR, MODEL_SUFFIX, RunDir, now_iso, unique_name
from breakhis_core.runs.status import RunStatus

log = logging.getLogger(__name__)


def import_model(keras_file: str | Path, root: str | Path | None = None, name: str | None = None) -> Run:
    """Register an external ``.keras`` classifier as a run (its model becomes ``<run_id>:finetuned``).

    The file is validated first (safe mode, input ``(None, S, S, 3)``, output the classes of a task, 2 or 8, from a
    Dense softmax layer, as Diagnose and its heat maps need); the run folder is assembled under a hidden
    name and renamed into place, so a refusal or a crash leaves nothing behind. Its run.json "model" records the
    Grad-CAM layer and how it was found (``backbones.find_gradcam_layer``: the backbone recognised from the layer
    names, else the last convolution output).

    Args:
        keras_file: the model file.
        root: runs folder (see :func:`runs_dir`).
        name: a label for the run id; default the file's stem.

    Raises:
        ModelFileError: when the file is missing, unsafe, corrupt or of the wrong shape.
    """
    from breakhis_core.models.backbones import find_gradcam_layer
    from breakhis_core.models.classifier import check_model_io, model_task

    keras_file = Path(keras_file).expanduser()
    model = load_model(keras_file)
    input_size = check_model_io(model)
    task = model_task(model)
    check_softmax_head(model, keras_file.name)
    gradcam = find_gradcam_layer(model)
    data = keras_file.read_bytes()
    root = runs_dir(root)
    root.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name or keras_file.stem).strip("-")[:40] or "model"
    run_id = unique_name(root, f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-imported-{slug}")
    created = now_iso()
    staging = RunDir(Path(tempfile.mkdtemp(prefix=".import-", dir=root)))
    try:
        write_bytes_atomic(staging.model_file("finetuned"), data)
        staging.write_info({
            "run_id": run_id,
            "created": created,
            "name": name or keras_file.stem,
            "imported": {"source_file": keras_file.name, "sha256": hashlib.sha256(data).hexdigest(), "input_size": input_size,
                         "task": task.name},
            "model": {"backbone": gradcam.backbone, "gradcam_layer": gradcam.layer, "gradcam_layer_found_by": gradcam.found_by},
            "versions": runtime.software_versions(),
        })
        write_json_atomic(staging.status_file, {"status": RunStatus.DONE, "created": created, "ended": created, "error": None})
        os.rename(staging.path, root / run_id)
    except BaseException:
        shutil.rmtree(staging.path, ignore_errors=True)
        raise
    log.info("model imported as run %s", run_id)
    return load_run(run_id, root)


def export_run(run: Run) -> bytes:
    """A zip of the run folder (entries under ``<run_id>/``) without ``checkpoints/`` and temporary files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for file in sorted(run.path.rglob("*")):
            relative = file.relative_to(run.path)
            if not file.is_file() or relative.parts[0] == CHECKPOINTS_DIR or file.name.startswith("."):
                continue
            compression = zipfile.ZIP_STORED if file.suffix == MODEL_SUFFIX else zipfile.ZIP_DEFLATED
            archive.write(file, f"{run.run_id}/{relative.as_posix()}", compress_type=compression)
    return buffer.getvalue()

