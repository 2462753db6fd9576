"""The run registry: the runs of a runs folder as ``Run`` objects, model names, and model cards.

Runs live in one folder (``$BREAKHIS_RUNS``, default ``runs/`` in the app home), one sub-folder per run; the layout
of a run directory is described once, in ``docs/ARCHITECTURE.md`` ("Run directory"), and its file
names are defined once, in ``rundir.py``. A model is named ``"<run_id>:<stage>"`` (see
:func:`model_id`). Elsewhere: loading a model file (``model_loading.py``), the default model
(``default_model.py``), import and export (``transfer.py``), deleting runs and cache parts
(``cleanup.py``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from breakhis_core import CLASS_NAMES
from breakhis_core.config import DEFAULT_THRESHOLD, STAGES, TrainConfig
from breakhis_core.errors import ConfigError, RunNotFoundError
from breakhis_core.evaluation.metrics import CLASS_METRIC_NAMES, METRIC_NAMES, format_metric
from breakhis_core.task import Task, task_named
from breakhis_core.files import read_json, write_json_atomic, write_text_atomic
from breakhis_core.evaluation.learning_check import LearningStatus, card_lines
from breakhis_core.lab.paths import runs_dir
from breakhis_core.notice import INTENDED_USE
from breakhis_core.runs.rundir import (
    CALIBRATION_FILE,
    CARD_JSON_FILE,
    CARD_MD_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    RUN_INFO_FILE,
    STATUS_FILE,
    RunDir,
    iso_from_seconds,
    live_status,
    seconds_from_iso,
)
from breakhis_core.runs.status import LIVE, RunStatus

log = logging.getLogger(__name__)



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
    status: RunStatus
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
    def task(self) -> Task:
        """What the run's models tell apart: config.json "task", an imported model's run.json "imported" "task"
        (told by its output size); malignancy for runs written before tasks."""
        if self.config is not None:
            return task_named(self.config.task)
        return task_named((self.info.get("imported") or {}).get("task"))

    @property
    def best_stage(self) -> str | None:
        """The model to use by default: "finetuned" when its file exists, else "frozen", else None."""
        return next((stage for stage in reversed(STAGES) if stage in self.models), None)

    def learning(self, stage: str) -> LearningStatus:
        """The ``stage`` model's learning-check state (run.json "learning_check", see ``learning_check.py``)."""
        return LearningStatus.from_record((self.info.get("learning_check") or {}).get(stage))

    @property
    def learned_stage(self) -> str | None:
        """The model that may become active automatically: the best stage that neither failed the learning check
        nor is undetermined, else None."""
        return next((stage for stage in reversed(STAGES)
                     if stage in self.models and not self.learning(stage).needs_confirmation), None)

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

        ``task`` is the run's task name (``Run.task``). Accuracies (fractions in [0, 1], or None) are those of the
        finetuned model on the test split, else the frozen one (``model`` says which). ``learning_check`` is each model's learning-check
        state ("finetuned: learned; frozen: undetermined"), or None when the run has no model.
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
            "task": self.task.name,
            "status": self.status,
            "date": self.created[:16].replace("T", " "),
            "data": data,
            "magnification": self.config.magnification if self.config else None,
            "split": self.protocol,
            "leaky": self.leaky,
            "model": stage,
            "patient_recognition_rate": (overall.get("patient_recognition_rate") or {}).get("value"),
            "image_accuracy": (overall.get("image_accuracy") or {}).get("value"),
            "learning_check": "; ".join(f"{s}: {self.learning(s).label}" for s in reversed(STAGES) if s in self.models) or None,
        }


def list_runs(root: str | Path | None = None) -> list[Run]:
    """Every run under ``root`` (see ``paths.runs_dir``), newest first.

    Hidden entries and folders without run files are skipped; a run whose JSON cannot be read
    is listed with status "broken" and the reason in ``error``.
    """
    root = runs_dir(root)
    if not root.is_dir():
        return []
    runs = [
        _read_run(entry)
        for entry in root.iterdir()
        if not entry.name.startswith(".") and RunDir(entry).is_run()
    ]
    return sorted(runs, key=lambda run: (seconds_from_iso(run.created), run.run_id), reverse=True)


def load_run(run: str | Path, root: str | Path | None = None) -> Run:
    """A run by id (a folder of ``root``) or by the path of its folder.

    Raises:
        RunNotFoundError: when no run folder matches.
    """
    candidates = [Path(run).expanduser()] if Path(run).is_absolute() else [runs_dir(root) / str(run), Path(run)]
    for path in candidates:
        if RunDir(path).is_run():
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

    info, state = read(RUN_INFO_FILE) or {}, read(STATUS_FILE) or {}
    metrics, config_values = read(METRICS_FILE), read(CONFIG_FILE)
    config = None
    if config_values is not None:
        try:
            config = TrainConfig.from_dict(config_values)
        except (ConfigError, TypeError) as exc:
            problems.append(f"{CONFIG_FILE} invalid ({exc})")
    status, error = live_status(path, state)
    if problems:
        status, error = RunStatus.BROKEN, "; ".join(problems)
    created = info.get("created") or state.get("created") or iso_from_seconds(path.stat().st_mtime)
    files = {stage: RunDir(path).model_file(stage) for stage in STAGES}
    models = {stage: file for stage, file in files.items() if file.is_file()}
    return Run(path.name, path, config, status, created, info, metrics, models, error, state)


# ----------------------------------------------------------------------------- model names


def model_id(run: Run, stage: str) -> str:
    """A model's name, ``"<run_id>:<stage>"``."""
    return f"{run.run_id}:{stage}"


def usable_models(runs: list[Run]) -> list[tuple[Run, str]]:
    """``(run, stage)`` of every usable model file of ``runs`` (not of a run training, queued or broken), in the
    order of ``runs`` (newest first from :func:`list_runs`), fine-tuned before frozen."""
    return [(run, stage) for run in runs if run.status not in (*LIVE, RunStatus.BROKEN)
            for stage in reversed(STAGES) if stage in run.models]


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
        "task": {"name": run.task.name, "classes": list(run.task.codes), "description": run.task.description},
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
            "kept_epoch_rule": info.get("kept_epoch"),
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
        "class_metrics": metrics.get("classes"),
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
    text = (f"paper: stage 1 trains the head on the frozen {config.backbone} base, stage 2 also trains its last "
            f"{config.unfreeze} block{'s' if config.unfreeze != 1 else ''}")
    if random_base:
        text += ("; WARNING: with random initial weights the frozen base computes random features, so stage 1 "
                 "learns from noise-like features and stage 2 cannot repair the frozen blocks")
    return text


def _card_calibration(run: Run) -> dict | None:
    """Per stage: temperature, threshold and its rule, and the test split's calibration and operating point."""
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
    written = (read_json(run.path / CARD_JSON_FILE, {}) or {}).get("experiment")
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
    task = card.get("task")
    if task and task["name"] != "malignancy":
        lines.append(f"- Task: {task['name']}: {task['description']} (classes {', '.join(task['classes'])})")
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
    lines += card_lines(card.get("learning_check") or {})
    training = card.get("training")
    if training:
        lines += ["", "## Training", "", f"- Recipe: {training['recipe_description']}"]
        for stage, kept in (training.get("kept_epochs") or {}).items():
            lines.append(f"- {stage} model: epoch {kept.get('epoch')} of {kept.get('epochs_run')} kept "
                         f"({kept.get('reason')}; keep_epoch={training['keep_epoch']})")
        rule = training.get("kept_epoch_rule")
        if rule:
            lines.append(f"- Kept epochs chosen by {rule['rule']}" + (f" ({rule['pool']})" if rule.get("pool") else "")
                         + (f"; {rule['note']}" if rule.get("note") else ""))
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
    if card.get("class_metrics"):
        lines += _class_metric_lines(card["class_metrics"])
    if card.get("calibration"):
        lines += ["", "## Calibration and operating point", "",
                  "Fitted on the validation patients after training (only on enough of them: else T = 1 and the "
                  f"fixed {DEFAULT_THRESHOLD:g} threshold); the predictor uses the calibrated probability and this threshold.", "",
                  "| stage | temperature | threshold (rule) | fitted on | test ECE before → after "
                  "| test Brier before → after | test sensitivity | test specificity |", "|---|---|---|---|---|---|---|---|"]
        for stage, values in card["calibration"].items():
            test = values.get("test") or {}
            point = test.get("operating_point") or {}
            rule = values.get("rule") + (f" ≥ {values['target_sensitivity']}" if values.get("target_sensitivity") else "")
            ece = (f"{test['ece_before']:.3f} → {test['ece_after']:.3f}" if test.get("ece_before") is not None else "n/a")
            brier = (f"{test['brier_before']:.3f} → {test['brier_after']:.3f}" if test.get("brier_before") is not None
                     else "n/a")
            lines.append(f"| {stage} | {values.get('temperature', 1.0):.3f} | {values.get('threshold', DEFAULT_THRESHOLD):.3f} ({rule}) "
                         f"| {values.get('fitted_on') or 'n/a'} | {ece} | {brier} | {format_metric(point.get('sensitivity'))} "
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
        kept_epoch = experiment.get("kept_epoch")
        if kept_epoch:
            lines.append(f"- Kept epochs of the folds, chosen by {kept_epoch['rule']}: " + "; ".join(
                f"{stage} {', '.join(str(e) for e in entry['epochs'])} (own validation split: "
                f"{', '.join(str(e) for e in entry['own_epochs'])})" for stage, entry in kept_epoch["stages"].items()))
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


def _class_metric_lines(class_metrics: dict) -> list[str]:
    """The card's tumour-type section (Markdown): the class metrics of each stage (``evaluate.compute_class_metrics``),
    then each type's recall, precision and one-vs-rest AUC."""
    stages = list(class_metrics)
    lines = ["", "## Tumour types", "",
             "The metrics above are on P(malignant), the sum of the malignant types' probabilities; these are on the "
             "types themselves (a type predicted by the argmax); 95 % CIs from a patient-resampled bootstrap.", "",
             "| metric | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
    for name in CLASS_METRIC_NAMES:
        lines.append(f"| {name} | " + " | ".join(format_metric(class_metrics[s].get(name)) for s in stages) + " |")
    last = class_metrics[stages[-1]]
    lines += ["", f"Per type ({stages[-1]} model):", "", "| type | test images | recall | precision | one-vs-rest AUC |",
              "|---|---|---|---|---|"]
    for code, values in last["per_class"].items():
        lines.append(f"| {code} | {values['n_images']} | {format_metric(values['recall'])} | "
                     f"{format_metric(values['precision'])} | {format_metric(values['auc'])} |")
    return lines


def write_card(run: Run, experiment: dict | None = None) -> dict:
    """Write ``card.json`` and ``card.md`` into the run folder (atomically); returns the card.

    ``experiment``: the card's cross-validation entry, when the caller has it (see :func:`build_card`).
    """
    card = build_card(run, experiment)
    write_json_atomic(run.path / CARD_JSON_FILE, card)
    write_text_atomic(run.path / CARD_MD_FILE, card_markdown(card))
    return card
