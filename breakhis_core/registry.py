"""The run registry: runs on disk, safe model loading, the default model, model cards, import/export/delete.

Runs live in one folder (``$BREAKHIS_RUNS``, default ``./runs``), one sub-folder per run::

    runs/<run_id>/                 run_id = YYYYmmdd-HHMMSS-<mag>-<split>
      config.json                  TrainConfig
      run.json                     run_id, created, data summary, split counts, leaky, weights source,
                                   device, software versions, rejected files; "cache" (cached path):
                                   {"folder", "parts": {"train"|"val": part folder name}, size, seconds};
                                   "kept_epochs" {stage: {epoch, epochs_run, metric, value, reason}};
                                   "learning_check" {stage: {ok, reasons, splits}} (learning_check.py)
      status.json                  {"status": queued|running|done|failed|cancelled, "pid", "started",
                                    "updated", "ended", "error"}; "running" with a dead pid reads as "interrupted"
      progress.json                {"stage", "epoch", "epochs", "batch", "batches", "elapsed_s", "eta_s",
                                    "message", "updated"} (polled by the UI)
      split.csv                    path,label,class,patient,case,magnification,tumour_type,split
      history_frozen.jsonl         one line per epoch: epoch, loss, accuracy, val_loss, val_accuracy, lr, seconds
                                   (training + validation), checkpoint_s (saving the checkpoint)
      history_finetuned.jsonl
      checkpoints/                 last completed epoch of the current stage (resume), state.json and the
                                   best validation epoch's weights (<stage>-best-e<N>.weights.h5)
      frozen.keras                 stage 1's kept epoch (TrainConfig.keep_epoch; written atomically)
      finetuned.keras              stage 2's kept epoch
      test_predictions.csv         path,label,patient,magnification,p_malignant_frozen,p_malignant_finetuned
      val_predictions.csv          the same for the validation split (what calibration is fitted on)
      calibration.json             per stage: temperature, decision threshold and its rule (``calibration.py``)
      metrics.json                 {"protocol", "leaky", "split": "test", "models": {"frozen": M, "finetuned": M}}
      card.md, card.json           model card
      cancel                       flag file: training stops at the next batch boundary
      job.json, train.log          pid of the background process that trains it, and its output (app jobs)
    runs/<experiment_id>/          a cross-validation experiment (``crossval.py``; not a run: its fold runs
                                   are runs whose run.json says "experiment")
    runs/default.json              {"run_id", "stage"}: the active model
    runs/.cache/activations/<key>/ activation cache parts of the cached path (``cache.py``; or
                                   ``$BREAKHIS_CACHE``), shared by runs on the same data and weights

An imported model is a run without config.json: ``run.json`` holds ``"imported": {"source_file",
"sha256", "input_size"}``, status is done and there are no metrics. A model is named
``"<run_id>:<stage>"`` (see :func:`model_id`). Models load with ``safe_mode=True`` only.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import CLASS_NAMES, cache
from .config import TrainConfig
from .errors import ConfigError, JobError, ModelFileError, RunNotFoundError
from .evaluate import METRIC_NAMES, format_metric
from .files import read_json, write_bytes_atomic, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

RUNS_ENV = "BREAKHIS_RUNS"
DEFAULT_FILE = "default.json"
STAGES = ("frozen", "finetuned")
JOB_FILE = "job.json"
"""``{"pid", "started"}`` of the background process ``jobs.start_job`` launched for a run."""
RUN_FILES = ("config.json", "run.json", "status.json")
"""A folder holding any of these is a run."""
INTENDED_USE = "research decision support, not a diagnosis"
PID_START_TOLERANCE_S = 5.0
"""A process that started this long after the run's recorded start is a different process (pid reuse)."""


def runs_dir(path: str | Path | None = None) -> Path:
    """The runs folder: ``path``, else ``$BREAKHIS_RUNS``, else ``./runs`` (not created here)."""
    return Path(path or os.environ.get(RUNS_ENV) or "runs").expanduser()


# ----------------------------------------------------------------------------- runs


@dataclass
class Run:
    """One run folder, as read at one moment.

    Attributes:
        run_id: the folder name.
        path: the run folder.
        config: the TrainConfig, or None for an imported model (or a broken config.json).
        status: queued, running, done, failed, cancelled, interrupted (running, process gone),
            broken (unreadable JSON; see ``error``) or unknown (no status.json yet).
        created: ISO 8601 time the run was created.
        info: run.json.
        metrics: metrics.json, or None before evaluation.
        models: stage ("frozen", "finetuned") → path of each model file that exists.
        error: why the run failed, was interrupted or is broken; None otherwise.
        state: status.json.
    """

    run_id: str
    path: Path
    config: TrainConfig | None
    status: str
    created: str
    info: dict = field(default_factory=dict)
    metrics: dict | None = None
    models: dict[str, Path] = field(default_factory=dict)
    error: str | None = None
    state: dict = field(default_factory=dict)

    @property
    def imported(self) -> bool:
        return "imported" in self.info

    @property
    def best_stage(self) -> str | None:
        """The model to use by default: "finetuned" when its file exists, else "frozen", else None."""
        return next((stage for stage in reversed(STAGES) if stage in self.models), None)

    def did_not_learn(self, stage: str) -> list[str]:
        """Why the ``stage`` model did not learn (run.json "learning_check", see ``learning_check.py``); [] when it did or was not checked."""
        check = (self.info.get("learning_check") or {}).get(stage) or {}
        return [] if check.get("ok", True) else list(check.get("reasons") or ["failed the learning check"])

    @property
    def learned_stage(self) -> str | None:
        """The model that may become active automatically: the best stage that passed the learning check, else None."""
        return next((stage for stage in reversed(STAGES) if stage in self.models and not self.did_not_learn(stage)), None)

    @property
    def protocol(self) -> str | None:
        """Split protocol ("patient", "image", "folds:K"), from metrics.json, run.json or config; None if imported."""
        split = self.info.get("split") or {}
        return (self.metrics or {}).get("protocol") or split.get("protocol") or (self.config.split if self.config else None)

    @property
    def leaky(self) -> bool | None:
        """True when one patient may be in several splits (image-level split); None if unknown."""
        for source in ((self.metrics or {}), self.info.get("split") or {}):
            if "leaky" in source:
                return bool(source["leaky"])
        return self.config.split == "image" if self.config else None

    def headline(self) -> dict:
        """A flat row for tables; the same keys for every run.

        Accuracies (fractions in [0, 1], or None) are those of the finetuned model on the test
        split, else the frozen one (``model`` says which). ``did_not_learn`` names each model
        that failed the learning check and why, or is None.
        """
        models = (self.metrics or {}).get("models") or {}
        stage = next((s for s in reversed(STAGES) if s in models), None)
        overall = models[stage].get("overall", {}) if stage else {}
        if self.imported:
            data = f"imported: {self.info['imported'].get('source_file', '?')}"
        else:
            source = (self.info.get("data") or {}).get("source") or (self.config.data if self.config else "")
            data = Path(source).name if source else None
        return {
            "run": self.run_id,
            "status": self.status,
            "date": self.created[:16].replace("T", " "),
            "data": data,
            "magnification": self.config.magnification if self.config else None,
            "split": self.protocol,
            "leaky": self.leaky,
            "model": stage,
            "patient_recognition_rate": (overall.get("patient_recognition_rate") or {}).get("value"),
            "image_accuracy": (overall.get("image_accuracy") or {}).get("value"),
            "did_not_learn": "; ".join(f"{s}: {', '.join(self.did_not_learn(s))}" for s in STAGES if self.did_not_learn(s)) or None,
        }


def list_runs(root: str | Path | None = None) -> list[Run]:
    """Every run under ``root`` (see :func:`runs_dir`), newest first.

    Hidden entries and folders without run files are skipped; a run whose JSON cannot be read
    is listed with status "broken" and the reason in ``error``.
    """
    root = runs_dir(root)
    if not root.is_dir():
        return []
    runs = [
        _read_run(entry)
        for entry in root.iterdir()
        if not entry.name.startswith(".") and entry.is_dir() and any((entry / name).is_file() for name in RUN_FILES)
    ]
    return sorted(runs, key=lambda run: (_timestamp(run.created), run.run_id), reverse=True)


def load_run(run: str | Path, root: str | Path | None = None) -> Run:
    """A run by id (a folder of ``root``) or by the path of its folder.

    Raises:
        RunNotFoundError: when no run folder matches.
    """
    candidates = [Path(run).expanduser()] if Path(run).is_absolute() else [runs_dir(root) / str(run), Path(run)]
    for path in candidates:
        if path.is_dir() and any((path / name).is_file() for name in RUN_FILES):
            return _read_run(path)
    raise RunNotFoundError(f"no such run in {runs_dir(root)}. Received: run={run}")


def _read_run(path: Path) -> Run:
    problems = []

    def read(name: str) -> dict | None:
        file = path / name
        if not file.is_file():
            return None
        try:
            value = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            problems.append(f"{name} unreadable ({type(exc).__name__}: {exc})")
            return None
        if not isinstance(value, dict):
            problems.append(f"{name} is not a JSON object")
            return None
        return value

    info, state = read("run.json") or {}, read("status.json") or {}
    metrics, config_values = read("metrics.json"), read("config.json")
    config = None
    if config_values is not None:
        try:
            config = TrainConfig.from_dict(config_values)
        except (ConfigError, TypeError) as exc:
            problems.append(f"config.json invalid ({exc})")
    status, error = live_status(path, state)
    if problems:
        status, error = "broken", "; ".join(problems)
    created = info.get("created") or state.get("created") or _iso(path.stat().st_mtime)
    models = {stage: path / f"{stage}.keras" for stage in STAGES if (path / f"{stage}.keras").is_file()}
    return Run(path.name, path, config, status, created, info, metrics, models, error, state)


def live_status(path: Path, state: dict) -> tuple[str, str | None]:
    """(status, error) of a run from its status.json ``state``, with dead training processes detected.

    "running" whose process is gone, and "queued" whose launched job process (``job.json``, written
    by ``jobs.start_job``) ended before it started training, both read "interrupted".
    """
    status, error = state.get("status", "unknown"), state.get("error")
    if status == "running" and not process_alive(state.get("pid"), state.get("started")):
        return "interrupted", f"training process {state.get('pid')} is gone; resume the run to continue"
    if status == "queued":
        try:
            job = json.loads((path / JOB_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            job = None
        if isinstance(job, dict) and not process_alive(job.get("pid"), job.get("started")):
            return "interrupted", (f"training process {job.get('pid')} ended before training started "
                                   "(see train.log); resume the run to continue")
    return status, error


def process_alive(pid, started=None) -> bool:
    """True when process ``pid`` runs, is not a zombie, and (given ``started``) is not a reused pid.

    Args:
        pid: process id recorded in status.json (None or 0 → False).
        started: ISO time the run's process recorded as its start (or None); a process with this
            pid that started more than ``PID_START_TOLERANCE_S`` later is another program.
    """
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    except OSError:
        return False
    try:  # Linux: state and start time from /proc; elsewhere the kill test is all we have
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
        process_start = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return True
    if fields[0] == "Z":
        return False
    started_at = _timestamp(started)  # 0 when not recorded or unparsable: no reuse check
    return not started_at or process_start <= started_at + PID_START_TOLERANCE_S


def _timestamp(value) -> float:
    """Seconds since the epoch of an ISO time (naive = local time); 0 when unparsable."""
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return 0.0


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).astimezone().isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- models


def load_model(path: str | Path):
    """Load a ``.keras`` classifier in Keras safe mode and check its input and output.

    Returns:
        A ``keras.Model`` taking ``(None, S, S, 3)`` RGB in [0, 255] and returning
        ``(None, 2)`` probabilities (benign, malignant).

    Raises:
        ModelFileError: for a missing, truncated or corrupt file, one that is not a ``.keras``
            zip, one holding a Lambda layer or unknown custom objects, or wrong shapes.
    """
    import keras

    from . import model as _model  # registers the CaffePreprocess layer before deserialising

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


def model_id(run: Run, stage: str) -> str:
    """A model's name, ``"<run_id>:<stage>"``."""
    return f"{run.run_id}:{stage}"


def parse_model_ref(ref: str) -> tuple[str, str | None]:
    """Split ``"RUN[:frozen|:finetuned]"`` into ``(run, stage)``; stage None when not given."""
    for stage in STAGES:
        if ref.endswith(f":{stage}"):
            return ref[: -len(stage) - 1], stage
    return ref, None


def resolve_model(ref: str, root: str | Path | None = None) -> tuple[Run, str]:
    """The run and stage a model reference names (stage defaults to the run's best model).

    Raises:
        RunNotFoundError: when the run does not exist or has no such model file.
    """
    run_ref, stage = parse_model_ref(ref)
    run = load_run(run_ref, root)
    stage = stage or run.best_stage
    if stage not in run.models:
        raise RunNotFoundError(f"run {run.run_id} has no {stage or 'trained'} model (status {run.status}). Received: model={ref}")
    return run, stage


def get_default(root: str | Path | None = None) -> tuple[Run, str] | None:
    """The active model: ``default.json`` when it names an existing model, else the newest done
    run's finetuned (else frozen) model that passed the learning check; None when there is none.

    A model that did not learn (:meth:`Run.did_not_learn`) is active only when someone chose it
    (``set_default``); it is never picked by this fallback."""
    root = runs_dir(root)
    chosen = _read_default(root)
    if chosen is not None:
        try:
            return resolve_model(f"{chosen.get('run_id')}:{chosen.get('stage')}", root)
        except RunNotFoundError:
            pass  # the named model is gone; fall back
    for run in list_runs(root):
        if run.status == "done" and run.learned_stage:
            return run, run.learned_stage
    return None


def set_default(run_id: str, stage: str, root: str | Path | None = None) -> None:
    """Make ``<run_id>:<stage>`` the active model (``<root>/default.json``, written atomically).

    Raises:
        RunNotFoundError: when the run or its model file of that stage does not exist.
    """
    if stage not in STAGES:
        raise RunNotFoundError(f"stage must be frozen or finetuned. Received: stage={stage}")
    run, stage = resolve_model(f"{run_id}:{stage}", root)
    write_json_atomic(runs_dir(root) / DEFAULT_FILE, {"run_id": run.run_id, "stage": stage})
    log.info("active model set to %s", model_id(run, stage))


def _read_default(root: Path) -> dict | None:
    try:
        value = json.loads((root / DEFAULT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


# ----------------------------------------------------------------------------- model cards


def build_card(run: Run, experiment: dict | None = None) -> dict:
    """The model card of a run as a JSON-ready dict (see :func:`card_markdown` for the text).

    ``experiment``: the card's cross-validation entry (``crossval.card_section``), when the caller has it.
    """
    info, config = run.info, run.config
    split = info.get("split") or {}
    data = info.get("data") or {}
    metrics = run.metrics or {}
    return {
        "run_id": run.run_id,
        "models": {stage: model_id(run, stage) for stage in run.models},
        "status": run.status,
        "intended_use": INTENDED_USE,
        "imported": info.get("imported"),
        "data": None if run.imported else {
            "source": data.get("source") or (config.data if config else None),
            "kind": data.get("kind"),
            "images": data.get("images_used", data.get("images")),
            "patients": data.get("patients"),
            "magnification": config.magnification if config else None,
            "classes": data.get("classes"),
            "rejected_files": len(data.get("rejected") or []),
            "by_split": split.get("counts"),
        },
        "split": None if run.imported else {
            "protocol": run.protocol,
            "leaky": run.leaky,
            "group_by": split.get("group_by", config.group_by if config else None),
            "patients_in_several_splits": split.get("patients_in_several_splits"),
            "description": _describe_protocol(run.protocol, run.leaky),
        },
        "weights": info.get("weights"),
        "training": None if run.imported or config is None else {
            "recipe": config.resolved_recipe,
            "recipe_description": describe_recipe(config),
            "kept_epochs": info.get("kept_epochs") or {},
            "keep_epoch": config.keep_epoch,
        },
        "learning_check": info.get("learning_check") or {},
        "hyperparameters": {k: v for k, v in config.to_dict().items() if k != "data"} if config else None,
        "metrics": {
            stage: {
                "split": metrics.get("split", "test"),
                "protocol": metrics.get("protocol", run.protocol),
                "leaky": metrics.get("leaky", run.leaky),
                **values,
            }
            for stage, values in (metrics.get("models") or {}).items()
        },
        "calibration": _card_calibration(run),
        "experiment": _card_experiment(run, experiment),
        "software": info.get("versions"),
        "device": info.get("device"),
        "precision": info.get("precision"),
        "training_path": info.get("training_path"),
        "dates": {
            "created": run.created,
            "started": run.state.get("started"),
            "ended": run.state.get("ended"),
        },
    }


def describe_recipe(config: TrainConfig) -> str:
    """One sentence on the training recipe that ran (``TrainConfig.resolved_recipe``) and what it means for these weights."""
    random_base = config.weights in ("", "none", "None")
    if config.resolved_recipe == "scratch":
        return ("scratch: stage 1 fits the head on the randomly initialised base, stage 2 trains every layer "
                f"of the base and the head (Adam {config.lr_finetune:g})"
                + (f" (chosen by recipe {config.recipe} because there are no pretrained weights)" if config.recipe == "auto" else ""))
    text = (f"paper: stage 1 trains the head on the frozen base, stage 2 also trains the last {config.unfreeze} "
            "base layers")
    if random_base:
        text += ("; WARNING: with random initial weights the frozen base computes random features, so stage 1 "
                 "learns from noise-like features and stage 2 cannot repair the frozen blocks")
    return text


def _card_calibration(run: Run) -> dict | None:
    """Per stage: temperature, threshold and its rule, and the test split's calibration and operating point."""
    from .calibration import CALIBRATION_FILE

    stages = (read_json(run.path / CALIBRATION_FILE, {}) or {}).get("stages") or {}
    return {
        stage: {key: values.get(key) for key in ("temperature", "threshold", "rule", "target_sensitivity", "fitted_on")}
        | {"test": {key: (values.get("test") or {}).get(key)
                    for key in ("ece_before", "ece_after", "brier_before", "brier_after", "operating_point")}}
        for stage, values in stages.items()
    } or None


def _card_experiment(run: Run, section: dict | None) -> dict | None:
    """The card's "experiment" entry of a run that belongs to a cross-validation experiment, else None.

    ``section`` is the full entry when the caller has it (``crossval`` passes ``crossval.card_section``
    when it rewrites the cards of its runs); otherwise the entry last written to card.json, or, before
    the experiment has written one, what the run itself knows (its id, its fold).
    """
    if section is not None or not run.info.get("experiment"):
        return section
    written = (read_json(run.path / "card.json", {}) or {}).get("experiment")
    if written and written.get("experiment_id") == run.info["experiment"]:
        return written
    config = run.config
    fold = f"fold {config.fold} of {config.cv_folds}" if config and config.split == "cv" else "final model retrained on all patients"
    return {"experiment_id": run.info["experiment"], "role": fold, "deployed": None, "deployed_model": None,
            "estimate": None, "n_folds": config.cv_folds if config else None}


def _describe_protocol(protocol: str | None, leaky: bool | None) -> str:
    if protocol is None:
        return "unknown"
    if leaky:
        return (f"{protocol}: image-level split (the paper's); LEAKY: images of one patient can be in "
                "train and test, so test metrics are optimistic")
    if protocol.startswith("cv"):
        return f"{protocol}: one fold of a patient-wise K-fold cross-validation; no patient in two splits"
    if protocol.startswith("folds"):
        return f"{protocol}: the official BreakHis fold (patient-wise); no patient in two splits"
    return f"{protocol}: patient-wise split; no patient in two splits"


def card_markdown(card: dict) -> str:
    """The model card as Markdown."""
    lines = [f"# Model card: {card['run_id']}", "", f"**Intended use:** {card['intended_use']}. "
             "Predictions must be reviewed by a pathologist; the model was not validated for clinical use.", ""]
    lines += [f"- Status: {card['status']}", f"- Models: {', '.join(f'`{m}`' for m in card['models'].values()) or 'none'}"]
    imported = card.get("imported")
    if imported:
        lines += [
            f"- Imported from `{imported.get('source_file')}` (SHA-256 `{imported.get('sha256')}`), "
            f"input {imported.get('input_size')}×{imported.get('input_size')} RGB",
            "- Training data, split and metrics of an imported model are unknown.",
        ]
    weights = card.get("weights") or {}
    if weights:
        lines.append(f"- Base weights: {weights.get('source')}" + (f" (`{weights['path']}`)" if weights.get("path") else ""))
    for stage, check in (card.get("learning_check") or {}).items():
        if not check.get("ok", True):
            lines.append(f"- **{stage} model did not learn:** {'; '.join(check.get('reasons') or [])}. "
                         "It is never made the active model automatically.")
    training = card.get("training")
    if training:
        lines += ["", "## Training", "", f"- Recipe: {training['recipe_description']}"]
        for stage, kept in (training.get("kept_epochs") or {}).items():
            lines.append(f"- {stage} model: epoch {kept.get('epoch')} of {kept.get('epochs_run')} kept "
                         f"({kept.get('reason')}; keep_epoch={training['keep_epoch']})")
    data, split = card.get("data"), card.get("split")
    if data:
        lines += ["", "## Data", "", f"- Source: `{data['source']}` ({data['kind'] or 'unknown kind'})",
                  f"- Images used: {data['images']}, patients: {data['patients']}, magnification: {data['magnification']}",
                  f"- Rejected files: {data['rejected_files']}"]
        if data.get("by_split"):
            lines += ["", "| split | images | patients | " + " | ".join(CLASS_NAMES) + " |", "|---|---|---|---|---|"]
            for name, counts in data["by_split"].items():
                lines.append(f"| {name} | {counts.get('images')} | {counts.get('patients')} | "
                             + " | ".join(str(counts.get(c)) for c in CLASS_NAMES) + " |")
    if split:
        lines += ["", "## Split protocol", "", f"- {split['description']}",
                  f"- Leaky: {'yes' if split['leaky'] else 'no'}; patient key: {split['group_by']}"]
        if split.get("patients_in_several_splits"):
            lines.append(f"- Patients in several splits: {split['patients_in_several_splits']}")
    if card.get("hyperparameters"):
        lines += ["", "## Hyper-parameters", "", "| parameter | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in card["hyperparameters"].items()]
    if card.get("metrics"):
        stages = list(card["metrics"])
        first = card["metrics"][stages[0]]
        lines += ["", "## Metrics", "",
                  f"Split: {first['split']}, protocol {first['protocol']}{' (LEAKY)' if first['leaky'] else ''}; "
                  "95 % CIs from a patient-resampled bootstrap.", "",
                  "| metric | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
        overall = [card["metrics"][stage]["overall"] for stage in stages]
        for name in METRIC_NAMES:
            lines.append(f"| {name} | " + " | ".join(format_metric(o.get(name)) for o in overall) + " |")
        lines.append("| images / patients | " + " | ".join(f"{o.get('n_images')} / {o.get('n_patients')}" for o in overall) + " |")
    if card.get("calibration"):
        lines += ["", "## Calibration and operating point", "",
                  "Fitted on the validation patients after training; the predictor uses the calibrated "
                  "probability and this threshold.", "",
                  "| stage | temperature | threshold (rule) | test ECE before → after | test Brier before → after "
                  "| test sensitivity | test specificity |", "|---|---|---|---|---|---|---|"]
        for stage, values in card["calibration"].items():
            test = values.get("test") or {}
            point = test.get("operating_point") or {}
            rule = values.get("rule") + (f" ≥ {values['target_sensitivity']}" if values.get("target_sensitivity") else "")
            ece = (f"{test['ece_before']:.3f} → {test['ece_after']:.3f}" if test.get("ece_before") is not None else "n/a")
            brier = (f"{test['brier_before']:.3f} → {test['brier_after']:.3f}" if test.get("brier_before") is not None
                     else "n/a")
            lines.append(f"| {stage} | {values.get('temperature', 1.0):.3f} | {values.get('threshold', 0.5):.3f} ({rule}) "
                         f"| {ece} | {brier} | {format_metric(point.get('sensitivity'))} "
                         f"| {format_metric(point.get('specificity'))} |")
    experiment = card.get("experiment")
    if experiment:
        deployed = (f"**this run's {experiment['deployed']} model is the one deployed from the experiment**"
                    if experiment.get("deployed") else
                    f"deployed from the experiment: `{experiment['deployed_model']}`" if experiment.get("deployed_model")
                    else "no model of the experiment has been chosen for deployment yet")
        lines += ["", "## Cross-validation", "",
                  f"- This run is the {experiment['role']} of experiment `{experiment['experiment_id']}` "
                  f"({experiment['n_folds']}-fold patient-wise cross-validation); {deployed}."]
        if experiment.get("estimate"):
            stages = list(experiment["estimate"])
            lines += ["- Estimate of performance: pooled out-of-fold predictions (every patient predicted once, by "
                      "the fold model that did not train on it); 95 % CIs from a patient-resampled bootstrap.", "",
                      "| metric | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
            for name in METRIC_NAMES:
                lines.append(f"| {name} | " + " | ".join(format_metric(experiment["estimate"][s].get(name)) for s in stages) + " |")
        else:
            lines.append("- Pooled cross-validation figures appear when every fold has finished.")
    lines += ["", "## Software and dates", ""]
    lines += [f"- {k}: {v}" for k, v in (card.get("software") or {}).items()]
    if card.get("device"):
        lines.append(f"- device: {card['device']}")
    if card.get("training_path"):
        lines.append(f"- training path: {card['training_path']}")
    if card.get("precision"):
        lines.append(f"- compute precision: {card['precision']['policy']} ({card['precision']['reason']}); "
                     "the saved models are float32")
    lines += [f"- {k}: {v}" for k, v in card["dates"].items() if v]
    return "\n".join(lines) + "\n"


def write_card(run: Run, experiment: dict | None = None) -> dict:
    """Write ``card.json`` and ``card.md`` into the run folder (atomically); returns the card.

    ``experiment``: the card's cross-validation entry, when the caller has it (see :func:`build_card`).
    """
    card = build_card(run, experiment)
    write_json_atomic(run.path / "card.json", card)
    write_text_atomic(run.path / "card.md", card_markdown(card))
    return card


# ----------------------------------------------------------------------------- import, export, delete


def import_model(keras_file: str | Path, root: str | Path | None = None, name: str | None = None) -> Run:
    """Register an external ``.keras`` classifier as a run (its model becomes ``<run_id>:finetuned``).

    The file is validated first (safe mode, input ``(None, S, S, 3)``, output 2 classes from a Dense
    softmax layer, as Diagnose and its heat maps need); the run folder is assembled under a hidden
    name and renamed into place, so a refusal or a crash leaves nothing behind.

    Args:
        keras_file: the model file.
        root: runs folder (see :func:`runs_dir`).
        name: a label for the run id; default the file's stem.

    Raises:
        ModelFileError: when the file is missing, unsafe, corrupt or of the wrong shape.
    """
    from .model import check_model_io
    from .train import software_versions

    keras_file = Path(keras_file).expanduser()
    model = load_model(keras_file)
    input_size = check_model_io(model)
    _check_softmax_head(model, keras_file.name)
    data = keras_file.read_bytes()
    root = runs_dir(root)
    root.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name or keras_file.stem).strip("-")[:40] or "model"
    base = f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-imported-{slug}"
    run_id, n = base, 2
    while (root / run_id).exists():
        run_id, n = f"{base}-{n}", n + 1
    created = _iso(datetime.now().timestamp())
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=root))
    try:
        write_bytes_atomic(staging / "finetuned.keras", data)
        write_json_atomic(staging / "run.json", {
            "run_id": run_id,
            "created": created,
            "name": name or keras_file.stem,
            "imported": {"source_file": keras_file.name, "sha256": hashlib.sha256(data).hexdigest(), "input_size": input_size},
            "versions": software_versions(),
        })
        write_json_atomic(staging / "status.json", {"status": "done", "created": created, "ended": created, "error": None})
        os.rename(staging, root / run_id)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("model imported as run %s", run_id)
    return _read_run(root / run_id)


def _check_softmax_head(model, name: str) -> None:
    """Refuse a classifier whose last layer is not a Dense softmax (its outputs would not be probabilities)."""
    import keras

    head = model.layers[-1]
    activation = getattr(getattr(head, "activation", None), "__name__", None)
    if not isinstance(head, keras.layers.Dense) or activation != "softmax":
        raise ModelFileError(
            f"model's last layer must be a Dense layer with softmax activation (2 class probabilities). "
            f"Received: {name} ends with {type(head).__name__}({activation or 'no activation'})"
        )


def export_run(run: Run) -> bytes:
    """A zip of the run folder (entries under ``<run_id>/``) without ``checkpoints/`` and temporary files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for file in sorted(run.path.rglob("*")):
            relative = file.relative_to(run.path)
            if not file.is_file() or relative.parts[0] == "checkpoints" or file.name.startswith("."):
                continue
            compression = zipfile.ZIP_STORED if file.suffix == ".keras" else zipfile.ZIP_DEFLATED
            archive.write(file, f"{run.run_id}/{relative.as_posix()}", compress_type=compression)
    return buffer.getvalue()


def delete_run(run_id: str, root: str | Path | None = None) -> int:
    """Delete a run folder of ``root``; clears ``default.json`` when it named this run.

    The activation cache parts the run used (``run.json`` "cache") are deleted too unless another
    run used them or a training job is running (it may be reading them).

    Returns:
        Bytes of activation cache freed.

    Raises:
        RunNotFoundError: when ``run_id`` is not a run folder directly inside ``root``.
        JobError: when the run is training (status running with a live process, or the job lock names it).
    """
    root = runs_dir(root)
    path = root / str(run_id)
    is_child = Path(run_id).name == str(run_id) and not str(run_id).startswith(".")
    if not is_child or not path.is_dir() or not any((path / name).is_file() for name in RUN_FILES):
        raise RunNotFoundError(f"no such run in {root}. Received: run={run_id}")
    from .jobs import current_job

    run = _read_run(path)
    job = current_job(root)
    if run.status == "running" or (job is not None and job.get("run_id") == run.run_id):
        pid = run.state.get("pid") or (job or {}).get("pid")
        raise JobError(f"run is training (pid {pid}); cancel it first. Received: run={run_id}")
    if (_read_default(root) or {}).get("run_id") == run.run_id:
        (root / DEFAULT_FILE).unlink(missing_ok=True)
    shutil.rmtree(path)
    log.info("run %s deleted", run.run_id)
    if _training_now(root):
        return 0
    in_use = {folder for other in list_runs(root) for folder in _cache_parts(other)}
    return cache.remove_parts(folder for folder in _cache_parts(run) if folder not in in_use)


def _training_now(root: Path) -> str | None:
    """Which run of ``root`` is training (the app's job lock, or a live "running" run), or None."""
    from .jobs import current_job

    job = current_job(root)
    if job is not None:
        return f"run {job.get('run_id')}, pid {job.get('pid')}"
    running = next((run for run in list_runs(root) if run.status == "running"), None)
    return f"run {running.run_id}, pid {running.state.get('pid')}" if running else None


def _cache_parts(run: Run) -> list[Path]:
    """The activation cache part folders a run recorded in run.json (none for the plain path)."""
    recorded = run.info.get("cache") or {}
    if not recorded.get("folder") or not isinstance(recorded.get("parts"), dict):
        return []
    return [Path(recorded["folder"]) / str(key) for key in recorded["parts"].values()]


def cache_usage(root: str | Path | None = None) -> tuple[Path, int, int]:
    """The activation cache of ``root``'s runs: its folder, number of part folders and bytes on disk."""
    folder = cache.cache_root(runs_dir(root))
    parts = cache.part_folders(folder)
    return folder, len(parts), sum(cache.folder_bytes(part) for part in parts)


def clear_cache(root: str | Path | None = None) -> int:
    """Delete every activation cache part of ``root``'s runs (a later cached run rebuilds what it needs).

    Returns:
        Bytes freed.

    Raises:
        JobError: while a training job runs (it may be reading or writing the cache).
    """
    root = runs_dir(root)
    training = _training_now(root)
    if training:
        raise JobError(f"training is running ({training}); the activation cache can be deleted when it has ended. "
                       f"Received: root={root}")
    return cache.remove_parts(cache.part_folders(cache.cache_root(root)))
