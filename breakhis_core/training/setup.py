"""Preparing a training run: scan and split the data, check the weights, write the run directory's first files.

:func:`prepare_run` fails fast, before any folder is created, on an invalid config, unusable data, an
impossible split or unavailable weights, then writes config.json, split.csv, run.json (data summary, split
counts, :func:`describe_weights`, :func:`software_versions`) and status.json "queued". Training the run is
``train.run_training``'s. It lives here rather than in ``rundir.py`` because it needs the data and model
modules that the low-level run directory (imported by jobs, slide analyses and workers) must not pull in.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from breakhis_core import __version__
from breakhis_core.cases.dataset import dataset_cases
from breakhis_core.config import TrainConfig
from breakhis_core.data.records import filter_magnification, scan
from breakhis_core.data.splits import make_split
from breakhis_core.errors import ConfigError
from breakhis_core.models.backbones import Backbone, get_backbone
from breakhis_core.models.weights import file_sha256, resolve_weights
from breakhis_core.runs.rundir import RunDir, check_run_name, new_run_id, now_iso


def describe_weights(weights: str, backbone: Backbone) -> dict:
    """Where the base weights come from, for run.json and the model card (resolves and checks them for ``backbone``)."""
    path = resolve_weights(weights, backbone)
    if path is None:
        return {"source": "none", "detail": "random initialisation (no pretrained weights)"}
    digest = file_sha256(path)
    source = "imagenet" if weights == "imagenet" else "file"
    return {"source": source, "path": path, "sha256": digest}


def describe_model(config: TrainConfig) -> dict:
    """run.json "model": the backbone, the layer Grad-CAM explains and the layer the activation cache splits at
    (None when stage 2 trains the whole base), so a run's models load and explain without guessing."""
    backbone = get_backbone(config.backbone)
    return {"backbone": backbone.name, "gradcam_layer": backbone.gradcam_layer,
            "cache_split_layer": backbone.cache_split_layer(config.stage2_unfreeze)}


def software_versions() -> dict:
    import keras
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "breakhis_core": __version__,
    }


def prepare_run(config: TrainConfig, runs_root: str | Path, run_name: str | None = None, scanned=None,
                experiment: str | None = None) -> Path:
    """Create a run directory for ``config``: scan, split, and record everything before training.

    Fails fast (before any folder is created) on invalid config, unusable data, impossible
    splits and unavailable weights.

    Args:
        config: the run's configuration.
        runs_root: the runs folder.
        run_name: the run's folder name (``rundir.RUN_NAME``: letters, digits, ``.``, ``_``, ``-``); default a time stamp.
            A name already taken is refused (ConfigError), so nothing of an earlier run is overwritten.
        scanned: the ``data.ScanResult`` of ``config.data`` when the caller has scanned it already.
        experiment: id of the cross-validation experiment the run belongs to (``run.json`` "experiment").

    A manifest exported from reviewed cases (``cases.dataset``) has its cases and image hashes recorded in
    ``run.json`` "cases", so the run says which cases it was trained on.

    Returns:
        The new run directory (status "queued").
    """
    config.validate()
    if run_name is not None:
        check_run_name(run_name, Path(runs_root))
    weights = describe_weights(config.weights, get_backbone(config.backbone))
    scanned = scanned if scanned is not None else scan(config.data)
    records = filter_magnification(scanned.records, config.magnification_filter)
    split = make_split(records, config)
    root = Path(runs_root)
    root.mkdir(parents=True, exist_ok=True)
    run_id = run_name or new_run_id(config, root)
    run = RunDir(root / run_id)
    try:
        run.path.mkdir()
    except FileExistsError:
        raise ConfigError(f"a run named {run_id} exists in {root}. Received: run_name={run_id}") from None
    run.save_config(config)
    split.save_csv(run.split_file)
    leakage = split.leakage()
    cases = dataset_cases(config.data) if str(config.data).lower().endswith(".csv") else None
    run.write_info(
        {
            "run_id": run_id,
            "created": now_iso(),
            "data": {**scanned.summary(), "images_used": len(records)},
            "split": {
                "protocol": split.protocol,
                "leaky": split.leaky,
                "group_by": split.group_by,
                "counts": split.counts(),
                "patients_in_several_splits": len(leakage),
            },
            "model": describe_model(config),
            "weights": weights,
            "versions": software_versions(),
            **({"experiment": experiment} if experiment else {}),
            **({"cases": cases} if cases else {}),
        },
    )
    run.set_status("queued", created=now_iso())
    return run.path
