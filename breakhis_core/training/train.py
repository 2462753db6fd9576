"""Two-stage training of the paper into a run directory.

Reads as the paper does::

    run_setup.prepare_run(config, runs_root)
                                     scan data, split by patient (or as asked), write config.json,
                                     split.csv, run.json; fail fast on bad data or missing weights
    run_training(run_dir)            train_head(...)  stage "frozen": whole base (VGG16 by default)
                                                      frozen, Adam lr 1e-3, saves frozen.keras
                                     fine_tune(...)   stage "finetuned": the base's last block (VGG16:
                                                      block5) trainable (every block in the "scratch"
                                                      recipe, the default with weights none), Adam lr 1e-4,
                                                      saves finetuned.keras
                                     then evaluates both models on the test split (metrics.json)
                                     and checks that each learned (run.json "learning_check")

Each stage deploys the epoch ``TrainConfig.keep_epoch`` picks (default: lowest val_loss; its
weights are kept on disk, so a resumed stage still ships it) and stage 2 starts from it;
run.json "kept_epochs" says which epoch and why. A fold run of a cross-validation experiment also records every
candidate epoch (``callbacks.EpochRecording``): the experiment then chooses the kept epoch of every fold on pooled
inner validation once all folds have finished (``crossval.keep_pooled_epochs``).

This module holds the two stages (:func:`train_head`, :func:`fine_tune`, each through :func:`_fit_stage`) and
the driver (:func:`run_training`: lock, load, feed, stages, finish). Around them: ``run_setup.py`` prepares the
run, ``feeds.py`` gives each stage what it fits on, ``callbacks.py`` keeps each epoch's history line, checkpoint
and best weights and picks the kept epoch, ``progress.py`` reports progress and ``run_evaluation.py`` evaluates
the saved models.

Two training paths give the same models and run files (``run.json`` records which ran as
``training_path``): on a CPU (``cache="auto"``) the frozen prefix of the base runs once over cached
augmented views and the stages train sub-models on its activations (``feeds.CachedFeed``, ``cache.py``);
on a GPU, or with ``cache="off"`` (``--no-cache``), ``model.fit`` runs on the images with on-the-fly
augmentation (``feeds.PlainFeed``). Either can run under a tf.distribute strategy (``distribute.py``) with the global
batch ``batch_size × replicas``, and in mixed precision (``runtime.choose_precision``: bfloat16 on CPUs with bf16
instructions, float16 on GPUs).

Loss is sparse categorical cross-entropy, optionally class-weighted. Every epoch appends a line to
``history_<stage>.jsonl`` and saves a checkpoint, so ``run_training`` on an interrupted run resumes
from the last completed epoch. A ``cancel`` file in the run directory (or SIGTERM) stops training
at the next batch boundary and leaves the run "cancelled" with completed stages kept.
The run-directory layout is documented in ``docs/ARCHITECTURE.md``; its file names are ``rundir.py``'s.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from breakhis_core.training.callbacks import (
    KEEP_MONITORS,
    EpochRecording,
    KeptEpoch,
    load_checkpoint,
    load_kept_epoch,
    record_kept_epoch,
    save_model_atomic,
    stage_callback,
    starting_point,
    trim_history,
)
from breakhis_core.config import STAGES, TrainConfig
from breakhis_core.data.arrays import ImageArrays
from breakhis_core.training.distribute import signal_collectives_done
from breakhis_core.errors import ConfigError, JobError
from breakhis_core.training.feeds import CachedFeed, CachingCancelled, Feed, PlainFeed
from breakhis_core.files import remove_temp_files, unlock
from breakhis_core.runs.progress import Listener, TrainingProgress
from breakhis_core.evaluation.run_evaluation import evaluate_saved_models, load_split_images
from breakhis_core.task import task_named
from breakhis_core.runs.rundir import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    RUN_INFO_FILE,
    SPLIT_FILE,
    RunDir,
    history_file,
    model_file,
    now_iso,
)
from breakhis_core.runs.status import RunStatus

if TYPE_CHECKING:
    import keras
    import tensorflow as tf


def _save_final_model(model: keras.Model, config: TrainConfig, stage: str, path: Path) -> None:
    """Save a stage's model; a mixed-precision model is saved as its float32 twin (fast on any CPU)."""
    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        save_model_atomic(model, path)
        return
    from breakhis_core.runtime import FLOAT32, precision_policy

    with precision_policy(FLOAT32):
        twin = _rebuild(model, config, stage)
    save_model_atomic(twin, path)


def _rebuild(model: keras.Model, config: TrainConfig, stage: str) -> keras.Model:
    """A fresh classifier under the current dtype policy holding ``model``'s weights, set to ``stage`` (uncompiled)."""
    from breakhis_core.models.backbones import get_backbone
    from breakhis_core.models.classifier import build_model, set_stage

    twin = build_model(config.input_size, "none", config.pooling, config.head_units, config.dropout,
                       task_named(config.task).n_classes, seed=config.seed, backbone=config.backbone)
    twin.set_weights(model.get_weights())
    set_stage(twin, stage, config.stage2_unfreeze, get_backbone(config.backbone))
    return twin


def _fit_stage(run_dir: Path, stage: str, model: keras.Model, data: Feed, epochs: int, progress: TrainingProgress,
               check_cancel: bool = True, patience: int = 0, keep_epoch: str = "last",
               recording: EpochRecording | None = None) -> KeptEpoch | None:
    """Fit one stage from its checkpoint (if any) to ``epochs`` and load its kept epoch into ``model``.

    ``keep_epoch`` (``TrainConfig.keep_epoch``) picks the deployed epoch: the one with the lowest
    val_loss, the highest val_accuracy, or the last; without a validation split the last one.
    The best epoch's weights are kept on disk (see ``callbacks.stage_callback``), so a resumed stage still
    ships the true best. With ``patience`` > 0 and a validation split, the stage ends early after
    ``patience`` epochs without improving that metric (val_loss for "last"); the count restarts
    when a run is resumed.

    Args:
        run_dir: the run directory (history, checkpoints and TensorBoard files of ``stage`` are written there).
        stage: a name of ``config.STAGES``.
        model: the classifier, compiled and set to ``stage``; it ends holding the kept epoch's weights.
        data: the run's feed.
        epochs: the stage's total epochs (those done before a resume count).
        progress: the run's progress.
        check_cancel: stop at the next batch when a cancel is requested (off under multiworker, where workers stop instead).
        patience: early-stopping patience in epochs; 0 runs every epoch.
        keep_epoch: ``TrainConfig.keep_epoch``.
        recording: a cross-validation fold run's record of each candidate epoch (``callbacks.record_epoch``), or
            None; used only with a validation split and a validation ``keep_epoch``.

    Returns:
        The kept epoch, or None when cancelled.
    """
    import keras

    run = RunDir(run_dir)
    state = run.read_checkpoint_state()
    initial_epoch = state.get("epochs_done", 0) if state.get("stage") == stage else 0
    best = state.get("best") if state.get("stage") == stage else None
    trim_history(run.history_file(stage), initial_epoch)
    inputs = data.fit_inputs(stage, model, initial_epoch, epochs) if initial_epoch < epochs else None
    has_validation = inputs.validation_data is not None if inputs else best is not None or _history_has_val(run_dir, stage)
    start = state.get("start") if state.get("stage") == stage else None
    if not (has_validation and keep_epoch in KEEP_MONITORS):
        recording = None
    if (initial_epoch == 0 and stage == "finetuned" and has_validation and keep_epoch in KEEP_MONITORS and epochs
            and not data.multiworker):
        start = best = starting_point(run_dir, stage, model, inputs.model, inputs.validation_data, keep_epoch,
                                      recording)
    if initial_epoch < epochs:
        callback = stage_callback(run_dir, stage, epochs, inputs.batches, progress, save_model=model,
                                  check_cancel=check_cancel, keep_epoch=keep_epoch if has_validation else "last", best=best,
                                  start=start, recording=recording, validation_data=inputs.validation_data)
        callbacks = [callback]
        if patience > 0 and has_validation:
            monitor, mode = KEEP_MONITORS.get(keep_epoch, ("val_loss", "min"))
            callbacks.append(keras.callbacks.EarlyStopping(monitor, patience=patience, mode=mode))
        callbacks.append(keras.callbacks.TensorBoard(str(RunDir(run_dir).tensorboard_dir(stage)), write_graph=False,
                                                     profile_batch=0))  # epoch loss/accuracy and lr, per stage
        if data.multiworker:
            from breakhis_core.training.distribute import prepare_multiworker_fit

            prepare_multiworker_fit(inputs.model)
        inputs.fit(epochs, initial_epoch, callbacks)
        if callback.cancelled:
            return None
        best = callback.best
    return load_kept_epoch(run_dir, stage, model, keep_epoch, best, has_validation, start)


def _history_has_val(run_dir: Path, stage: str) -> bool:
    """Whether the stage's history lines hold a validation loss (a stage resumed after its last epoch)."""
    return any("val_loss" in record for record in RunDir(run_dir).read_history(stage))


def train_head(run_dir: Path, config: TrainConfig, data: Feed, progress: TrainingProgress, check_cancel: bool = True,
               info: dict | None = None, recording: EpochRecording | None = None) -> tuple[keras.Model, bool]:
    """Stage "frozen": the base frozen, head trained with Adam(lr_frozen).

    Starts from a new classifier (``config.weights``) unless a frozen checkpoint exists. The deployed
    frozen.keras holds the epoch ``config.keep_epoch`` chooses (recorded in ``info``, the run.json dict,
    as "kept_epochs"). With ``weights="none"`` the frozen base computes random features: this stage then
    only fits a head on them.

    Args:
        run_dir: the run directory.
        config: the run's configuration (``epochs_frozen``, ``lr_frozen``, ``keep_epoch``, ``early_stopping_patience``).
        data: the run's feed.
        progress: the run's progress.
        check_cancel: stop at the next batch when a cancel is requested.
        info: the run.json dict (updated and written); None reads it.
        recording: a cross-validation fold run's record of each epoch (see :func:`_fit_stage`), or None.

    Returns:
        (the classifier holding the kept epoch, completed: False when a cancel stopped the stage).
    """
    from breakhis_core.models.classifier import build_model, compile_model

    run = RunDir(run_dir)
    checkpoint = run.checkpoint_file("frozen")
    state = run.read_checkpoint_state()
    if state.get("stage") == "frozen" and checkpoint.is_file():
        model = load_checkpoint(checkpoint)
    else:
        model = build_model(config.input_size, config.weights, config.pooling, config.head_units, config.dropout,
                            task_named(config.task).n_classes, seed=config.seed, backbone=config.backbone)
        compile_model(model, config.lr_frozen)
    kept = _fit_stage(run_dir, "frozen", model, data, config.epochs_frozen, progress, check_cancel,
                      config.early_stopping_patience, config.keep_epoch, recording)
    if kept is not None:
        record_kept_epoch(run_dir, info, "frozen", kept)
        _save_final_model(model, config, "frozen", run.model_file("frozen"))
    return model, kept is not None


def fine_tune(run_dir: Path, config: TrainConfig, data: Feed, progress: TrainingProgress,
              frozen_model: keras.Model | None = None, check_cancel: bool = True,
              info: dict | None = None, recording: EpochRecording | None = None) -> tuple[keras.Model, bool]:
    """Stage "finetuned": last ``config.stage2_unfreeze`` blocks of the base + head trained with Adam(lr_finetune).

    That is the last ``unfreeze`` blocks in the paper's recipe, every block in the scratch recipe.
    Starts from ``frozen_model`` (or frozen.keras: stage 1's kept epoch) unless a finetuned
    checkpoint exists; the deployed finetuned.keras holds the epoch ``config.keep_epoch`` chooses.

    Args:
        run_dir: the run directory.
        config: the run's configuration (``epochs_finetune``, ``lr_finetune``, ``stage2_unfreeze``, ``keep_epoch``, ...).
        data: the run's feed.
        progress: the run's progress.
        frozen_model: stage 1's model when this process trained it (fine-tuned in place); None loads frozen.keras.
        check_cancel: stop at the next batch when a cancel is requested.
        info: the run.json dict (updated and written); None reads it.
        recording: a cross-validation fold run's record of each epoch (see :func:`_fit_stage`), or None.

    Returns:
        (the classifier holding the kept epoch, completed: False when a cancel stopped the stage).
    """
    import keras

    from breakhis_core.models.backbones import get_backbone
    from breakhis_core.models.classifier import compile_model, set_stage

    run = RunDir(run_dir)
    checkpoint = run.checkpoint_file("finetuned")
    state = run.read_checkpoint_state()
    if state.get("stage") == "finetuned" and checkpoint.is_file():
        model = load_checkpoint(checkpoint)
    else:
        model = frozen_model if frozen_model is not None else load_checkpoint(run.model_file("frozen"))
        if any(layer.dtype_policy.name != keras.config.dtype_policy().name for layer in model.layers[1:-1]):
            model = _rebuild(model, config, "finetuned")  # frozen.keras is float32; train in the mixed policy
        set_stage(model, "finetuned", config.stage2_unfreeze, get_backbone(config.backbone))
        compile_model(model, config.lr_finetune)
    kept = _fit_stage(run_dir, "finetuned", model, data, config.epochs_finetune, progress, check_cancel,
                      config.early_stopping_patience, config.keep_epoch, recording)
    if kept is not None:
        record_kept_epoch(run_dir, info, "finetuned", kept)
        _save_final_model(model, config, "finetuned", run.model_file("finetuned"))
    return model, kept is not None


def run_training(run_dir: str | Path, listener: Listener | None = None) -> RunStatus:
    """Train (or resume) the run in ``run_dir`` through both stages, then evaluate.

    Args:
        run_dir: a folder made by ``run_setup.prepare_run``.
        listener: optional ``f(event: dict)`` called on every progress event (the CLI's bar).

    Returns:
        The final status: "done" or "cancelled". Failures set status "failed" and re-raise.
    """
    from breakhis_core.training.distribute import make_strategy, multiworker_task
    from breakhis_core.runtime import select_device

    run = RunDir(run_dir)
    run_dir = run.path
    config = run.load_config()
    if config.strategy == "multiworker" and not multiworker_task().is_chief:
        return _run_as_worker(run_dir, config, listener)  # never takes the run's lock, never writes its files
    run_lock = run.try_lock()  # released by the kernel however this process ends
    if run_lock is None:
        raise JobError(f"this run is being trained by another process (pid {run.read_status().get('pid')}); "
                       f"wait for it or cancel it. Received: run={run_dir.name}")
    try:
        for folder in (run.path, run.checkpoints, run.epochs):
            remove_temp_files(folder)  # left by a process killed while writing
        if run.read_status().get("status") != RunStatus.QUEUED:
            run.clear_cancel()  # an old request; a queued job's cancel is kept
        run.set_status(RunStatus.RUNNING, pid=os.getpid(), started=now_iso(), error=None)
    except BaseException:
        unlock(run_lock)
        raise
    try:
        try:
            config.validate()
            device = select_device(config.device)  # before any other TensorFlow call
            strategy = make_strategy(config.strategy)  # MultiWorkerMirroredStrategy must come early too
        except BaseException as exc:
            _record_failure(run_dir, exc)
            raise
        return _run(run_dir, config, strategy, device, listener)
    finally:
        unlock(run_lock)


def _record_failure(run_dir: Path, exc: BaseException) -> None:
    """Set status "failed" with ``exc`` as the error; a failure to write it is printed, not raised."""
    try:
        RunDir(run_dir).set_status(RunStatus.FAILED, ended=now_iso(), error=f"{type(exc).__name__}: {exc}")
    except Exception as status_exc:  # e.g. the disk is full: keep the original error; the run reads "interrupted"
        print(f"could not record the failure in status.json: {status_exc}", file=sys.stderr)


def _run_as_worker(run_dir: Path, config: TrainConfig, listener: Listener | None) -> RunStatus:
    """A non-chief worker of a multi-worker run: the same steps in a scratch copy of the run, deleted at the end.

    The chief's run files are only read (at the start); the activation cache of this worker lives in the
    scratch folder too, so two workers on one host never write the same cache part.
    """
    import tempfile

    from breakhis_core.training.distribute import make_strategy
    from breakhis_core.runtime import select_device

    config.validate()
    device = select_device(config.device)
    strategy = make_strategy(config.strategy)
    scratch_root = Path(tempfile.mkdtemp(prefix=f"{run_dir.name}-worker-"))
    scratch = scratch_root / run_dir.name
    try:
        scratch.mkdir()
        for name in (CONFIG_FILE, RUN_INFO_FILE, SPLIT_FILE, *map(history_file, STAGES), model_file("frozen"),
                     CHECKPOINTS_DIR):
            source = run_dir / name
            if source.is_dir():
                shutil.copytree(source, scratch / name)
            elif source.is_file():
                shutil.copy2(source, scratch / name)
        return _run(scratch, config, strategy, device, listener, chief=False, cache_folder=scratch_root / "cache")
    finally:
        shutil.rmtree(scratch_root, ignore_errors=True)


def _run(run_dir: Path, config: TrainConfig, strategy: tf.distribute.Strategy, device: str, listener: Listener | None,
         chief: bool = True, cache_folder: Path | None = None) -> RunStatus:
    """Train the stages of a run that have no model file yet, then (chief only) evaluate and finish the run.

    In order: records the device, training path, strategy and precision in run.json; loads the split's images
    (:func:`_load_split_images`); makes the run's feed, cached or plain (:func:`_make_feed`); trains stage 1 then
    stage 2 in the chosen precision under ``strategy``, each resumed from its checkpoint and skipped when its model
    file exists (:func:`_train_stages`); then the chief evaluates, calibrates and closes the run (:func:`_finish_run`).
    Outside multiworker runs, SIGTERM requests a cancel for the time of the call.

    Args:
        run_dir: the run directory: the chief's (locked by :func:`run_training`) or a non-chief worker's scratch copy.
        config: the run's configuration (validated).
        strategy: the ``tf.distribute`` strategy (``distribute.make_strategy``); the global batch is
            ``config.batch_size`` × its replicas.
        device: what ``runtime.select_device`` chose, e.g. "CPU (2 cores)" or "GPU (...)".
        listener: optional ``f(event: dict)`` called on every progress event.
        chief: False for a non-chief worker of a multiworker run: it stops after training (no evaluation, no status).
        cache_folder: the cached path's activation parts; default the runs folder's cache.

    Returns:
        "done", or "cancelled" when a cancel request stopped training (status "cancelled", completed epochs kept).

    Raises:
        ConfigError: when no training image can be read. Every failure sets status "failed" before it is re-raised.
    """
    import keras

    from breakhis_core.runtime import choose_precision, precision_policy

    info = RunDir(run_dir).read_info()
    multiworker = config.strategy == "multiworker"
    previous_handler = None
    if not multiworker:  # under multiworker every worker is stopped instead (see workers.py)
        previous_handler = signal.signal(signal.SIGTERM, lambda *_: RunDir(run_dir).request_cancel())
    try:
        on_gpu = device.startswith("GPU")
        precision = choose_precision(config.mixed_precision, on_gpu)
        cached = _use_cache(config, on_gpu)
        replicas = int(strategy.num_replicas_in_sync)
        batch_size = config.batch_size * replicas
        views = config.cache_views if config.augment else 1
        info.update(
            device=device,
            training_path=f"cached ({views} view{'s' if views > 1 else ''})" if cached else "plain",
            strategy={"name": config.strategy, "replicas": replicas, "global_batch_size": batch_size},
            precision=precision.to_dict(),
        )
        info.pop("mixed_precision", None)  # written by earlier versions as a bool
        info.pop("cache", None)
        RunDir(run_dir).write_info(info)
        progress = TrainingProgress(run_dir, config.epochs_frozen + config.epochs_finetune, listener)
        if chief and "time_estimate" not in info:
            _record_estimate(run_dir, config, cached, precision.policy, info, progress)
        keras.utils.set_random_seed(config.seed)  # after the estimate's timing model, so the run's draws are its own
        started = time.monotonic()
        arrays = _load_split_images(run_dir, config, info, progress)
        info.setdefault("timings", {})["loading_s"] = round(time.monotonic() - started, 1)
        data = _make_feed(run_dir, config, arrays, cached, batch_size, replicas, progress, info, cache_folder)
        progress.epochs_done = _epochs_already_done(run_dir, config)
        recording = _epoch_recording(config, arrays, info)
        with precision_policy(precision.policy), strategy.scope():
            if not _train_stages(run_dir, config, data, progress, not multiworker, info, recording):
                return _finish_cancelled(run_dir, progress)
        signal_collectives_done()  # from here on this worker needs no peer
        if not chief:
            return RunStatus.DONE
        finishing = time.monotonic()
        status = _finish_run(run_dir, config, arrays, info, progress)
        _record_timing(run_dir, "evaluation_s", time.monotonic() - finishing)
        return status
    except CachingCancelled:
        return _finish_cancelled(run_dir, progress)
    except BaseException as exc:
        _record_failure(run_dir, exc)
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


def _epoch_recording(config: TrainConfig, arrays: dict[str, ImageArrays], info: dict) -> EpochRecording | None:
    """What a fold run of a cross-validation experiment (run.json "experiment", split "cv") records of every
    candidate epoch for the experiment's pooled choice; None for any other run (the final model of an experiment
    included: it trains to the epochs the folds chose) and without validation images."""
    val = arrays["val"]
    if not info.get("experiment") or config.split != "cv" or not len(val.images):
        return None
    return EpochRecording(list(val.records), np.array([r.group(config.group_by) for r in val.records]),
                          task_named(config.task))


def _load_split_images(run_dir: Path, config: TrainConfig, info: dict, progress: TrainingProgress) -> dict[str, ImageArrays]:
    """The run's split (split.csv) loaded at ``config.input_size``, stain-normalised as configured.

    Files that no longer decode are recorded in run.json ("unreadable_at_training", ``info`` updated).

    Returns:
        split name ("train", "val", "test") → its images.

    Raises:
        ConfigError: when no training image can be read.
    """
    progress.update(force=True, stage="loading", message="loading and resizing images")
    arrays = load_split_images(run_dir, config)
    unreadable = [r.path for name in arrays for r in arrays[name].rejected]
    if unreadable:
        info["unreadable_at_training"] = unreadable
        RunDir(run_dir).write_info(info)
    if len(arrays["train"].images) == 0:
        raise ConfigError("the training split has no readable image")
    return arrays


def _make_feed(run_dir: Path, config: TrainConfig, arrays: dict[str, ImageArrays], cached: bool, batch_size: int,
               replicas: int, progress: TrainingProgress, info: dict, cache_folder: Path | None) -> Feed:
    """The run's feed: ``feeds.CachedFeed`` when ``cached``, else ``feeds.PlainFeed``.

    Both get the training split's class weights when ``config.class_weights``; ``batch_size`` is the global batch.
    """
    from breakhis_core.training.pipeline import class_weights, make_dataset

    train, val = arrays["train"], arrays["val"]
    weights = class_weights(train.labels, task_named(config.task).n_classes) if config.class_weights else None
    if cached:
        return CachedFeed(run_dir, config, train, val, weights, batch_size, replicas, progress, info, cache_folder)
    train_ds = make_dataset(train.images, train.labels, batch_size, True, config.augment, config.seed, replicas)
    val_ds = make_dataset(val.images, val.labels, batch_size, False, replicas=replicas) if len(val.images) else None
    return PlainFeed(train_ds, val_ds, weights, config.strategy == "multiworker")


def _train_stages(run_dir: Path, config: TrainConfig, data: Feed, progress: TrainingProgress, check_cancel: bool,
                  info: dict, recording: EpochRecording | None = None) -> bool:
    """Stage 1 (:func:`train_head`) then stage 2 (:func:`fine_tune`), each unless its model file exists; with
    ``recording`` each records its candidate epochs (:func:`_epoch_recording`).

    Returns:
        True when both stages are complete, False when a cancel stopped one.
    """
    run = RunDir(run_dir)
    frozen = None
    if not run.model_file("frozen").is_file():
        started = time.monotonic()
        frozen, completed = train_head(run_dir, config, data, progress, check_cancel, info, recording)
        cache = info.get("cache") or {}
        caching = cache.get("seconds", 0) + cache.get("features_seconds", 0)
        info.setdefault("timings", {}).update(cache_s=round(caching, 1),
                                              frozen_s=round(time.monotonic() - started - caching, 1))
        run.write_info(info)
        if not completed:
            return False
    if not run.model_file("finetuned").is_file():
        started = time.monotonic()
        _, completed = fine_tune(run_dir, config, data, progress, frozen, check_cancel, info, recording)
        info.setdefault("timings", {})["finetuned_s"] = round(time.monotonic() - started, 1)
        run.write_info(info)
        if not completed:
            return False
    return True


def _record_estimate(run_dir: Path, config: TrainConfig, cached: bool, policy: str, info: dict,
                     progress: TrainingProgress) -> None:
    """Measure this machine's speed, estimate each part of the run (``estimate.py``) for the split's image counts
    (run.json "split"), record it in run.json ("time_estimate") and report it as a progress event (stage
    "estimate"; the CLI prints it as a line)."""
    from breakhis_core.training.estimate import estimate_run, measure_speed
    from breakhis_core.runtime import FLOAT32

    counts = info.get("split", {}).get("counts", {})
    sizes = {name: counts.get(name, {}).get("images", 0) for name in ("train", "val", "test")}
    estimate = estimate_run(config, sizes["train"], sizes["val"], sizes["test"], cached,
                            measure_speed(config.backbone, config.input_size, policy), 1.0 if policy == FLOAT32 else 2.0)
    info["time_estimate"] = estimate.to_dict()
    RunDir(run_dir).write_info(info)
    progress.update(force=True, stage="estimate", message=f"time estimate: {estimate.describe()}")


def _record_timing(run_dir: Path, name: str, seconds: float) -> None:
    """Add one measured duration to run.json "timings" (with their total, ``total_s``)."""
    run = RunDir(run_dir)
    info = run.read_info()
    timings = info.setdefault("timings", {})
    timings[name] = round(seconds, 1)
    timings["total_s"] = round(sum(v for k, v in timings.items() if k != "total_s"), 1)
    run.write_info(info)


def _finish_run(run_dir: Path, config: TrainConfig, arrays: dict[str, ImageArrays], info: dict,
                progress: TrainingProgress) -> RunStatus:
    """A trained run's last steps (chief only): test metrics, learning check, calibration, status "done", card.

    Both models are reloaded from their files (fine-tuning trained the stage-1 model object in place); the
    checkpoints are deleted once both final models are saved. Returns "done".
    """
    from breakhis_core.runs.registry import load_run, write_card

    evaluate_saved_models(run_dir, config, arrays, info, progress)
    shutil.rmtree(RunDir(run_dir).checkpoints, ignore_errors=True)  # both final models are saved
    RunDir(run_dir).set_status(RunStatus.DONE, ended=now_iso())
    write_card(load_run(run_dir))
    progress.update(force=True, stage=RunStatus.DONE, message="training finished")
    return RunStatus.DONE


def _use_cache(config: TrainConfig, on_gpu: bool) -> bool:
    """Whether this run takes the cached path: cache "on", or "auto" on a CPU; never when stage 2 trains the whole base.

    The whole base trains in stage 2 when ``unfreeze`` is the backbone's block count or in the scratch recipe
    (``TrainConfig.stage2_trains_whole_base``); ``TrainConfig.validate`` refuses cache="on" then.
    """
    if config.cache == "off" or (config.cache == "auto" and on_gpu):
        return False
    return not config.stage2_trains_whole_base


def _epochs_already_done(run_dir: Path, config: TrainConfig) -> int:
    """Epochs of both stages completed before this call (from the checkpoint state), for the progress and ETA."""
    state = RunDir(run_dir).read_checkpoint_state()
    if state.get("stage") == "finetuned":
        return config.epochs_frozen + state.get("epochs_done", 0)
    return state.get("epochs_done", 0)


def _finish_cancelled(run_dir: Path, progress: TrainingProgress) -> RunStatus:
    """Close a cancelled run: the cancel request cleared, status "cancelled"; completed epochs stay for a resume."""
    RunDir(run_dir).clear_cancel()
    RunDir(run_dir).set_status(RunStatus.CANCELLED, ended=now_iso())
    progress.update(force=True, stage=RunStatus.CANCELLED, message="cancelled; completed epochs are kept and can be resumed")
    return RunStatus.CANCELLED
