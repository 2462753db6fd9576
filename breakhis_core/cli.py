"""Command line: ``breakhis <command>`` (= ``python -m breakhis_core``), a thin layer over the library.

Commands: scan, train, resume, evaluate, runs, models (list, import, export, activate, delete), cache, weights (check,
install), card, predict, predict-slide, slide-info, cases (list, show, export-dataset), db (upgrade, backup, restore).
``--out`` always names a folder the command writes its results into; the runs folder is ``--runs``. ``--json``
prints a listing or a result as JSON. Exit codes: ``EXIT_CODES``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import traceback
import typing
from pathlib import Path

from breakhis_core.lab import paths
from breakhis_core import runtime
from breakhis_core.config import DEFAULT_THRESHOLD, MAGNIFICATION_CHOICES, STAGES, TrainConfig
from breakhis_core.models.backbones import BACKBONE_NAMES, DEFAULT_BACKBONE, get_backbone
from breakhis_core.errors import BreakHisError, ConfigError
from breakhis_core.notice import INTENDED_USE, NOTICE
from breakhis_core.runs.status import RunStatus


EXIT_CODES = {
    0: RunStatus.DONE,
    1: "internal error (a bug: the message and traceback help a report)",
    2: "bad usage or bad input: the reason is on stderr, one line",
    3: "training cancelled (resume it with `breakhis resume RUN`)",
    130: "interrupted (Ctrl-C)",
}
"""The exit codes of every command, listed in ``--help`` and the README."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so ``main`` owns the exit code."""

    def error(self, message):
        raise ConfigError(message)


def _print_json(value) -> None:
    print(json.dumps(value, indent=2, default=str))


# ----------------------------------------------------------------------------- cases and their database


def _case_service(args):
    """The case service for whoever runs the CLI: the shell user, as an admin (the shell reaches the files anyway)."""
    import getpass

    from breakhis_core.lab.access import ADMIN
    from breakhis_core.cases.records import Actor
    from breakhis_core.cases.service import CaseService

    return CaseService.open(Actor(f"{getpass.getuser()} (cli)", ADMIN), args.runs)


def _utc_date(text: str | None, end_of_day: bool = False):
    from datetime import datetime, time as day_time, timezone

    if not text:
        return None
    try:
        day = datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        raise ConfigError(f"a date is YYYY-MM-DD. Received: {text}") from None
    return datetime.combine(day, day_time.max if end_of_day else day_time.min, tzinfo=timezone.utc)


def cmd_cases_list(args) -> int:
    from breakhis_core.cases.records import CaseFilter

    where = CaseFilter(text=args.search or "", status=args.status, verdict=args.verdict, reviewer=args.reviewer,
                       since=_utc_date(args.since), until=_utc_date(args.until, end_of_day=True), limit=args.limit)
    service = _case_service(args)
    try:
        summaries = service.list_cases(where)
    finally:
        service.close()
    if args.json:
        _print_json([summary.to_dict() for summary in summaries])
        return 0
    if not summaries:
        print("no case matches" if where != CaseFilter(limit=args.limit) else "no cases yet: save one from the Diagnose page")
        return 0
    print("\t".join(("accession", "patient", "status", "created (UTC)", "verdict", "final label", "reviewer", "images")))
    for c in summaries:
        print("\t".join(str(value or "") for value in (c.accession, c.patient_ref, c.status,
                                                      f"{c.created_at:%Y-%m-%d %H:%M}", c.verdict, c.final_label,
                                                      c.reviewed_by, c.n_images)))
    return 0


def cmd_cases_show(args) -> int:
    service = _case_service(args)
    try:
        case = service.get_case(args.case)
    finally:
        service.close()
    if args.json:
        _print_json(case.to_dict())
        return 0
    prediction = case.prediction
    lines = [f"case {case.accession} (id {case.id}, version {case.version}) · patient {case.patient_ref} · {case.status}",
             f"created {case.created_at:%Y-%m-%d %H:%M} UTC by {case.created_by}"]
    if prediction:
        lines.append(f"model {prediction.model_id} ({prediction.task}, temperature {prediction.temperature:g}, "
                     f"threshold {prediction.threshold:g}, rule {prediction.rule}): {prediction.verdict} "
                     f"P(malignant) {prediction.p_malignant:.3f}")
    if case.reviewed_by:
        review = case.review
        lines.append(f"review by {case.reviewed_by}: {'agrees' if review.agrees else 'disagrees' if review.agrees is False else 'no opinion'}"
                     f", final label {review.final_label or '-'}{' (' + review.final_type + ')' if review.final_type else ''}"
                     + (f": {review.comment}" if review.comment else ""))
    if case.signed_by:
        lines.append(f"signed by {case.signed_by} at {case.signed_at:%Y-%m-%d %H:%M} UTC")
    for addendum in case.addenda:
        label = f" (final label {addendum.review.final_label})" if addendum.review and addendum.review.final_label else ""
        lines.append(f"addendum by {addendum.author} at {addendum.created_at:%Y-%m-%d %H:%M} UTC{label}: {addendum.text}")
    for image in case.images:
        p = image.prediction
        shared = f" · also in {', '.join(image.also_in)}" if image.also_in else ""
        lines.append(f"  {image.name} [{image.sha256[:12]}] {image.magnification or '?'}X"
                     + (f" · {p.verdict} {p.p_malignant:.3f}" if p else "")
                     + (f" · review {image.review.final_label}" if image.review.final_label else "") + shared)
    print("\n".join(lines))
    return 0


def cmd_cases_export(args) -> int:
    from breakhis_core.cases.dataset import export_dataset
    from breakhis_core.cases.layout import datasets_dir

    service = _case_service(args)
    try:
        exported = export_dataset(service.reviewed_cases("export-dataset"), service.image_path,
                                  args.out or datasets_dir(args.runs), service.actor.user, args.name)
    finally:
        service.close()
    if args.json:
        _print_json(exported.to_dict())
    else:
        print(f"{exported.n_images} image(s) of {len(exported.cases)} reviewed case(s); train on it with "
              f"`breakhis train {exported.manifest}`")
        print(exported.manifest)
    return 0


def cmd_db(args) -> int:
    from breakhis_core.cases import backup
    from breakhis_core.cases.database import CaseDatabase, shown_url

    database = CaseDatabase.open(runs_root=args.runs, check=args.db_command != "upgrade")
    try:
        if args.db_command == "upgrade":
            state = database.migrate()
            print(f"the case database {shown_url(database.url)} is at schema revision {state.current}")
        elif args.db_command == "backup":
            print(f"backed up {shown_url(database.url)} to {backup.backup(database, args.path)}; copy the image "
                  f"folder (cases/images) beside it")
        else:
            state = backup.restore(database, args.path)
            print(f"restored {args.path} into {shown_url(database.url)} (schema revision {state.current})")
    finally:
        database.close()
    return 0


# ----------------------------------------------------------------------------- scan


def cmd_scan(args) -> int:
    from breakhis_core.data.records import scan

    summary = scan(args.data).summary()
    if args.json:
        _print_json(summary)
        return 0
    print(f"{summary['source']} ({summary['kind']})")
    print(f"images {summary['images']}, patients (slides) {summary['patients']}, cases {summary['cases']}")
    mags = [str(m) for m in summary["magnifications"]] or ["unknown"]
    print("class      " + "".join(f"{m + 'X':>8}" for m in mags) + "   total")
    for name, row in summary["by_class_and_magnification"].items():
        cells = "".join(f"{row.get(m, 0):>8}" for m in mags)
        print(f"{name:<11}{cells}{sum(row.values()):>8}")
    if summary["tumour_types"]:
        print("tumour types: " + ", ".join(f"{k} {v}" for k, v in summary["tumour_types"].items()))
    for note in summary["notes"]:
        print(f"note: {note}")
    if summary["rejected"]:
        print(f"rejected {len(summary['rejected'])} files:")
        for item in summary["rejected"]:
            print(f"  {item['reason']}")
    return 0


# ----------------------------------------------------------------------------- train / resume


def config_from_args(args) -> TrainConfig:
    """The TrainConfig of ``train``'s options (the Train page fills the same dataclass).

    Only the options given are in ``args`` (their default is the dataclass's own); ``--split folds:K``
    is short for ``--split folds --fold K`` and ``--cv K`` for ``--split cv --cv-folds K``.
    """
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig) if hasattr(args, field.name)}
    split = values.get("split", TrainConfig.split)
    if args.cv:
        if split != "patient":
            raise ConfigError(f"--cv K makes its own patient-wise folds; leave --split out. Received: split={split}")
        if values.get("cv_folds", args.cv) != args.cv:
            raise ConfigError(f"--cv K sets cv_folds; leave --cv-folds out. Received: cv={args.cv}, "
                              f"cv_folds={values['cv_folds']}")
        values.update(split="cv", cv_folds=args.cv)
    elif split.startswith("folds:"):
        _, _, number = split.partition(":")
        try:
            fold = int(number) if number else values.get("fold", TrainConfig.fold)
        except ValueError:
            raise ConfigError(f"--split folds:K needs a fold number 1..5. Received: split={split}") from None
        if values.get("fold", fold) != fold:
            raise ConfigError(f"--split folds:K and --fold name different folds. Received: split={split}, "
                              f"fold={values['fold']}")
        values.update(split="folds", fold=fold)
    return TrainConfig(**values).validate()


class _Bar:
    """Training progress on stderr, fed by progress events.

    On a terminal: one bar redrawn in place (``\\r``). Otherwise (a log file, e.g. the app's training
    job writing ``train.log``, or a pipe): plain lines, one when the stage or epoch changes and at
    most one every ``interval_s`` seconds in between.
    """

    def __init__(self, stream=None, interval_s: float = 30.0, clock=time.monotonic):
        self.stream = stream or sys.stderr
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval_s = interval_s
        self.clock = clock
        self.last = ""
        self.last_step = None
        self.last_time = None

    def __call__(self, event: dict) -> None:
        if event.get("stage") == "estimate":  # a line of its own, kept above the bar
            self.stream.write(("\n" if self.last else "") + event.get("message", "") + "\n")
            self.stream.flush()
            self.last = ""
            return
        total = max(event.get("total_epochs") or 1, 1)
        done = event.get("epochs_done", 0)
        batches = event.get("batches") or 0
        if event.get("stage") == "caching" and batches:  # before the epochs: the cache build's own fraction
            fraction = min(event.get("batch", 0) / batches, 1.0)
        else:
            fraction = min((done + (event.get("batch", 0) / batches if batches else 0)) / total, 1.0)
        eta = event.get("eta_s")
        eta_text = f" ETA {int(eta // 60)}m{int(eta % 60):02d}s" if eta is not None else ""
        if not self.interactive:
            step = (event.get("stage"), event.get("epoch"), done)
            now = self.clock()
            if step != self.last_step or self.last_time is None or now - self.last_time >= self.interval_s:
                self.stream.write(f"progress {fraction:4.0%} {event.get('message', '')}{eta_text}\n")
                self.stream.flush()
                self.last_step, self.last_time = step, now
            return
        filled = int(fraction * 30)
        line = f"[{'#' * filled}{'.' * (30 - filled)}] {fraction:4.0%} {event.get('message', '')}{eta_text}"
        if line != self.last:
            self.stream.write("\r" + line[:120].ljust(120))
            self.stream.flush()
            self.last = line

    def close(self) -> None:
        if self.interactive and self.last:
            self.stream.write("\n")
            self.stream.flush()


def _audited(folder: Path, quiet: bool, train) -> str:
    """``train(listener)`` (a run or an experiment) with a progress bar; the audit log gets its start and outcome."""
    from breakhis_core.lab import audit
    from breakhis_core.errors import JobError

    bar = None if quiet else _Bar()
    audit.record_training(folder, "started")
    try:
        status = train(bar)
    except JobError as exc:  # another process is training this run: this attempt changed nothing
        audit.record_training(folder, "refused", error=str(exc))
        raise
    except BaseException as exc:
        audit.record_training(folder, RunStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if bar is not None:
            bar.close()
    audit.record_training(folder, status)
    return status


def _run(run_dir: Path, quiet: bool) -> int:
    """Train or resume ``run_dir``; prints the run directory last."""
    from breakhis_core.training.train import run_training

    status = _audited(run_dir, quiet, lambda bar: run_training(run_dir, listener=bar))
    if status == RunStatus.DONE:
        from breakhis_core.runs.registry import load_run

        print("\n".join(_learning_lines([load_run(run_dir)])))
    print(str(run_dir))
    return 0 if status == RunStatus.DONE else 3


def _learning_lines(runs) -> list[str]:
    """One line per model of ``runs`` (``registry.Run``): its learning-check state (``LearningStatus.text``)."""
    from breakhis_core.runs.registry import model_id

    return [f"learning check {model_id(run, stage)}: {run.learning(stage).text}"
            for run in runs for stage in reversed(STAGES) if stage in run.models]


def _run_multiworker(run_dir: Path, config: TrainConfig, quiet: bool) -> int:
    """One worker of a multi-worker run, supervised (``workers.py``); the chief alone writes the audit log."""
    from breakhis_core.lab import audit
    from breakhis_core.training.distribute import multiworker_task
    from breakhis_core.training.workers import supervise

    task = multiworker_task()
    if task.is_chief:
        audit.record_training(run_dir, "started", worker=task.name)
    outcome = supervise(run_dir, task, config.peer_timeout_s, None if quiet else sys.stderr)
    if task.is_chief:
        audit.record_training(run_dir, outcome.status, worker=task.name, **({"error": outcome.message} if outcome.message else {}))
    if outcome.message:
        print(("error: " if outcome.status == RunStatus.FAILED else "") + outcome.message, file=sys.stderr)
    print(str(run_dir))
    return outcome.exit_code


def _run_experiment(exp_dir: Path, quiet: bool) -> int:
    """Train or resume every fold of a cross-validation experiment, then print its pooled results."""
    from breakhis_core.training.crossval import evaluate_experiment, load_experiment, run_experiment

    status = _audited(exp_dir, quiet, lambda bar: run_experiment(exp_dir, listener=bar))
    if status == RunStatus.DONE:
        print(_experiment_text(evaluate_experiment(exp_dir)))
        print("\n".join(_learning_lines(load_experiment(exp_dir).runs())))
    print(str(exp_dir))
    return 0 if status == RunStatus.DONE else 3


def cmd_train(args) -> int:
    from breakhis_core.training.distribute import multiworker_task
    from breakhis_core.lab.paths import runs_dir
    from breakhis_core.training.setup import prepare_run

    if args.train_out is not None:
        raise ConfigError("train writes its run into the runs folder: name it with --runs FOLDER (--out names the "
                          f"folder a command writes its results into: predict, predict-slide, models export). "
                          f"Received: --out {args.train_out}")
    config = config_from_args(args)
    runs = runs_dir() if args.runs is None else args.runs
    if config.split == "cv":
        from breakhis_core.training.crossval import prepare_experiment

        return _run_experiment(prepare_experiment(config, runs, args.final_model), args.quiet)
    if config.strategy != "multiworker":
        return _run(prepare_run(config, runs, args.run_name), args.quiet)
    if not args.run_name:
        raise ConfigError("--strategy multiworker needs --run-name NAME (the same on every worker), so that all "
                          "workers join one run. Received: run_name=None")
    task = multiworker_task()
    run_dir = prepare_run(config, runs, args.run_name) if task.is_chief else Path(runs) / args.run_name
    return _run_multiworker(run_dir, config, args.quiet)


def _find_experiment(ref: str, runs):
    """The experiment ``ref`` names, or None when it names none (then it may be a run)."""
    from breakhis_core.training.crossval import load_experiment
    from breakhis_core.errors import RunNotFoundError

    try:
        return load_experiment(ref, runs)
    except RunNotFoundError:
        return None


def cmd_resume(args) -> int:
    from breakhis_core.runs.registry import load_run

    experiment = _find_experiment(args.run, args.runs)
    if experiment is not None:
        return _run_experiment(experiment.path, args.quiet)
    run = load_run(args.run, args.runs)
    if run.config is not None and run.config.strategy == "multiworker":
        return _run_multiworker(run.path, run.config, args.quiet)
    return _run(run.path, args.quiet)


# ----------------------------------------------------------------------------- evaluate / runs / card


def cmd_evaluate(args) -> int:
    from breakhis_core.data.splits import Split
    from breakhis_core.data.arrays import load_arrays
    from breakhis_core.models.loading import load_model
    from breakhis_core.runs.registry import load_run
    from breakhis_core.evaluation.run_evaluation import evaluate_run
    from breakhis_core.runs.rundir import RunDir
    from breakhis_core.data.stain import get_normalizer

    experiment = _find_experiment(args.run, args.runs)
    if experiment is not None:
        from breakhis_core.training.crossval import evaluate_experiment

        result = evaluate_experiment(experiment.path)
        if args.json:
            _print_json(result)
        else:
            print(_experiment_text(result))
            print("\n".join(_learning_lines(experiment.runs())))
        return 0
    run = load_run(args.run, args.runs)
    if run.config is None or not RunDir(run.path).split_file.is_file():
        raise ConfigError(f"run has no test split to evaluate on (imported model?). Received: run={args.run}")
    if not run.models:
        raise ConfigError(f"run has no trained model yet (status {run.status}). Received: run={args.run}")
    split_info = run.info.get("split", {})
    split = Split.load_csv(RunDir(run.path).split_file, split_info.get("protocol", run.config.split),
                           bool(split_info.get("leaky")), run.config.group_by)
    test = load_arrays(split.parts["test"], run.config.input_size, get_normalizer(run.config.stain_norm))
    if len(test.images) == 0:
        raise ConfigError(f"the test split of this run holds no readable image. Received: run={args.run}")
    models = {stage: load_model(path) for stage, path in run.models.items()}
    metrics = evaluate_run(run.path, run.config, models, test)
    if args.json:
        _print_json(metrics)
        return 0
    protocol = metrics["protocol"] + (" (image-level, LEAKY: patients in several splits)" if metrics["leaky"] else "")
    print(f"run {run.run_id}: test split, protocol {protocol}, {len(test.records)} images")
    for stage, m in metrics["models"].items():
        print(f"\n{stage}")
        print(_metrics_table(m))
    return 0


def _metrics_table(m: dict) -> str:
    from breakhis_core.evaluation.metrics import METRIC_NAMES, format_metric

    groups = {"all": m["overall"], **{f"{k}X": v for k, v in m.get("by_magnification", {}).items()}}
    lines = [f"  {'metric':<26}" + "".join(f"{g:>24}" for g in groups)]
    for name in METRIC_NAMES:
        lines.append(f"  {name:<26}" + "".join(f"{format_metric(s[name]):>24}" for s in groups.values()))
    lines.append(f"  {'confusion [[tn,fp],[fn,tp]]':<26}" + "".join(f"{str(s['confusion_matrix']):>24}" for s in groups.values()))
    return "\n".join(lines)


def _experiment_text(result: dict) -> str:
    """Pooled out-of-fold metrics, the operating point and calibration, and mean ± sd across folds, as text."""
    from breakhis_core.evaluation.metrics import METRIC_NAMES, format_metric

    patients = result["patients"]
    lines = [f"experiment {result['experiment_id']}: {result['n_folds']}-fold patient-wise cross-validation "
             f"(by {result['group_by']}); {patients['predicted']} of {patients['in_folds']} patients predicted "
             f"{'exactly once' if patients['each_once'] else 'NOT exactly once'}"]
    for stage, pooled in result["pooled"].items():
        lines += ["", f"{stage}: pooled out-of-fold (threshold {DEFAULT_THRESHOLD:g}, raw probabilities)", _metrics_table(pooled),
                  f"  across folds (mean ± sd of {result['n_folds']} folds):"]
        for name in METRIC_NAMES:
            entry = result["across_folds"][stage][name]
            if entry["mean"] is not None:
                sd = f" ± {entry['sd']:.3f}" if entry["sd"] is not None else ""
                lines.append(f"    {name:<26}{entry['mean']:.3f}{sd} (n={entry['n']})")
        point = result["pooled_operating_point"][stage]
        lines.append("  each fold's calibrated threshold: " + ", ".join(
            f"{name} {format_metric(point[name])}" for name in ("sensitivity", "specificity")))
        calibration = result["pooled_calibration"][stage]
        lines.append(f"  calibration: ECE {calibration['ece_before']:.3f} -> {calibration['ece_after']:.3f}, "
                     f"Brier {calibration['brier_before']:.3f} -> {calibration['brier_after']:.3f}")
    return "\n".join(lines)


def cmd_runs(args) -> int:
    from breakhis_core.runs.registry import list_runs

    runs = list_runs(args.runs)
    rows = [run.headline() for run in runs]
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("no runs yet: train one with `breakhis train DATA` or import a model with `breakhis models import FILE`")
        return 0
    keys = list(rows[0].keys())
    print("\t".join(keys))
    for row in rows:
        print("\t".join("" if row.get(k) is None else str(row.get(k)) for k in keys))
    return 0


def cmd_cache(args) -> int:
    from breakhis_core.files import format_bytes
    from breakhis_core.training.cleanup import cache_usage, clear_cache

    folder, parts, size = cache_usage(args.runs)
    freed = clear_cache(args.runs) if args.clear else 0
    if args.json:
        _print_json({"folder": str(folder), "parts": parts, "bytes": size, "deleted": args.clear, "bytes_freed": freed})
    elif args.clear:
        print(f"deleted {parts} training cache part(s) in {folder}: {format_bytes(freed)} freed")
    else:
        print(f"training cache {folder}: {parts} part(s), {format_bytes(size)} (delete with --clear; rebuilt when needed)")
    return 0


def cmd_weights(args) -> int:
    from breakhis_core.models.weights import check_notop_weights, file_sha256, install_imagenet_weights

    backbone = get_backbone(args.backbone)
    if args.action == "check":
        check_notop_weights(args.file, backbone)
        print(f"{args.file}: {backbone.label} no-top weights (sha256 {file_sha256(args.file)})")
        return 0
    target = install_imagenet_weights(args.file, backbone=backbone)
    print(f"installed {args.file} as {target}; --weights imagenet now works offline")
    return 0


def cmd_card(args) -> int:
    from breakhis_core.runs.registry import build_card, card_markdown, load_run

    card = build_card(load_run(args.run, args.runs))
    if args.json:
        _print_json(card)
    else:
        print(card_markdown(card))
    return 0


# ----------------------------------------------------------------------------- models


def add_models_commands(sub) -> None:
    """``breakhis models list|import|export|activate|delete``: what the Models page does."""
    models = sub.add_parser("models", help="the trained and imported models: list, import, export, set the active "
                            "model, delete").add_subparsers(dest="models_command", required=True, parser_class=_Parser)

    p = models.add_parser("list", help="every model (RUN:STAGE) with its status, data and test accuracy; * = active")
    add_runs_option(p)
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=cmd_models_list)

    p = models.add_parser("import", help="add a trained .keras model file (checked and loaded in Keras safe mode)")
    p.add_argument("file", help="the .keras file")
    p.add_argument("--name", default=None, help="a name for it (default: the file's name)")
    p.add_argument("--activate", action="store_true", help="also make it the active model")
    add_runs_option(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_models_import, tensorflow=True)

    p = models.add_parser("export", help="write a run (its models, card and metrics) as RUN.zip into --out")
    p.add_argument("run", help="run id")
    p.add_argument("--out", default=".", help="folder to write RUN.zip into (default: the current folder)")
    add_runs_option(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_models_export)

    p = models.add_parser("activate", help="make a model the active one (used by the app and by predict without "
                          "--model)")
    p.add_argument("model", help="RUN[:frozen|:finetuned] (default stage: the run's best model)")
    p.add_argument("--yes", action="store_true", help="activate a model that did not learn or whose learning check is "
                   "undetermined (without it such a model is refused, with its state)")
    add_runs_option(p)
    p.set_defaults(func=cmd_models_activate)

    p = models.add_parser("delete", help="delete a run and its models, with the training cache only it used")
    p.add_argument("run", help="run id")
    p.add_argument("--yes", action="store_true", help="confirm: the run's files are deleted for good")
    add_runs_option(p)
    p.set_defaults(func=cmd_models_delete)


def cmd_models_list(args) -> int:
    from breakhis_core.runs.default_model import get_default
    from breakhis_core.runs.registry import list_runs, model_id, usable_models

    active = get_default(args.runs)
    active_id = model_id(*active) if active else None
    rows = []
    for run, stage in usable_models(list_runs(args.runs)):
        headline = run.headline()
        rows.append({"model": model_id(run, stage), "active": model_id(run, stage) == active_id,
                     "status": run.status, "date": headline["date"], "data": headline["data"],
                     "magnification": headline["magnification"], "split": headline["split"],
                     "image_accuracy": headline["image_accuracy"] if headline["model"] == stage else None,
                     "learning_check": run.learning(stage).to_dict()})
    if args.json:
        _print_json(rows)
    elif not rows:
        print("no models yet: train one with `breakhis train DATA` or import one with `breakhis models import FILE`")
    else:
        for row in rows:
            accuracy = "" if row["image_accuracy"] is None else f" accuracy {row['image_accuracy']:.3f}"
            warning = f" — learning check: {row['learning_check']['text']}"
            print(f"{'*' if row['active'] else ' '} {row['model']}  {row['status']}  {row['date']}  data {row['data']}"
                  f"{accuracy}{warning}")
    return 0


def cmd_models_import(args) -> int:
    from breakhis_core.runs.default_model import set_default
    from breakhis_core.runs.registry import model_id
    from breakhis_core.runs.transfer import import_model

    run = import_model(args.file, args.runs, name=args.name)
    if args.activate:
        set_default(run.run_id, run.best_stage, args.runs)
    result = {"model": model_id(run, run.best_stage), "folder": str(run.path), "active": args.activate}
    if args.json:
        _print_json(result)
    else:
        print(f"imported {result['model']} into {run.path}" + (" (now the active model)" if args.activate else ""))
    return 0


def cmd_models_export(args) -> int:
    from breakhis_core.files import format_bytes, write_bytes_atomic
    from breakhis_core.runs.registry import load_run
    from breakhis_core.runs.transfer import export_run

    run = load_run(args.run, args.runs)
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{run.run_id}.zip"
    data = export_run(run)
    write_bytes_atomic(target, data)
    if args.json:
        _print_json({"run": run.run_id, "file": str(target), "bytes": len(data)})
    else:
        print(f"exported {run.run_id} to {target} ({format_bytes(len(data))})")
    return 0


def cmd_models_activate(args) -> int:
    from breakhis_core.runs.default_model import set_default
    from breakhis_core.runs.registry import model_id, resolve_model

    run, stage = resolve_model(args.model, args.runs)
    learning = run.learning(stage)
    if learning.needs_confirmation and not args.yes:
        raise ConfigError(f"{model_id(run, stage)}: learning check {learning.text}. Activate it anyway with --yes. "
                          f"Received: model={args.model}")
    set_default(run.run_id, stage, args.runs)
    warning = f" (learning check: {learning.text})" if learning.needs_confirmation else ""
    print(f"{model_id(run, stage)} is now the active model{warning}")
    return 0


def cmd_models_delete(args) -> int:
    from breakhis_core.training.cleanup import delete_run
    from breakhis_core.files import format_bytes
    from breakhis_core.runs.registry import load_run

    run = load_run(args.run, args.runs)
    if not args.yes:
        raise ConfigError(f"deleting removes the run's models and files for good: add --yes to confirm. "
                          f"Received: models delete {run.run_id}")
    freed = delete_run(run.run_id, args.runs)
    print(f"deleted {run.run_id}" + (f" and {format_bytes(freed)} of training cache only it used" if freed else ""))
    return 0


# ----------------------------------------------------------------------------- slide-info


def cmd_slide_info(args) -> int:
    from breakhis_core.errors import SlideError
    from breakhis_core.slides.wsi import read_slide_info

    infos, errors = [], []
    for slide in args.slides:
        try:
            infos.append(read_slide_info(slide).to_dict())
        except BreakHisError as exc:
            errors.append({"slide": slide, "reason": str(exc)})
            print(f"skipped: {exc}", file=sys.stderr)
    if args.json:
        _print_json({"slides": infos, "errors": errors})
    for info in [] if args.json else infos:
        mpp = (f"{info['mpp_x']:.4g} × {info['mpp_y']:.4g} µm/px ({info['mpp_source']})" if info["mpp_x"] is not None
               else "not recorded (give it with predict-slide --mpp)")
        print(f"{info['name']}: {info['vendor']}, {info['width']:,} × {info['height']:,} px, {mpp}"
              + (f", objective {info['objective_power']}×" if info["objective_power"] else ""))
        for level, ((width, height), downsample) in enumerate(zip(info["level_dimensions"], info["level_downsamples"])):
            print(f"  level {level}: {width:,} × {height:,} px (downsample {downsample:g})")
    if not infos:
        raise SlideError(f"none of the {len(args.slides)} slides could be read: {errors[0]['reason']}")
    return 0


# ----------------------------------------------------------------------------- predict


def _predictors(args):
    """A ModelRouter for ``--model`` (one run, optional :stage) or, without it, the registry's models."""
    from breakhis_core.inference.predict import ModelRouter
    from breakhis_core.runs.registry import resolve_model

    if args.model is None:
        return ModelRouter.from_registry(args.runs)
    return ModelRouter.from_run(*resolve_model(args.model, args.runs))


def _read_uploads(files) -> tuple[list, list, list[str]]:
    """The image files and zip archives named on the command line (folders: every image and zip below them), read
    in memory as ``uploads.Upload``; the files that cannot be read become ``uploads.Skipped`` with their reason.
    The third list holds every label (read or not) in the order the files and zip members came."""
    from breakhis_core.data import uploads
    from breakhis_core.data.images import display_name, read_image_bytes
    from breakhis_core.errors import ImageDecodeError

    read, skipped, labels = [], [], []
    budget = uploads.Budget()
    for file in _expand_folders(files):
        path = Path(file)
        if path.suffix.lower() == ".zip" and not path.is_dir():
            members, refused = uploads.read_zip_file(path, budget)
            read += members
            skipped += refused
            labels += [item.label for item in refused + members]  # a zip's refusals before its members
            continue
        label = display_name(path.name)
        labels.append(label)
        try:
            read.append(uploads.Upload(path.name, label, read_image_bytes(path)))
        except ImageDecodeError as exc:
            skipped.append(uploads.Skipped(label, str(exc).removeprefix(f"{label}: ")))
    return read, skipped, labels


def _expand_folders(files) -> list[Path]:
    """The files named, each folder replaced by the image files and zips below it (sorted by path)."""
    from breakhis_core.data.images import IMAGE_SUFFIXES

    expanded = []
    for file in files:
        path = Path(file)
        if path.is_dir():
            expanded += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (*IMAGE_SUFFIXES, ".zip"))
        else:
            expanded.append(path)
    return expanded


def cmd_predict(args) -> int:
    from breakhis_core.errors import ImageDecodeError
    from breakhis_core.inference.outputs import prediction_table, served_summary
    from breakhis_core.inference.predict import normalize_magnification
    from breakhis_core.data.uploads import decode_uploads
    from breakhis_core.inference.service import DiagnosisOptions, DiagnosisService

    cam = None if args.cam == "none" else args.cam
    normalize_magnification(args.magnification)  # a bad --magnification is a usage error, before any work
    if args.pdf:  # so is a PDF that cannot be written
        from breakhis_core.errors import ReportError
        from breakhis_core.inference.report import pdf_unavailable

        if not args.out:
            raise ConfigError("--pdf writes report.pdf into the --out folder. Received: --pdf without --out")
        if pdf_unavailable():
            raise ReportError(pdf_unavailable())
    service = DiagnosisService(_predictors(args), "cli", runs_root=args.runs)
    read, skipped, labels = _read_uploads(args.files)
    inputs, undecodable = decode_uploads(read)
    bar = None if args.quiet or args.json else _CountBar("images")
    diagnosis = service.diagnose(inputs, [args.magnification] * len(inputs), DiagnosisOptions(args.tta, cam, args.tile),
                                 on_progress=bar)
    if bar is not None:
        bar.close()
    order = {label: index for index, label in reversed(list(enumerate(labels)))}  # errors in the order given
    errors = []
    for item in sorted(skipped + undecodable + diagnosis.skipped, key=lambda item: order.get(item.label, len(order))):
        reason = f"{item.label}: {item.reason}"
        errors.append({"file": item.label, "reason": reason})
        print(f"skipped: {reason}", file=sys.stderr)
    if not diagnosis.predictions:
        raise ImageDecodeError(f"none of the {len(args.files)} files could be used: {errors[0]['reason'] if errors else ''}")
    predictions, images = diagnosis.predictions, [item.image for item in diagnosis.inputs]
    cases = diagnosis.cases(by=args.case_by)
    result = {
        "predictions": [p.to_dict() for p in predictions],
        "cases": [c.to_dict() for c in cases],
        "errors": errors,
        "notice": NOTICE,
    }
    table = prediction_table(predictions, cases)
    if args.out:
        _write_prediction_outputs(Path(args.out), images, predictions, cases, result, table, args.pdf)
    if args.json:
        _print_json(result)
    else:
        print(table, end="")
        for case in cases:
            print(f"case {case.case_id}: {case.verdict} ({case.rule})")
        for warning in served_summary(predictions)["warnings"]:
            print(f"warning: {warning}")
        print(result["notice"])
    return 0


def _write_prediction_outputs(out: Path, images, predictions, cases, result, table: str, pdf: bool) -> None:
    """predictions.csv (``table``), predictions.json (``result``), one overlay PNG per image with a heat map,
    report.html (and report.pdf)."""
    from breakhis_core.files import write_bytes_atomic, write_json_atomic, write_text_atomic
    from breakhis_core.data.images import encode_png
    from breakhis_core.inference.outputs import heatmap_overlays, prediction_report, served_summary
    from breakhis_core.inference.report import pdf_report

    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "predictions.csv", table)
    write_json_atomic(out / "predictions.json", result)
    overlays = heatmap_overlays(images, predictions)
    for index, (prediction, layer) in enumerate(zip(predictions, overlays)):
        if layer is not None:
            stem = Path(prediction.name).stem.replace("/", "_")[:100] or f"image{index}"
            write_bytes_atomic(out / f"{index:03d}_{stem}_{prediction.cam_method}.png", encode_png(layer))
    page = prediction_report(predictions, cases, images, overlays, served_summary(predictions))
    write_text_atomic(out / "report.html", page)
    if pdf:
        write_bytes_atomic(out / "report.pdf", pdf_report(page))


# ----------------------------------------------------------------------------- predict-slide


def cmd_predict_slide(args) -> int:
    from breakhis_core.errors import SlideError
    from breakhis_core.slides.predict import analyze_slide, model_for_slides
    from breakhis_core.slides.export import coverage_text, write_slide_outputs, write_slide_report

    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1. Received: batch_size={args.batch_size}")
    if args.tissue_threshold is not None and not 0 <= args.tissue_threshold <= 1:
        raise ConfigError(f"--tissue-threshold is a saturation in [0, 1]. Received: tissue_threshold={args.tissue_threshold}")
    if args.mpp is not None and not args.mpp > 0:
        raise ConfigError(f"--mpp must be > 0 µm per pixel. Received: mpp={args.mpp}")
    predictor, field = model_for_slides(args.model, args.runs, args.mag, args.batch_size)
    summaries, errors, used = [], [], set()
    for slide in args.slides:
        bar = None if args.quiet or args.json else _SlideBar(Path(slide).name)
        try:
            result = analyze_slide(slide, predictor, field, mpp=args.mpp, tissue_threshold=args.tissue_threshold,
                                   progress=bar)
        except BreakHisError as exc:
            if bar is not None:
                bar.close()
            errors.append({"slide": slide, "reason": str(exc)})
            print(f"skipped: {exc}", file=sys.stderr)
            continue
        if bar is not None:
            bar.close()
        summary = result.summary()
        if args.out:
            folder = write_slide_outputs(result, Path(args.out) / _slide_folder_name(slide, used))
            write_slide_report(folder)
            summary["folder"] = str(folder)
        summaries.append(summary)
        if not args.json:
            print(f"{result.info.name}: {result.verdict.verdict} ({result.verdict.rule}); "
                  f"{len(result.tiles)} tissue tiles in {result.seconds:.1f} s; {coverage_text(summary)}; model "
                  f"{result.model_id}, learning check: {result.learning.text}")
            if result.types is not None:
                print(f"{result.info.name}: tumour types (most probable per tile): {result.types.text()}")
            if result.verdict.flag:
                print(f"{result.info.name}: review this verdict: {result.verdict.flag}")
    if not summaries:
        raise SlideError(f"none of the {len(args.slides)} slides could be read: {errors[0]['reason']}")
    if args.json:
        _print_json({"slides": summaries, "errors": errors, "notice": summaries[0]["notice"]})
    else:
        if predictor.learning.warning(predictor.model_id):
            print(f"warning: {predictor.learning.warning(predictor.model_id)}")
        print(summaries[0]["notice"])
    return 0


def _slide_folder_name(slide: str, used: set[str]) -> str:
    """The slide's file name without suffix (numbered when taken), added to ``used``."""
    stem = Path(slide).name.split(".")[0] or "slide"
    name, index = stem, 2
    while name in used:
        name, index = f"{stem}-{index}", index + 1
    used.add(name)
    return name


class _CountBar(_Bar):
    """Progress of a count of items (``predict``'s images): a bar redrawn in place on a terminal, else one line
    per step."""

    def __init__(self, items: str, stream=None):
        super().__init__(stream)
        self.items = items

    def __call__(self, done: int, total: int) -> None:
        fraction = done / total if total else 1.0
        text = f"{done} of {total} {self.items}"
        if self.interactive:
            filled = int(fraction * 30)
            self.last = f"[{'#' * filled}{'.' * (30 - filled)}] {fraction:4.0%} {text}"
            self.stream.write("\r" + self.last[:120].ljust(120))
        else:
            self.stream.write(f"progress {fraction:4.0%} {text}\n")
        self.stream.flush()


class _SlideBar(_Bar):
    """The progress bar fed by ``slide.SlideProgress``."""

    def __init__(self, name: str, stream=None):
        super().__init__(stream)
        self.name = name

    def __call__(self, progress) -> None:
        fraction = progress.done / progress.total if progress.total else 1.0
        filled = int(fraction * 30)
        line = f"[{'#' * filled}{'.' * (30 - filled)}] {fraction:4.0%} {self.name}: {progress.message}"
        if line != self.last:
            self.stream.write("\r" + line[:120].ljust(120))
            self.stream.flush()
            self.last = line


# ----------------------------------------------------------------------------- parser


TRAIN_OPTION_ALIASES = {
    "magnification": ("--mag",),
    "lr_frozen": ("--lr",),
    "early_stopping_patience": ("--early-stopping",),
    "peer_timeout_s": ("--peer-timeout",),
}
"""Earlier spellings of ``train`` options, still accepted (``--help`` shows the field's name first)."""

TRAIN_POSITIONAL = "data"
"""The one TrainConfig field given as ``train``'s positional argument rather than as an option."""


def train_option(name: str) -> str:
    """The ``train`` option of TrainConfig field ``name``: the name with dashes (``lr_frozen`` -> ``--lr-frozen``)."""
    return "--" + name.replace("_", "-")


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, derived from the dataclass: ``--field-name`` (plus its old spellings),
    the type of its annotation, its help and choices (``config.option``). Options not given stay out of the
    parsed namespace, so the dataclass's defaults apply.

    ``bool`` fields take ``--field`` / ``--no-field``. ``--split`` also takes ``folds:K``, so its values are
    checked by ``TrainConfig.validate``.
    """
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        help_text, choices = field.metadata["help"], field.metadata["choices"]
        if field.default not in ("", None):
            help_text += f" (default: {field.default})"
        help_text = help_text.replace("%", "%%")
        if field.name == TRAIN_POSITIONAL:
            parser.add_argument(field.name, help=help_text)
            continue
        flags = (train_option(field.name), *TRAIN_OPTION_ALIASES.get(field.name, ()))
        kind = next(t for t in (*typing.get_args(hints[field.name]), hints[field.name]) if t is not type(None))
        if kind is bool:
            parser.add_argument(*flags, dest=field.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        elif field.name == "split":
            parser.add_argument(*flags, dest=field.name, default=argparse.SUPPRESS, help=help_text,
                                metavar="{" + ",".join(choices) + ",folds:K}")
        else:
            parser.add_argument(*flags, dest=field.name, type=kind, choices=choices, default=argparse.SUPPRESS,
                                help=help_text)


RUNS_HELP = "folder of the runs and models (default: $BREAKHIS_RUNS, else runs/ in the app home)"


def add_runs_option(parser: argparse.ArgumentParser, *aliases: str) -> None:
    """``--runs``: the runs folder, the same option on every subcommand (``train`` also takes ``--out``)."""
    parser.add_argument("--runs", *aliases, dest="runs", default=None, help=RUNS_HELP)


def build_parser() -> argparse.ArgumentParser:
    from breakhis_core import __version__

    parser = _Parser(prog="breakhis", description="Benign or malignant breast histopathology (BreakHis-style "
                     f"microscopy and whole slides) with VGG16 (or another ImageNet backbone) and Grad-CAM; {INTENDED_USE} "
                     "(also run as `python -m breakhis_core`).",
                     epilog="exit codes:\n" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items()),
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"breakhis {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help=f"show TensorFlow's start-up lines on stderr (also: {runtime.VERBOSE_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("scan", help="list images, patients and rejected files of a folder tree or manifest CSV")
    p.add_argument("data", help="a BreakHis-style folder or a manifest CSV (path,label[,patient][,magnification])")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("train", help="train a model (both stages) into a new run folder; its last line is that folder")
    add_config_options(p)
    add_runs_option(p)
    p.add_argument("--out", dest="train_out", default=None, help=argparse.SUPPRESS)  # refused with the reason
    p.add_argument("--no-cache", dest="cache", action="store_const", const="off", default=argparse.SUPPRESS,
                   help="train on the images directly, without the activation cache (same as --cache off)")
    p.add_argument("--run-name", default=None, help="the run's folder name under --runs (default: a time stamp); "
                   "with --strategy multiworker the same NAME on every worker")
    p.add_argument("--cv", type=int, default=0, metavar="K",
                   help="K-fold patient-wise cross-validation: K runs, each patient tested once by a model that did "
                        "not train on it, metrics pooled over all patients; same as --split cv --cv-folds K")
    p.add_argument("--final-model", action="store_true",
                   help="with --cv: also train a final model on all patients (its estimate: the CV figures)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train, tensorflow=True)

    p = sub.add_parser("resume", help="continue an interrupted or queued run (or experiment) from its last checkpoint")
    p.add_argument("run", help="run or experiment id, or its directory")
    add_runs_option(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_resume, tensorflow=True)

    p = sub.add_parser("evaluate", help="test-split metrics of both models of a run (or pooled out-of-fold "
                       "metrics of a cross-validation experiment), with bootstrap CIs")
    p.add_argument("run", help="run or experiment id, or its directory")
    add_runs_option(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_evaluate, tensorflow=True)

    p = sub.add_parser("runs", help="list training runs with their status and test accuracy")
    add_runs_option(p)
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("cache", help="disk space used by the training cache (kept to speed up later training); "
                       "--clear deletes it")
    add_runs_option(p)
    p.add_argument("--clear", action="store_true", help="delete every cache part (refused while training runs)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("weights", help="check a backbone's no-top weights file, or install it as its offline ImageNet "
                       "weights (into $KERAS_HOME/models, default ~/.keras/models)")
    p.add_argument("action", choices=["check", "install"])
    p.add_argument("file", help="the weights file, e.g. vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, choices=BACKBONE_NAMES,
                   help="the network the file is for (default: %(default)s)")
    p.set_defaults(func=cmd_weights)

    p = sub.add_parser("card", help="print a run's model card (markdown, or --json)")
    p.add_argument("run", help="run id, or its folder")
    add_runs_option(p)
    p.add_argument("--json", action="store_true", help="print the card as JSON")
    p.set_defaults(func=cmd_card)

    add_models_commands(sub)

    p = sub.add_parser("predict", help="diagnose image files: probabilities, verdicts, heat maps, case verdicts")
    p.add_argument("files", nargs="+", help="image files (PNG, JPEG, TIFF, BMP), zips of them, or folders (every "
                   "image and zip below them)")
    p.add_argument("--model", default=None, help="RUN[:frozen|:finetuned] (default: the registry's active model, "
                   "plus single-magnification models for their magnification)")
    add_runs_option(p)
    p.add_argument("--magnification", default=None, help="40|100|200|400 for all files (default: from BreakHis names)")
    p.add_argument("--cam", default="gradcam", choices=["gradcam", "gradcam++", "scorecam", "none"])
    p.add_argument("--tta", action="store_true", help="average the 8 flips/rotations; flags unstable verdicts")
    p.add_argument("--tile", action="store_true", help="tile images much larger than the BreakHis field of view")
    p.add_argument("--case-by", default="slide", choices=["slide", "upload"], help="group cases by slide id or as one")
    p.add_argument("--out", default=None, help="folder to write predictions.csv, predictions.json, the heat-map "
                   "images and report.html into")
    p.add_argument("--pdf", action="store_true", help="also write report.pdf into --out (needs the pdf extra)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as JSON (no table, no progress bar)")
    p.set_defaults(func=cmd_predict, tensorflow=True)

    p = sub.add_parser("predict-slide", help="whole-slide images: tissue tiles at the training field, heat map, verdict")
    p.add_argument("slides", nargs="+", help="slide files OpenSlide reads (.svs, .ndpi, .mrxs, pyramidal .tiff, ...)")
    p.add_argument("--model", default=None, help="RUN[:frozen|:finetuned] (default: the registry's active model)")
    add_runs_option(p)
    p.add_argument("--magnification", "--mag", dest="mag", default=None, choices=MAGNIFICATION_CHOICES[1:],
                   help="BreakHis field to match for a model trained on all magnifications (default 40)")
    p.add_argument("--mpp", type=float, default=None, help="µm per level-0 pixel, for slides whose metadata lacks it")
    p.add_argument("--tissue-threshold", type=float, default=None,
                   help="saturation threshold of the tissue mask in [0, 1] (default: Otsu's)")
    p.add_argument("--batch-size", type=int, default=None, help="tiles per forward pass")
    p.add_argument("--out", default=None, help="folder: one subfolder per slide with tiles.csv, tiles.geojson, "
                   "heatmap.png, summary.json, report.html")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_predict_slide, tensorflow=True)

    p = sub.add_parser("slide-info", help="what a whole-slide image holds: size, pyramid levels, µm per pixel, "
                       "scanner format; nothing is analysed")
    p.add_argument("slides", nargs="+", help="slide files OpenSlide reads (.svs, .ndpi, .mrxs, pyramidal .tiff, ...)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_slide_info)

    p = sub.add_parser("cases", help="stored cases: list, show one, export the reviewed ones as a data set")
    cases = p.add_subparsers(dest="cases_command", required=True, parser_class=_Parser)
    c = cases.add_parser("list", help="cases, newest first, with search and filters")
    c.add_argument("--search", default=None, help="text in the accession number or patient reference")
    c.add_argument("--status", default=None, choices=["open", "reviewed", "signed"])
    c.add_argument("--verdict", default=None, choices=["benign", "malignant"], help="the model's case verdict")
    c.add_argument("--reviewer", default=None, help="the reviewer's e-mail address")
    c.add_argument("--since", default=None, help="created on or after YYYY-MM-DD (UTC)")
    c.add_argument("--until", default=None, help="created on or before YYYY-MM-DD (UTC)")
    c.add_argument("--limit", type=int, default=500)
    c.set_defaults(func=cmd_cases_list)
    c = cases.add_parser("show", help="one case: prediction, review, sign-off, addenda, images")
    c.add_argument("case", help="accession number or case id")
    c.set_defaults(func=cmd_cases_show)
    c = cases.add_parser("export-dataset", help="reviewed cases as a labelled manifest CSV to train on "
                         "(last line: the manifest)")
    c.add_argument("--out", default=None, help="folder (default: RUNS/cases/datasets)")
    c.add_argument("--name", default=None, help="file name without .csv (default: reviewed-<UTC time>)")
    c.set_defaults(func=cmd_cases_export)
    for c in cases.choices.values():
        add_runs_option(c)
        c.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser("db", help="the case database ($BREAKHIS_DATABASE_URL or RUNS/cases/cases.db): upgrade its "
                       "schema, back it up, restore a backup")
    db = p.add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    c = db.add_parser("upgrade", help="run the schema migrations this program needs (back up first)")
    add_runs_option(c)
    for name, text in (("backup", "copy the SQLite database to the new file PATH while the app runs"),
                       ("restore", "replace the SQLite database's content with the backup PATH")):
        c = db.add_parser(name, help=text)
        c.add_argument("path")
        add_runs_option(c)
    p.set_defaults(func=cmd_db)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad usage or input, 1 internal error, 3 cancelled)."""
    from breakhis_core.lab.logs import setup_logging

    setup_logging()
    try:
        args = build_parser().parse_args(argv)
        paths.ensure_app_home()
        if args.verbose:
            os.environ[runtime.VERBOSE_ENV] = "1"
        if getattr(args, "tensorflow", False):
            runtime.load_tensorflow()  # before any other import of TensorFlow: keeps its start-up lines off stderr
        return args.func(args)
    except BreakHisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(RunStatus.INTERRUPTED, file=sys.stderr)
        return 130
    except Exception as exc:  # internal error: show the traceback for a bug report
        traceback.print_exc()
        print(f"internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
