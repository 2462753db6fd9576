"""A training stage's epoch bookkeeping: the Keras callback, checkpoints, the best epoch and the kept epoch.

Per epoch, :func:`stage_callback` appends the history line (``history_<stage>.jsonl``), saves the checkpoint
(``checkpoints/<stage>.keras`` and ``state.json``) and, when ``TrainConfig.keep_epoch`` picks by a validation
metric (:data:`KEEP_MONITORS`), the weights of the best epoch so far (``checkpoints/<stage>-best-e<N>.weights.h5``);
it reports progress and stops at the next batch once a cancel is requested. In a cross-validation fold run it
also records the epoch as a candidate for the experiment's pooled choice (:class:`EpochRecording`,
:func:`record_epoch`: ``epochs/<stage>-e<N>.val.csv`` and ``.weights.npz``). After the stage,
:func:`load_kept_epoch` loads the kept epoch's weights and says which it is (:class:`KeptEpoch`) and
:func:`record_kept_epoch` writes that to run.json. :func:`save_model_atomic`, :func:`load_checkpoint` and
:func:`trim_history` are the checkpoint-file helpers a resumed stage relies on. File names are ``rundir.py``'s.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from breakhis_core.files import disk_space_error, is_disk_full, read_jsonl, write_bytes_atomic, write_text_atomic
from breakhis_core.runs.progress import TrainingProgress
from breakhis_core.runs.rundir import RunDir, best_weights_file
from breakhis_core.task import Task

if TYPE_CHECKING:
    import keras


@dataclass
class KeptEpoch:
    """Which epoch of a stage is its deployed model, and why (``run.json`` "kept_epochs", the card, Compare).

    Attributes:
        epoch: the kept epoch (1-based).
        epochs_run: epochs the stage ran (the last one is ``epochs_run``).
        metric: the validation metric that chose it ("val_loss", "val_accuracy"), or None for "last".
        value: that metric at the kept epoch (None without a validation split).
        reason: one sentence for people.
        start_value: the metric of the stage's starting point (stage 2: stage 1's kept model), a candidate
            itself: epoch 0 is kept when no epoch improves on it. None when the start was not a candidate.
    """

    epoch: int
    epochs_run: int
    metric: str | None
    value: float | None
    reason: str
    start_value: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EpochRecording:
    """What a stage of a cross-validation fold run records of each candidate epoch, so that the experiment can
    choose every fold's kept epoch on pooled inner validation once all folds have finished
    (``crossval.keep_pooled_epochs``) without training again.

    Attributes:
        records: the validation split's ``data.ImageRecord`` rows, in the order the validation data yield them.
        patients: ``(N,)`` the patient key of each record.
        task: the run's task; the recorded score is its P(malignant) (a subtype model's: the sum of the malignant
            types), so the pooled choice weighs every task's epochs by the same malignancy loss.
    """

    records: list
    patients: np.ndarray
    task: Task


KEEP_MONITORS = {"best_val_loss": ("val_loss", "min"), "best_val_accuracy": ("val_accuracy", "max")}
"""``TrainConfig.keep_epoch`` → (history key, direction); "last" keeps the last epoch."""


def _is_better(value: float, best: float | None, mode: str) -> bool:
    if not np.isfinite(value):
        return False
    return best is None or (value < best if mode == "min" else value > best)


def stage_callback(run_dir: Path, stage: str, epochs: int, batches: int, progress: TrainingProgress,
                   save_model: keras.Model | None = None, check_cancel: bool = True, keep_epoch: str = "last",
                   best: dict | None = None, start: dict | None = None, recording: EpochRecording | None = None,
                   validation_data=None) -> keras.callbacks.Callback:
    """The stage's callback: history lines, checkpoint + state, best epoch, progress, cancel check.

    ``save_model`` is the full model to checkpoint when the fitted model is a sub-model of it
    (the cached path); by default the fitted model itself. With ``keep_epoch`` a best-validation
    choice, an epoch that improves the metric also saves the full model's weights as
    ``checkpoints/<stage>-best-e<N>.weights.h5``; ``best`` (``{"epoch", "metric", "value", "file"}``,
    from state.json) carries the best so far across a resume, and ``start`` (:func:`starting_point`'s record, kept in
    state.json too) the starting point's metric. With ``recording`` (a fold run of a cross-validation) every
    epoch is also recorded by :func:`record_epoch` on ``validation_data``. After ``fit``, the callback's ``cancelled``
    says whether a cancel stopped the stage and its ``best`` is the best epoch so far.
    """
    import keras

    monitor = KEEP_MONITORS.get(keep_epoch)
    run = RunDir(run_dir)

    class StageCallback(keras.callbacks.Callback):
        """Settings in __init__, epoch bookkeeping in on_epoch_end, cancel checked each batch."""

        def __init__(self):
            super().__init__()
            self.best = best
            self.cancelled = False
            self.epoch_started = 0.0
            self.batch_started = 0.0
            self.epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
            self.epoch_started = time.monotonic()
            self.batch_started = time.monotonic()
            progress.update(force=True, stage=stage, epoch=epoch + 1, epochs=epochs, batch=0, batches=batches,
                            message=f"{stage}: epoch {epoch + 1}/{epochs}")

        def on_train_batch_end(self, batch, logs=None):
            now = time.monotonic()
            progress.batch_seconds.append(now - self.batch_started)
            self.batch_started = now
            progress.update(stage=stage, epoch=self.epoch + 1, epochs=epochs, batch=batch + 1, batches=batches,
                            message=f"{stage}: epoch {self.epoch + 1}/{epochs}, batch {batch + 1}/{batches}")
            if check_cancel and run.cancel_requested():
                self.cancelled = True
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            if self.cancelled:
                return  # a partial epoch is neither recorded nor checkpointed
            record = {"epoch": epoch + 1, "seconds": round(time.monotonic() - self.epoch_started, 2)}
            for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                if key in logs:
                    record[key] = float(logs[key])
            record["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            saving = time.monotonic()
            full_model = save_model if save_model is not None else self.model
            save_model_atomic(full_model, run.checkpoint_file(stage))
            previous_best = self.best
            if monitor is not None and monitor[0] in record and _is_better(record[monitor[0]], (self.best or {}).get("value"), monitor[1]):
                name = best_weights_file(stage, epoch + 1)
                save_model_atomic(full_model, run.checkpoints / name, weights_only=True)
                self.best = {"epoch": epoch + 1, "metric": monitor[0], "value": record[monitor[0]], "file": name}
            if recording is not None:
                record_epoch(run_dir, stage, epoch + 1, full_model, self.model, validation_data, recording)
            record["checkpoint_s"] = round(time.monotonic() - saving, 2)
            # History before state.json: a crash between them leaves an extra line that resume trims.
            run.append_history(stage, record)
            state = {"stage": stage, "epochs_done": epoch + 1}
            if self.best is not None:
                state["best"] = self.best
            if start is not None:
                state["start"] = start
            run.write_checkpoint_state(state)
            if previous_best is not None and previous_best is not self.best:
                (run.checkpoints / previous_best["file"]).unlink(missing_ok=True)
            progress.epochs_done += 1
            progress.update(force=True, stage=stage, epoch=epoch + 1, epochs=epochs, batch=batches, batches=batches,
                            message=f"{stage}: epoch {epoch + 1}/{epochs} done", last_epoch=record)

    return StageCallback()


def stage_weights(model: keras.Model) -> dict[str, np.ndarray]:
    """The weights of the layers that train in the model's current stage (``model.set_stage``: the head in stage 1,
    block5 and the head in stage 2), BatchNormalization statistics included, keyed ``"<layer>/<index>"``.

    With the layers the stage leaves frozen (unchanged from the stage's start), they are one epoch's whole model.
    """
    return {f"{layer.name}/{i}": np.asarray(w) for layer in model.layers if layer.trainable
            for i, w in enumerate(layer.get_weights())}


def load_stage_weights(model: keras.Model, path: Path) -> None:
    """Set the layers saved by :func:`record_epoch` in ``path`` (``<stage>-e<N>.weights.npz``) into ``model``."""
    with np.load(path) as saved:
        by_layer: dict[str, dict[int, np.ndarray]] = {}
        for key in saved.files:
            name, index = key.rsplit("/", 1)
            by_layer.setdefault(name, {})[int(index)] = saved[key]
    for name, weights in by_layer.items():
        model.get_layer(name).set_weights([weights[i] for i in range(len(weights))])


def record_epoch(run_dir: Path, stage: str, epoch: int, model: keras.Model, fitted: keras.Model, validation_data,
                 recording: EpochRecording) -> None:
    """Record epoch ``epoch`` of ``stage`` (0: its starting point) as a kept-epoch candidate of a fold run.

    Writes ``epochs/<stage>-e<N>.val.csv`` (``fitted``'s P(malignant) on ``validation_data``: the model ``fit``
    trains, the classifier or its cached-path sub-model, so no image passes through the frozen prefix again) and
    ``epochs/<stage>-e<N>.weights.npz`` (:func:`stage_weights` of ``model``, the full classifier). The predictions
    come first, so a file of weights never exists without them.
    """
    from breakhis_core.evaluation.metrics import write_prediction_table

    run = RunDir(run_dir)
    probabilities = np.asarray(fitted.predict(validation_data, verbose=0), dtype=np.float64)
    p_malignant = recording.task.malignancy_probability(probabilities)
    write_prediction_table(run.epoch_predictions_file(stage, epoch), recording.records, recording.patients,
                           {stage: p_malignant})
    buffer = io.BytesIO()
    np.savez(buffer, **stage_weights(model))
    write_bytes_atomic(run.epoch_weights_file(stage, epoch), buffer.getvalue())


def save_model_atomic(model: keras.Model, path: Path, weights_only: bool = False) -> None:
    """Save a .keras file (or, ``weights_only``, a .weights.h5 file) so that ``path`` is either the old
    complete file or the new complete file.

    Raises:
        DiskSpaceError: when the disk is full (``path`` unchanged, the temporary file removed).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        (model.save_weights if weights_only else model.save)(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except Exception as exc:
        if is_disk_full(exc):
            raise disk_space_error(path) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> keras.Model:
    """A checkpoint or stage model file (``.keras``) of this run, loaded in Keras safe mode with its optimizer state."""
    import keras

    from breakhis_core.models import classifier as _model  # noqa: F401  registers the preprocessing layers

    return keras.saving.load_model(path, safe_mode=True)


def trim_history(path: Path, epochs_done: int) -> None:
    """Drop history lines of epochs that were not checkpointed (a crash between the two writes)."""
    kept = [r for r in read_jsonl(path) if r.get("epoch", 0) <= epochs_done]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def starting_point(run_dir: Path, stage: str, model: keras.Model, fitted: keras.Model, validation_data,
                   keep_epoch: str, recording: EpochRecording | None = None) -> dict:
    """Make the stage's starting weights a kept-epoch candidate ("epoch 0"): ``fitted`` (the model ``fit`` trains,
    ``model`` itself or its cached-path sub-model) evaluated on ``validation_data``, and ``model``'s weights saved as
    the best so far. Returns the ``best`` record of :func:`stage_callback` (``{"epoch": 0, "metric", "value",
    "file"}``); an epoch of the stage is then kept only when it improves on the start. With ``recording`` the start
    is recorded as epoch 0 (:func:`record_epoch`)."""
    metric = KEEP_MONITORS[keep_epoch][0]
    scores = fitted.evaluate(validation_data, verbose=0, return_dict=True)
    name = best_weights_file(stage, 0)
    save_model_atomic(model, RunDir(run_dir).checkpoints / name, weights_only=True)
    if recording is not None:
        record_epoch(run_dir, stage, 0, model, fitted, validation_data, recording)
    return {"epoch": 0, "metric": metric, "value": float(scores[metric.removeprefix("val_")]), "file": name}


def load_kept_epoch(run_dir: Path, stage: str, model: keras.Model, keep_epoch: str, best: dict | None,
                    has_validation: bool, start: dict | None = None) -> KeptEpoch:
    """Load the kept epoch's weights into ``model`` (it holds the last epoch's) and say which it is.

    ``start`` is :func:`starting_point`'s record when the stage's start was a candidate: then ``best`` may be it
    (epoch 0), and the stage's model is its starting point."""
    run = RunDir(run_dir)
    history = run.read_history(stage)
    last = history[-1]["epoch"] if history else 0
    if not history:
        return KeptEpoch(0, 0, None, None, "no epoch was run: the model is the stage's starting point")
    if not has_validation:
        return KeptEpoch(last, last, None, None, "no validation split: the last epoch is kept")
    if keep_epoch == "last" or best is None:
        value = history[-1].get("val_loss") if history else None
        why = "keep_epoch=last" if keep_epoch == "last" else "no epoch had a finite validation metric"
        return KeptEpoch(last, last, "val_loss" if value is not None else None, value, f"{why}: the last epoch is kept")
    if best["epoch"] != last:
        model.load_weights(run.checkpoints / best["file"])
    direction = "lowest" if KEEP_MONITORS[keep_epoch][1] == "min" else "highest"
    start_value = None if start is None else float(start["value"])
    if best["epoch"] == 0:
        return KeptEpoch(0, last, best["metric"], float(best["value"]),
                         f"no epoch of {last} improved on the starting point's {best['metric']} ({best['value']:.4f}): "
                         "the stage keeps its starting weights", start_value)
    return KeptEpoch(best["epoch"], last, best["metric"], float(best["value"]),
                     f"{direction} {best['metric']} ({best['value']:.4f}) of {last} epoch{'s' if last != 1 else ''}"
                     + (f", better than the starting point's {start_value:.4f}" if start_value is not None else ""),
                     start_value)


def record_kept_epoch(run_dir: Path, info: dict | None, stage: str, kept: KeptEpoch) -> None:
    """Record a stage's kept epoch in run.json ("kept_epochs") before its model file is written."""
    run = RunDir(run_dir)
    if info is None:
        info = run.read_info()
    info.setdefault("kept_epochs", {})[stage] = kept.to_dict()
    run.write_info(info)
