"""Preparing a training run: scan and split the data, check the weights, write the run directory's first files.

:func:`prepare_run` fails fast, before any folder is created, on an invalid config, unusable data, an
impossible split or unavailable weights, then writes config.json, split.csv, run.json (data summary, split
counts, :func:`describe_weights`, ``runtime.software_versions``) and status.json "queued". Training the run is
``train.run_training``'s. It lives here rather than in ``rundir.py`` because it needs the data and model
modules that the low-level run directory (imported by jobs, slide analyses and workers) must not pull in.
"""

from __future__ import annotations

from pathlib import Path


from breakhis_core.cases.dataset import dataset_cases
from breakhis_core import runtime
from breakhis_core.config import TrainConfig
from breakhis_core.data.records import filter_magnification, scan
from breakhis_core.data.splits import make_split
from breakhis_core.errors import ConfigError
from breakhis_core.models.backbones import Backbone, get_backbone
from breakhis_core.models.weights import file_sha256, resolve_weights
from breakhis_core.runs.rundir import RunDir, check_run_name, new_run_id, now_iso
from breakhis_core.task import Task, task_named
from breakhis_core.runs.status import RunStatus


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


def check_training_classes(train_records, task: Task) -> None:
    """Refuse a training split lacking a class of ``task``: its output would never be trained.

    Raises:
        ConfigError: naming every class without a training image, with what to do.
    """
    present = {task.label_of(r) for r in train_records}
    missing = [task.class_label(k) for k in range(task.n_classes) if k not in present]
    if missing:
        raise ConfigError(
            f"the training split has no image of {', '.join(missing)}: the {task.name} task's model needs every class "
            f"in training. Use data holding every class{'' if task.is_binary else ' (tumour type)'}, or a split that "
            f"puts each in training (split image is leaky, but does)")


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
    check_training_classes(split.parts["train"], task_named(config.task))
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
            "versions": runtime.software_versions(),
            **({"experiment": experiment} if experiment else {}),
            **({"cases": cases} if cases else {}),
        },
    )
    run.set_status(RunStatus.QUEUED, created=now_iso())
    return run.path
