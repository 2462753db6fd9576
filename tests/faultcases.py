"""Injected faults and hostile inputs, shared by the tests (``tests/test_faults.py``) and ``bench/faults.py``.

Each fault is a function ``fault(ctx)`` that injects one fault into the library or the CLI and
checks that nothing was lost and nothing let in; it raises :class:`NotSurvived` (an AssertionError)
with the reason when the system did not survive. Training runs a fault makes are registered with
``ctx.track`` as soon as they exist, so :func:`lost_runs` can count those not brought to "done". :func:`input_results` tries every file of the
generated corpora (``badfiles.py``) against the library, the upload reader and the CLI.

Reuse::

    sys.path.insert(0, "tests")
    from faultcases import FAULTS, Context, input_results, lost_runs
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import numpy as np

from badfiles import ERROR, ODD_NAMES, OK, corpus_cases, pattern, upload_cases

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO_ROOT.parent / "shared" / "breakhis_sample"
TINY_INPUT = 32


class NotSurvived(AssertionError):
    """Raised when a fault or an input was not handled as it must be."""


def check(condition, message: str) -> None:
    if not condition:
        raise NotSurvived(message)


@dataclass
class Context:
    """Scratch space and shared, lazily built resources of a fault run.

    Attributes:
        workdir: a folder the faults may fill (each fault takes a sub-folder of its own).
        sample_dir: the real BreakHis sample (37 PNGs).
        python: the interpreter for CLI subprocesses.
    """

    workdir: Path
    sample_dir: Path = SAMPLE_DIR
    python: str = sys.executable
    tracked: list = field(default_factory=list)
    _model_runs: Path | None = None

    def track(self, run_dir: Path, epochs_frozen: int, epochs_finetune: int) -> Path:
        """Register a training run that the fault must bring to "done" (see :func:`lost_runs`)."""
        self.tracked.append((Path(run_dir), epochs_frozen, epochs_finetune))
        return Path(run_dir)

    def folder(self, name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.workdir))
        return path

    def model_runs(self) -> Path:
        """A runs folder holding one imported tiny VGG16 (32×32, random weights) as its active model."""
        if self._model_runs is None:
            from breakhis_core.models.classifier import build_model
            from breakhis_core.runs.transfer import import_model

            root = self.folder("model-runs")
            build_model(TINY_INPUT, weights="none", seed=0).save(root.parent / "tiny.keras")
            import_model(root.parent / "tiny.keras", root, name="tiny")
            self._model_runs = root
        return self._model_runs

    def sleeper(self) -> str:
        """An executable that ignores its arguments and sleeps (a stand-in for ``python -m breakhis_core resume``)."""
        path = self.workdir / "sleeper.sh"
        if not path.exists():
            path.write_text("#!/bin/sh\nexec sleep 120\n")
            path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return str(path)


def tiny_train_config(data, **overrides):
    """The tests' tiny TrainConfig (32×32, random weights, CPU, batch 8, 1 + 1 epochs, the paper's recipe)."""
    from breakhis_core.config import TrainConfig

    values = dict(data=str(data), weights="none", input_size=TINY_INPUT, epochs_frozen=1, epochs_finetune=1,
                  batch_size=8, device="cpu", seed=0, recipe="paper")
    values.update(overrides)
    return TrainConfig(**values)


def cli_env() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO_ROOT)}


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def temp_files(run_dir: Path) -> list[Path]:
    """Temporary files of interrupted writes left in a run folder or its checkpoints."""
    found = []
    for folder in (run_dir, run_dir / "checkpoints"):
        if folder.is_dir():
            found += [p for p in folder.iterdir() if p.name.startswith(".tmp-") or (p.name.startswith(".") and p.name.endswith(".tmp"))]
    return found


def history_epochs(run_dir: Path, stage: str) -> list[int]:
    from breakhis_core.files import read_jsonl

    return [r["epoch"] for r in read_jsonl(run_dir / f"history_{stage}.jsonl")]


def run_lost(run_dir: Path, epochs_frozen: int, epochs_finetune: int) -> str | None:
    """Why a recovered run is not complete, or None when it is: status done, both models, metrics of
    both, epochs 1..N of each stage exactly once, no checkpoints or temporary files left."""
    from breakhis_core.runs.registry import load_run

    run = load_run(run_dir)
    if run.status != "done":
        return f"status {run.status} ({run.error})"
    if set(run.models) != {"frozen", "finetuned"}:
        return f"models {sorted(run.models)}"
    if set(((run.metrics or {}).get("models") or {})) != {"frozen", "finetuned"}:
        return "metrics of both models missing"
    for stage, epochs in (("frozen", epochs_frozen), ("finetuned", epochs_finetune)):
        if history_epochs(run_dir, stage) != list(range(1, epochs + 1)):
            return f"history_{stage} epochs {history_epochs(run_dir, stage)}"
    if (run_dir / "checkpoints").exists() or temp_files(run_dir):
        return "checkpoints or temporary files left"
    return None


def lost_runs(ctx: Context) -> list[tuple[Path, str]]:
    """The tracked runs that are not complete (see :func:`run_lost`), with the reason."""
    lost = []
    for run_dir, epochs_frozen, epochs_finetune in ctx.tracked:
        try:
            problem = run_lost(run_dir, epochs_frozen, epochs_finetune)
        except Exception as exc:  # e.g. the run folder is gone
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            lost.append((run_dir, problem))
    return lost


def check_complete(run_dir: Path, epochs_frozen: int, epochs_finetune: int) -> None:
    problem = run_lost(run_dir, epochs_frozen, epochs_finetune)
    check(problem is None, f"run {run_dir.name} not complete after recovery: {problem}")


# ----------------------------------------------------------------------------- training faults


def _kill_and_resume(ctx: Context, name: str, epochs: tuple[int, int], ready, **overrides) -> Path:
    """Train a prepared run with ``python -m breakhis_core resume RUN`` (as a job does), ``kill -9`` it as soon as
    ``ready(run_dir)`` holds, check it reads "interrupted" with no final model that looks complete, then
    resume it with the CLI and check it ends complete, with both attempts in the audit log."""
    from breakhis_core.lab.audit import read_audit
    from breakhis_core.runs.registry import list_runs, load_run
    from breakhis_core.training.setup import prepare_run

    runs = ctx.folder(name)
    config = tiny_train_config(ctx.sample_dir, epochs_frozen=epochs[0], epochs_finetune=epochs[1], **overrides)
    run_dir = ctx.track(prepare_run(config, runs), *epochs)
    command = [ctx.python, "-m", "breakhis_core", "resume", str(run_dir), "--quiet"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while not ready(run_dir):
            if process.poll() is not None:
                raise NotSurvived(f"training ended before it could be killed: {process.stderr.read().decode()[-500:]}")
            check(time.monotonic() < deadline, "training never reached the moment to kill it")
            time.sleep(0.01)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
        process.stderr.close()
    check(process.returncode == -signal.SIGKILL, f"training exited on its own ({process.returncode})")
    run = load_run(run_dir)
    check(run.status == "interrupted", f"killed run reads {run.status}, not interrupted")
    check(not run.models, f"a model file of the killed run looks complete: {sorted(run.models)}")
    check([r.status for r in list_runs(runs)] == ["interrupted"], "the registry does not list the killed run as interrupted")
    killed_at = history_epochs(run_dir, "frozen")
    check(killed_at == list(range(1, len(killed_at) + 1)) and len(killed_at) < epochs[0], f"history after kill: {killed_at}")
    resumed = subprocess.run(command, cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=600)
    check(resumed.returncode == 0, f"resume exited {resumed.returncode}: {resumed.stderr[-800:]}")
    check(resumed.stdout.strip().splitlines()[-1] == str(run_dir), "resume did not print the run folder last")
    check_complete(run_dir, *epochs)
    events = [(r["status"], r["run_id"]) for r in read_audit(runs / "audit.jsonl") if r["event"] == "training"]
    check(events == [("started", run_dir.name), ("started", run_dir.name), ("done", run_dir.name)],
          f"audit log of the training: {events}")
    return run_dir


def _mid_epoch(run_dir: Path) -> bool:
    """True while stage 1 has finished an epoch and the next one has begun but not ended."""
    from breakhis_core.files import read_json

    done = len(history_epochs(run_dir, "frozen"))
    progress = read_json(run_dir / "progress.json", {}) or {}
    return done >= 1 and progress.get("stage") == "frozen" and (progress.get("epoch") or 0) > done


def kill9_mid_epoch_then_resume(ctx: Context) -> None:
    """``kill -9`` of the training process mid-epoch (stage 1, images through the whole model): "interrupted",
    then ``resume`` continues from the last epoch checkpoint to a complete run."""
    _kill_and_resume(ctx, "kill9-epoch", (5, 1), _mid_epoch, cache="off", batch_size=2)


def kill9_while_caching_then_resume(ctx: Context) -> None:
    """``kill -9`` while the frozen base's activations are being cached (the CPU path): resume rebuilds what is missing."""
    from breakhis_core.files import read_json

    def caching(run_dir: Path) -> bool:
        return (read_json(run_dir / "progress.json", {}) or {}).get("stage") == "caching"

    _kill_and_resume(ctx, "kill9-caching", (2, 1), caching, cache="on", batch_size=2)


def _full_disk_save(after: int):
    """A ``keras.Model.save`` that works ``after`` times, then writes half a file and fails with ENOSPC."""
    import keras

    original = keras.Model.save
    calls = [0]

    def save(model, filepath, *args, **kwargs):
        calls[0] += 1
        if calls[0] <= after:
            return original(model, filepath, *args, **kwargs)
        Path(filepath).write_bytes(b"PK\x03\x04" + b"\0" * 4096)  # the start of a zip, as a full disk leaves it
        raise OSError(errno.ENOSPC, "No space left on device", str(filepath))

    return mock.patch.object(keras.Model, "save", save)


def disk_full_at_checkpoint_then_resume(ctx: Context) -> None:
    """The disk fills while the epoch-2 checkpoint is saved: a clear DiskSpaceError, no partial files, resumable."""
    from breakhis_core.errors import DiskSpaceError
    from breakhis_core.files import read_json
    from breakhis_core.models.loading import load_model
    from breakhis_core.runs.registry import load_run
    from breakhis_core.training.setup import prepare_run
    from breakhis_core.training.train import run_training

    runs = ctx.folder("disk-full")
    run_dir = ctx.track(prepare_run(tiny_train_config(ctx.sample_dir, epochs_frozen=3), runs), 3, 1)
    try:
        with _full_disk_save(after=1):
            run_training(run_dir)
    except DiskSpaceError as exc:
        message = str(exc)
    else:
        raise NotSurvived("training went on although the disk was full")
    check("not enough disk space" in message and "\n" not in message, f"unclear message: {message}")
    status = read_json(run_dir / "status.json")
    check(status["status"] == "failed" and "not enough disk space" in status["error"], f"status.json: {status}")
    check(not temp_files(run_dir), f"temporary files left: {temp_files(run_dir)}")
    run = load_run(run_dir)
    check(not run.models, f"a final model looks complete after the failure: {sorted(run.models)}")
    load_model(run_dir / "checkpoints" / "frozen.keras")  # the epoch-1 checkpoint is intact
    state = read_json(run_dir / "checkpoints" / "state.json")
    check((state["stage"], state["epochs_done"], state["best"]["epoch"]) == ("frozen", 1, 1), f"checkpoint state: {state}")
    check((run_dir / "checkpoints" / state["best"]["file"]).is_file(), "the best epoch's weights are missing")
    check(run_training(run_dir) == "done", "resume after freeing space did not finish")
    check_complete(run_dir, 3, 1)


def cancel_then_resume(ctx: Context) -> None:
    """Cancel during stage 2: "cancelled" with stage 1 kept; resume finishes the run."""
    from breakhis_core.runs.registry import load_run
    from breakhis_core.training.setup import prepare_run
    from breakhis_core.runs.rundir import CANCEL_FILE
    from breakhis_core.training.train import run_training

    runs = ctx.folder("cancel")
    run_dir = ctx.track(prepare_run(tiny_train_config(ctx.sample_dir, epochs_frozen=2), runs), 2, 1)

    def cancel_in_stage_two(event):
        if event.get("stage") == "finetuned" and event.get("batch", 0) >= 1:
            (run_dir / CANCEL_FILE).touch()

    check(run_training(run_dir, listener=cancel_in_stage_two) == "cancelled", "cancel did not stop training")
    run = load_run(run_dir)
    check(run.status == "cancelled" and set(run.models) == {"frozen"}, f"after cancel: {run.status}, {sorted(run.models)}")
    check(history_epochs(run_dir, "frozen") == [1, 2] and history_epochs(run_dir, "finetuned") == [], "history after cancel")
    check(run_training(run_dir) == "done", "resume after cancel did not finish")
    check_complete(run_dir, 2, 1)


def second_trainer_refused(ctx: Context) -> None:
    """A second process training the same run (e.g. ``resume`` of a live run) is refused; the run is untouched."""
    from breakhis_core.errors import JobError
    from breakhis_core.files import read_json, try_lock, unlock
    from breakhis_core.training.setup import prepare_run
    from breakhis_core.runs.rundir import RUN_LOCK_FILE
    from breakhis_core.training.train import run_training

    runs = ctx.folder("second-trainer")
    run_dir = prepare_run(tiny_train_config(ctx.sample_dir), runs)
    holder = try_lock(run_dir / RUN_LOCK_FILE)  # as the live trainer holds it
    try:
        try:
            run_training(run_dir)
        except JobError as exc:
            check("being trained by another process" in str(exc), f"unclear message: {exc}")
        else:
            raise NotSurvived("a second trainer of the same run was allowed")
    finally:
        unlock(holder)
    check(read_json(run_dir / "status.json")["status"] == "queued", "the refused trainer changed the run")


# ----------------------------------------------------------------------------- job lock


def _kill_job(runs: Path) -> None:
    from breakhis_core.training.jobs import LOCK_FILE
    from breakhis_core.files import read_json

    record = read_json(runs / LOCK_FILE) or {}
    pid = record.get("pid")
    if pid and pid != os.getpid():
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def stale_job_lock_recovered(ctx: Context) -> None:
    """A job lock left by a dead process (and an unreadable one) does not block the next job."""
    from breakhis_core.training.jobs import LOCK_FILE, current_job, start_job

    for content in (json.dumps({"pid": dead_pid(), "run_id": "old-run", "started": "2020-01-01T00:00:00+00:00"}), '{"pid": 12'):
        runs = ctx.folder("stale-lock")
        (runs / LOCK_FILE).write_text(content)
        try:
            run_dir = start_job(tiny_train_config(ctx.sample_dir), runs, python=ctx.sleeper())
            job = current_job(runs)
            check(job is not None and job.run_id == run_dir.name, f"lock after start: {job}")
        finally:
            _kill_job(runs)
        check(current_job(runs) is None and not (runs / LOCK_FILE).exists(), "the finished job's lock was not cleared")


def job_start_race_threads(ctx: Context) -> None:
    """Four sessions press "Start training" at once (a stale lock present): exactly one job starts, the others are told."""
    from breakhis_core.errors import JobError
    from breakhis_core.training.jobs import LOCK_FILE, start_job

    runs = ctx.folder("race-threads")
    (runs / LOCK_FILE).write_text(json.dumps({"pid": dead_pid(), "run_id": "old-run", "started": "2020-01-01T00:00:00+00:00"}))
    barrier = threading.Barrier(4)

    def start():
        barrier.wait()
        try:
            return start_job(tiny_train_config(ctx.sample_dir), runs, python=ctx.sleeper())
        except JobError as exc:
            return exc

    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: start(), range(4)))
        started = [r for r in results if isinstance(r, Path)]
        refused = [r for r in results if isinstance(r, JobError)]
        check(len(started) == 1 and len(refused) == 3, f"{len(started)} jobs started, {len(refused)} refused: {results}")
        check(all("already running" in str(e) for e in refused), f"refusals: {[str(e) for e in refused]}")
        check([p.name for p in runs.iterdir() if p.is_dir()] == [started[0].name], "refused starts left run folders")
        try:
            start_job(tiny_train_config(ctx.sample_dir), runs, python=ctx.sleeper())
        except JobError as exc:
            check(f"run {started[0].name}" in str(exc), f"the refusal does not name the running run: {exc}")
        else:
            raise NotSurvived("a second job started while one runs")
    finally:
        _kill_job(runs)


RACE_SCRIPT = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from faultcases import tiny_train_config
from breakhis_core.errors import JobError
from breakhis_core.training.jobs import start_job
go = Path({go!r})
Path(f"{{go}}.ready-{{sys.argv[1]}}").touch()
while not go.exists():
    time.sleep(0.005)
try:
    print(json.dumps({{"started": str(start_job(tiny_train_config({sample!r}), {runs!r}, python={sleeper!r}))}}))
except JobError as exc:
    print(json.dumps({{"refused": str(exc)}}))
"""


def job_start_race_processes(ctx: Context) -> None:
    """Two server processes start a job at the same moment: exactly one starts it."""
    runs = ctx.folder("race-processes")
    go = runs.parent / f"{runs.name}.go"
    script = RACE_SCRIPT.format(tests=str(Path(__file__).parent), go=str(go), sample=str(ctx.sample_dir), runs=str(runs),
                                sleeper=ctx.sleeper())
    processes = [subprocess.Popen([ctx.python, "-c", script, str(k)], cwd=REPO_ROOT, env=cli_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for k in range(2)]
    try:
        deadline = time.monotonic() + 180
        while len(list(go.parent.glob(f"{go.name}.ready-*"))) < 2:  # both have imported the library: go together
            check(time.monotonic() < deadline and all(p.poll() is None for p in processes), "a racing process did not start")
            time.sleep(0.05)
        go.touch()
        outputs = [p.communicate(timeout=180) for p in processes]
        results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
        started = [r for r in results if "started" in r]
        refused = [r for r in results if "refused" in r]
        check(len(started) == 1 and len(refused) == 1, f"results: {results}; stderr: {[e[-300:] for _, e in outputs]}")
        check(f"run {Path(started[0]['started']).name}" in refused[0]["refused"] or "being prepared" in refused[0]["refused"],
              f"refusal: {refused[0]}")
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
        _kill_job(runs)


# ----------------------------------------------------------------------------- prediction


def concurrent_predictions(ctx: Context) -> None:
    """8 simultaneous Diagnose requests on one shared Predictor (Grad-CAM): all complete, equal to sequential results."""
    from breakhis_core.data.images import read_image
    from breakhis_core.inference.predict import Predictor
    from breakhis_core.runs.default_model import get_default

    run, stage = get_default(ctx.model_runs())
    predictor = Predictor.from_run(run, stage)  # a fresh model: its compiled functions are traced under the load
    files = sorted(ctx.sample_dir.rglob("*.png"))[:8]
    images = [read_image(f) for f in files]
    barrier = threading.Barrier(8)

    def diagnose(index):
        barrier.wait()
        return predictor.predict([images[index]], [files[index].name], cam="gradcam")[0]

    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(diagnose, range(8)))
    sequential = [predictor.predict([image], [f.name], cam="gradcam")[0] for image, f in zip(images, files)]
    for a, b in zip(parallel, sequential):
        check(a.name == b.name and abs(a.p_malignant - b.p_malignant) < 1e-5, f"{a.name}: {a.p_malignant} != {b.p_malignant}")
        check(a.heatmap.shape == b.heatmap.shape and np.allclose(a.heatmap, b.heatmap, atol=1e-4), f"{a.name}: heat maps differ")
    traces = predictor.explainer._gradcam_fn.experimental_get_tracing_count()
    check(traces == 1, f"Grad-CAM traced {traces} times under concurrent load")


class _WriteSpy:
    """Records every file opened for writing through Python (``open``, ``os.open``) while active."""

    def __init__(self):
        self.paths: list[str] = []

    def __enter__(self):
        real_open, real_os_open = builtins.open, os.open
        spy = self

        def spy_open(file, mode="r", *args, **kwargs):
            if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
                spy.paths.append(os.fsdecode(file))
            return real_open(file, mode, *args, **kwargs)

        def spy_os_open(path, flags, *args, **kwargs):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                spy.paths.append(os.fsdecode(path))
            return real_os_open(path, flags, *args, **kwargs)

        self._patches = [mock.patch.object(builtins, "open", spy_open), mock.patch.object(os, "open", spy_os_open)]
        for patch in self._patches:
            patch.start()
        return self

    def __exit__(self, *exc):
        for patch in reversed(self._patches):
            patch.stop()


def snapshot(*folders: Path) -> set[str]:
    return {str(p) for folder in folders if folder.exists() for p in folder.rglob("*")}


def diagnose_uploads(uploaded, runs_root: Path, predictor, source: str = "app"):
    """What the Diagnose page does with an upload batch, through the same library service: read in memory, decode,
    predict, audit.

    Returns:
        (predictions, problems): predictions of the decodable images and the ``Skipped`` rest.
    """
    from breakhis_core.data.uploads import decode_uploads, read_uploads
    from breakhis_core.inference.predict import ModelRouter
    from breakhis_core.inference.service import DiagnosisOptions, DiagnosisService

    uploads, problems = read_uploads(uploaded)
    good, undecodable = decode_uploads(uploads)
    diagnosis = DiagnosisService(ModelRouter.serving(predictor), source, runs_root=runs_root).diagnose(
        good, options=DiagnosisOptions(cam="gradcam"))
    return diagnosis.predictions, problems + undecodable + diagnosis.skipped


def uploads_stay_in_memory(ctx: Context) -> None:
    """Diagnosing uploads (images and a zip) writes nothing to disk but one audit line per image."""
    from breakhis_core.data.images import encode_png
    from breakhis_core.files import sha256
    from breakhis_core.inference.predict import Predictor
    from breakhis_core.lab import audit
    from breakhis_core.runs.default_model import get_default
    from badfiles import make_zip

    runs = ctx.model_runs()
    run, stage = get_default(runs)
    predictor = Predictor.from_run(run, stage)
    predictor.predict([pattern(40, 40)], cam="gradcam")  # load and trace before watching
    files = sorted(ctx.sample_dir.rglob("*.png"))[:3]
    uploaded = [(f.name, f.read_bytes()) for f in files[:2]]
    uploaded.append(("batch.zip", make_zip([(f"x/{files[2].name}", files[2].read_bytes()), ("y/broken.png", b"junk"),
                                            ("../evil.png", encode_png(pattern()))])))
    scratch = ctx.folder("scratch-tmp")
    log = runs / audit.AUDIT_FILE
    before_lines = len(audit.read_audit(log))
    watched = (runs, scratch, REPO_ROOT)
    before = snapshot(runs, scratch) | {str(p) for p in REPO_ROOT.iterdir()}
    with mock.patch.object(tempfile, "tempdir", str(scratch)), _WriteSpy() as spy:
        predictions, problems = diagnose_uploads(uploaded, runs, predictor)
    after = snapshot(runs, scratch) | {str(p) for p in REPO_ROOT.iterdir()}
    check(len(predictions) == 3 and len(problems) == 2, f"{len(predictions)} predictions, problems {problems}")
    written = sorted(set(spy.paths) - {str(log)})
    check(not written, f"files opened for writing: {written}")
    check(after - before <= {str(log)}, f"new files: {sorted(after - before)} in {[str(w) for w in watched]}")
    lines = audit.read_audit(log)[before_lines:]
    check(len(lines) == 3 and {line["event"] for line in lines} == {"prediction"}, f"audit lines: {lines}")
    digests = {sha256(data) for _, data in uploaded[:2]} | {sha256(files[2].read_bytes())}
    check({line["image_sha256"] for line in lines} == digests, "audit digests are not the SHA-256 of the uploaded files")
    keys = {"time", "event", "source", "model_id", "image_sha256", "verdict", "p_malignant", "magnification",
            "low_confidence", "cam"}
    check(all(set(line) == keys for line in lines), f"audit keys: {[sorted(line) for line in lines]}")
    check(all(files[0].name not in json.dumps(line) for line in lines), "the audit log names the file")


def audit_appends_concurrently(ctx: Context) -> None:
    """8 threads and 2 processes append to the audit log at once: every line whole, none lost."""
    from breakhis_core.lab import audit

    log = ctx.folder("audit") / "audit.jsonl"
    log.write_bytes(b'{"torn": ')  # a torn line left by a full disk: must not swallow the next record
    per_writer = 40

    def thread_writer(index):
        for i in range(per_writer):
            audit.append([{"event": "prediction", "writer": f"t{index}", "i": i, "pad": "x" * 300}], log)

    code = ("import sys; from breakhis_core.lab import audit\n"
            f"[audit.append([{{'event': 'prediction', 'writer': sys.argv[1], 'i': i, 'pad': 'y' * 300}}], {str(log)!r})"
            f" for i in range({per_writer})]")
    processes = [subprocess.Popen([ctx.python, "-c", code, f"p{k}"], cwd=REPO_ROOT, env=cli_env()) for k in range(2)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(thread_writer, range(8)))
    check(all(p.wait(timeout=120) == 0 for p in processes), "an appending process failed")
    records = audit.read_audit(log)
    writers = {}
    for record in records:
        writers.setdefault(record["writer"], []).append(record["i"])
    check(len(records) == 10 * per_writer, f"{len(records)} whole lines of {10 * per_writer}")
    check(all(sorted(v) == list(range(per_writer)) for v in writers.values()) and len(writers) == 10, "lines lost or doubled")


# ----------------------------------------------------------------------------- model files and half-written runs


def unsafe_model_files_refused(ctx: Context) -> None:
    """Lambda layer, truncated, corrupt, not a zip, wrong input, wrong output, no softmax head: each refused clearly."""
    import keras

    from breakhis_core.errors import ModelFileError
    from breakhis_core.models.loading import load_model
    from breakhis_core.runs.transfer import import_model

    folder = ctx.folder("models")

    def small(name, shape=(32, 32, 3), outputs=2, lambda_layer=False, activation="softmax"):
        inputs = keras.Input(shape)
        x = keras.layers.Lambda(lambda t: t / 255.0)(inputs) if lambda_layer else inputs
        x = keras.layers.GlobalAveragePooling2D()(x)
        keras.Model(inputs, keras.layers.Dense(outputs, activation=activation)(x)).save(folder / name)
        return folder / name

    good = folder / "good.keras"
    build = __import__("breakhis_core.models.classifier", fromlist=["build_model"]).build_model
    build(TINY_INPUT, weights="none", seed=0).save(good)
    data = good.read_bytes()
    (folder / "truncated.keras").write_bytes(data[: len(data) // 2])
    corrupt = bytearray(data)
    corrupt[len(corrupt) // 2 : len(corrupt) // 2 + 4096] = os.urandom(4096)
    (folder / "corrupt.keras").write_bytes(bytes(corrupt))
    (folder / "text.keras").write_text("this is not a model")
    (folder / "empty.keras").write_bytes(b"")
    cases = {
        "lambda.keras": (small("lambda.keras", lambda_layer=True), "Lambda layer"),
        "truncated.keras": (folder / "truncated.keras", "truncated"),
        "corrupt.keras": (folder / "corrupt.keras", "cannot be loaded"),
        "text.keras": (folder / "text.keras", "not a zip"),
        "empty.keras": (folder / "empty.keras", "not a zip"),
        "grey_input.keras": (small("grey_input.keras", shape=(32, 32, 1)), "input must be"),
        "three_classes.keras": (small("three_classes.keras", outputs=3), "output must be"),
        "no_softmax.keras": (small("no_softmax.keras", activation="sigmoid"), "softmax"),
    }
    runs = folder / "runs"
    for name, (path, phrase) in cases.items():
        try:
            if name == "no_softmax.keras":
                import_model(path, runs)
            else:
                load_model(path)
        except ModelFileError as exc:
            check(phrase in str(exc) and "\n" not in str(exc), f"{name}: unclear message: {exc}")
        else:
            raise NotSurvived(f"{name} was accepted")
        try:
            import_model(path, runs)
        except ModelFileError:
            pass
        else:
            raise NotSurvived(f"{name} was imported")
    leftovers = list(runs.iterdir()) if runs.exists() else []
    check(not leftovers, f"refused imports left files: {leftovers}")


def half_written_runs_not_ready(ctx: Context) -> None:
    """Runs left mid-write (temporary model file, no status, torn status.json) never offer a model."""
    from breakhis_core.runs.default_model import get_default
    from breakhis_core.runs.registry import list_runs

    runs = ctx.folder("half-written")
    killed = runs / "20240101-000000-all-patient"
    (killed / "checkpoints").mkdir(parents=True)
    tiny_train_config("/data").save(killed / "config.json")
    (killed / "status.json").write_text(json.dumps({"status": "running", "pid": dead_pid(), "started": "2024-01-01T00:00:00+00:00"}))
    (killed / ".tmp-4242-frozen.keras").write_bytes(b"PK\x03\x04partial")
    (killed / "checkpoints" / ".tmp-4242-frozen.keras").write_bytes(b"PK\x03\x04partial")
    preparing = runs / "20240101-000001-all-patient"
    preparing.mkdir()
    tiny_train_config("/data").save(preparing / "config.json")
    torn = runs / "20240101-000002-all-patient"
    torn.mkdir()
    (torn / "status.json").write_text('{"status": "do')
    (torn / "finetuned.keras").write_bytes(b"PK\x03\x04")
    listed = {run.run_id: run for run in list_runs(runs)}
    check(listed[killed.name].status == "interrupted" and not listed[killed.name].models, "killed run")
    check(listed[preparing.name].status == "unknown" and not listed[preparing.name].models, "run being prepared")
    check(listed[torn.name].status == "broken", f"torn status.json reads {listed[torn.name].status}")
    check(get_default(runs) is None, "a half-written run was offered as the active model")


def disk_full_on_small_writes(ctx: Context) -> None:
    """ENOSPC while replacing a JSON file or appending a history line: old content intact, no temp files."""
    from breakhis_core.errors import DiskSpaceError
    from breakhis_core.files import append_jsonl, read_json, read_jsonl, write_json_atomic

    folder = ctx.folder("small-writes")
    write_json_atomic(folder / "status.json", {"status": "running"})
    append_jsonl(folder / "history.jsonl", {"epoch": 1})

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    attempts = (("fsync", lambda: write_json_atomic(folder / "status.json", {"status": "failed"})),
                ("fsync", lambda: append_jsonl(folder / "history.jsonl", {"epoch": 2})),
                ("write", lambda: append_jsonl(folder / "history.jsonl", {"epoch": 2})))
    for failing, attempt in attempts:
        with mock.patch.object(os, failing, full):
            try:
                attempt()
            except DiskSpaceError as exc:
                check("not enough disk space" in str(exc) and "\n" not in str(exc), f"unclear message: {exc}")
            else:
                raise NotSurvived(f"no DiskSpaceError when os.{failing} fails with ENOSPC")
    check(read_json(folder / "status.json") == {"status": "running"}, "status.json changed or corrupt")
    check(read_jsonl(folder / "history.jsonl") == [{"epoch": 1}], "history changed or corrupt")
    check(sorted(p.name for p in folder.iterdir()) == ["history.jsonl", "status.json"], f"left: {list(folder.iterdir())}")
    append_jsonl(folder / "history.jsonl", {"epoch": 2})
    check(read_jsonl(folder / "history.jsonl") == [{"epoch": 1}, {"epoch": 2}], "history after the disk was freed")


def data_paths_confined(ctx: Context) -> None:
    """Train-page paths cannot leave the data roots: ``..``, absolute paths, symlinks, manifest rows."""
    from breakhis_core.errors import DataPathError
    from breakhis_core.training.jobs import start_job
    from breakhis_core.lab.paths import check_dataset, inside_data_roots

    base = ctx.folder("roots")
    root, outside = base / "data", base / "outside"
    (root / "set").mkdir(parents=True)
    outside.mkdir()
    samples = sorted(ctx.sample_dir.rglob("*.png"))
    for sample in samples:
        shutil.copy(sample, root / "set" / sample.name)
        shutil.copy(sample, outside / sample.name)
    (root / "escape_dir").symlink_to(outside, target_is_directory=True)
    (root / "mixed").mkdir()
    for sample in samples:
        (root / "mixed" / sample.name).symlink_to(outside / sample.name)
    rows = [f"{'../outside' if i % 2 else 'set'}/{s.name},{'malignant' if '_M_' in s.name else 'benign'}"
            for i, s in enumerate(samples)]  # every second row climbs out of the root
    (root / "manifest.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    (root / "absolute.csv").write_text("path,label\n" + "".join(f"{outside / s.name},benign\n" for s in samples))
    roots = [root]
    check(inside_data_roots("set", roots) == (root / "set").resolve(), "a folder inside the root was refused")
    check(check_dataset("set", roots) == (root / "set").resolve(), "a clean data set was refused")
    escapes = ["../outside", str(outside), "set/../../outside", "escape_dir", "mixed", "manifest.csv", "absolute.csv",
               "/etc", "no/such/folder", ""]
    for path in escapes:
        try:
            check_dataset(path, roots)
        except DataPathError as exc:
            check("\n" not in str(exc) and "Received" in str(exc), f"{path}: unclear message: {exc}")
        else:
            raise NotSurvived(f"{path!r} escaped the data roots")
    runs = base / "runs"
    try:
        start_job(tiny_train_config(root / "mixed"), runs, python=ctx.sleeper(), data_roots=roots)
    except DataPathError:
        pass
    else:
        _kill_job(runs)
        raise NotSurvived("start_job trained on data outside the roots")
    leftovers = list(runs.iterdir()) if runs.exists() else []
    check(not leftovers, f"a refused job left a run or a lock: {leftovers}")


FAULTS = (
    kill9_mid_epoch_then_resume,
    kill9_while_caching_then_resume,
    disk_full_at_checkpoint_then_resume,
    disk_full_on_small_writes,
    cancel_then_resume,
    second_trainer_refused,
    stale_job_lock_recovered,
    job_start_race_threads,
    job_start_race_processes,
    concurrent_predictions,
    audit_appends_concurrently,
    uploads_stay_in_memory,
    unsafe_model_files_refused,
    half_written_runs_not_ready,
    data_paths_confined,
)
"""Every injected fault, cheapest last; run each with a fresh :class:`Context` folder or a shared one."""


# ----------------------------------------------------------------------------- inputs


@dataclass
class InputResult:
    """One input tried: where (library, uploads, cli), its name, whether it was handled, and why not."""

    via: str
    name: str
    handled: bool
    detail: str = ""


def _one_line(message: str, limit: int = 400) -> bool:
    return bool(message) and "\n" not in message and "\r" not in message and len(message) <= limit


def library_input_results(ctx: Context) -> list[InputResult]:
    """The image corpus through ``read_image`` and the odd names through ``decode_image``."""
    import warnings

    from badfiles import make_bad_corpus
    from breakhis_core.errors import ImageDecodeError
    from breakhis_core.data.images import decode_image, read_image

    results = []
    cases = {c.name: c for c in corpus_cases()}
    for path, expectation in make_bad_corpus(ctx.folder("corpus")):
        case = cases[path.name]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                image = read_image(path)
        except ImageDecodeError as exc:
            ok = expectation == ERROR and _one_line(str(exc))
            results.append(InputResult("library", path.name, ok, str(exc)))
            continue
        ok = (expectation == OK and image.shape == case.expected.shape
              and float(np.abs(image.astype(np.int16) - case.expected).mean()) <= case.tolerance)
        results.append(InputResult("library", path.name, ok, "decoded" if ok else "wrong decoding"))
    for name in ODD_NAMES:
        try:
            decode_image(b"not an image", name)
        except ImageDecodeError as exc:
            results.append(InputResult("library", name, _one_line(str(exc), 300), str(exc)))
        else:
            results.append(InputResult("library", name, False, "decoded junk"))
    return results


def upload_input_results(ctx: Context) -> list[InputResult]:
    """Each upload case through ``uploads.read_uploads`` and ``decode_image`` (the Diagnose page's path)."""
    import warnings

    from breakhis_core.errors import ImageDecodeError
    from breakhis_core.data.images import NAME_LIMIT, decode_image
    from breakhis_core.data.uploads import Budget, read_uploads

    results = []
    for case in upload_cases():
        options = {} if case.max_upload_bytes is None else {"max_upload_bytes": case.max_upload_bytes}
        uploads, skipped = read_uploads([(case.name, case.data)], budget=Budget(**(case.limits or {})), **options)
        problems = []
        if (len(uploads), len(skipped)) != (case.images, case.skipped):
            problems.append(f"{len(uploads)} images and {len(skipped)} refusals, expected {case.images} and {case.skipped}")
        problems += [f"reason {reason!r}" for _, reason in skipped if case.reason not in reason or not _one_line(reason)]
        problems += [f"label {label!r}" for label, _ in skipped if not _one_line(label, 2 * NAME_LIMIT + 10)]
        for upload in uploads:
            check_label = _one_line(upload.label, 2 * NAME_LIMIT + 10)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    decode_image(upload.data, upload.name)
            except ImageDecodeError as exc:
                check_label = check_label and _one_line(str(exc))
            if not check_label:
                problems.append(f"member {upload.label!r}")
        results.append(InputResult("uploads", case.name, not problems, "; ".join(problems)))
    return results


CLI_ZIPS = ("traversal.zip", "bomb_declared.zip", "bomb_lying.zip", "nested.zip", "symlink.zip", "encrypted.zip",
            "not_a_zip.zip", "truncated.zip", "mixed.zip", "names.zip")
"""Upload cases also given to ``python -m breakhis_core predict`` (those that need no special limits)."""


def cli_input_results(ctx: Context) -> list[InputResult]:
    """The corpus files and the hostile zips in one ``predict`` run: every file predicted or refused on one line."""
    import warnings

    from badfiles import make_bad_corpus
    from breakhis_core.errors import ImageDecodeError
    from breakhis_core.data.images import decode_image, display_name
    from breakhis_core.data.uploads import read_zip

    folder = ctx.folder("cli-inputs")
    inputs = [(path, 1 if e == OK else 0, 0 if e == OK else 1) for path, e in make_bad_corpus(folder / "corpus")]
    for case in upload_cases():
        if case.name in CLI_ZIPS:
            path = folder / case.name
            path.write_bytes(case.data)
            members, skipped = read_zip(case.data, case.name)
            decodable = 0
            for member in members:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        decode_image(member.data, member.name)
                    decodable += 1
                except ImageDecodeError:
                    pass
            inputs.append((path, decodable, len(members) - decodable + len(skipped)))
    runs = ctx.model_runs()
    result = subprocess.run([ctx.python, "-m", "breakhis_core", "predict", *[str(p) for p, _, _ in inputs], "--runs",
                             str(runs), "--cam", "gradcam", "--json"], cwd=REPO_ROOT, env=cli_env(), capture_output=True,
                            text=True, timeout=600)
    if result.returncode != 0:
        return [InputResult("cli", p.name, False, f"exit {result.returncode}: {result.stderr[-300:]}") for p, _, _ in inputs]
    output = json.loads(result.stdout)
    predictions, errors = list(output["predictions"]), list(output["errors"])
    results = []
    for path, n_ok, n_error in inputs:
        mine_p, predictions = predictions[:n_ok], predictions[n_ok:]
        mine_e, errors = errors[:n_error], errors[n_error:]
        label = display_name(path.name)
        problems = []
        if len(mine_p) != n_ok or len(mine_e) != n_error:
            problems.append("counts differ")
        if path.suffix != ".zip" and any(p["name"] != path.name for p in mine_p):
            problems.append("prediction names")
        problems += ["verdict" for p in mine_p if p["verdict"] not in ("benign", "malignant")]
        problems += [f"error {e}" for e in mine_e if not (e["file"].startswith(label) and _one_line(e["reason"], 500))]
        results.append(InputResult("cli", path.name, not problems, "; ".join(problems)))
    if predictions or errors:
        results.append(InputResult("cli", "(extra output)", False, f"{len(predictions)} predictions, {len(errors)} errors unaccounted"))
    return results


def input_results(ctx: Context) -> list[InputResult]:
    """Every hostile input through the library, the upload reader and the CLI."""
    return library_input_results(ctx) + upload_input_results(ctx) + cli_input_results(ctx)
