"""A lab server under load: N pathologists diagnosing at once while a model trains and a slide is analysed.

    python bench/load.py                        # 6 sessions, about 10 minutes
    python bench/load.py --sessions 2 --single-s 20 --load-s 40 --epochs 1     # a quick look

Everything runs on loopback ports chosen at run time, in a temporary folder:

1. **Idle references.** A small training run on the real BreakHis sample (random-weight VGG16 at
   ``--input-size``, ``--epochs`` per stage, seed 0, activation cache on) started with the app's own job
   launcher (``jobs.start_job``) on an idle machine; it is also the model the app serves (the active model).
   A pyramidal TIFF slide (``tests/slides.py``) analysed with it by the app's slide launcher
   (``slide_jobs.start_job``), idle too.
2. **The app**: ``streamlit run app.py`` on a free loopback port, with sign-in against a mock OpenID Connect
   provider and one viewer account per session where the mock provider is installed (``--no-sign-in``: without).
3. **Single user** (the baseline of the same run): one browser session, nothing in the background, rounds of
   Diagnose with 4 real images each until ``--single-s`` seconds or ``--max-rounds`` rounds
   (``tests/loadsessions.py``; one unmeasured warm-up round first).
4. **Load**: the same training again (same config and seed) and the same slide (a copy of the file, so it is
   analysed again) start in the background through the same launchers, then N sessions diagnose at once for
   ``--load-s`` seconds (or ``--max-rounds`` rounds each). Afterwards the bench waits (at most ``--job-timeout-s``)
   for both jobs, and compares their results with the idle references: the test-set predictions of the run
   (``val_predictions.csv``, ``test_predictions.csv``) and the per-tile probabilities of the slide (``tiles.csv``), byte for byte.

Reported: verdict latency per session (p50/p95; from the upload to the last verdict card and heat map drawn),
errors (exceptions or tracebacks on a page, JavaScript errors, rounds that time out, lost results, tracebacks in
the server log), the peak resident memory of the server's process tree (sampled every 0.5 s) in each phase, and
the CPU seconds per round the server and the browser used (on a lab server, the browsers run elsewhere).
Ends with::

    load sessions N, single p95 S.S s, diagnose p50 A.A s p95 B.B s, errors E, peak RSS M MiB (single R MiB), training ok|FAILED, slide ok|FAILED

The browser runs on the same CPU as the server: on a 2-core machine its rendering is part of every latency.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
SAMPLE = ROOT.parent / "shared" / "breakhis_sample"
from breakhis_core.runs.status import ENDED as RECORDED_ENDINGS, RunStatus  # noqa: E402  (after the path is set)

ENDED = (*RECORDED_ENDINGS, RunStatus.INTERRUPTED)
POLL_S = 2.0
WARM_UP_S = 600.0
"""Seconds the unmeasured warm-up round may take (loading the model, first TensorFlow traces)."""


def wait_ended(read_status: Callable[[], str], timeout_s: float) -> str:
    """Poll a job's status (``read_status()``) until it ends or ``timeout_s`` passes; the last status read
    ("timeout" when it was still running)."""
    deadline = time.monotonic() + timeout_s
    while (status := read_status()) not in ENDED:
        if time.monotonic() > deadline:
            return "timeout"
        time.sleep(POLL_S)
    return status


def same_file(reference: Path, candidate: Path) -> tuple[bool, str]:
    """(identical, what was compared) for two result files; a missing file is never identical."""
    if not reference.is_file() or not candidate.is_file():
        return False, f"{candidate.name} missing"
    rows = max(len(reference.read_text().splitlines()) - 1, 0)
    if reference.read_bytes() == candidate.read_bytes():
        return True, f"{candidate.name} identical ({rows} rows)"
    return False, f"{candidate.name} differs from the idle run's"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def cpu_line(sampler, rounds: int) -> str:
    """The CPU seconds per round the server and the browser used in a phase."""
    per_round = {side: sampler.cpu_s(side) / max(rounds, 1) for side in ("server", "browser")}
    return f"CPU per round: server {per_round['server']:.1f} s, browser {per_round['browser']:.1f} s"


def session_lines(results) -> list[str]:
    return [f"  session {r.session}: {r.rounds} rounds, verdict latency p50 {percentile(r.latencies_s, 50):.1f} s "
            f"p95 {percentile(r.latencies_s, 95):.1f} s, errors {len(r.errors)}" for r in results]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=6, help="browser sessions at once under load (default 6)")
    parser.add_argument("--single-s", type=float, default=60.0, help="seconds of the single-user phase")
    parser.add_argument("--load-s", type=float, default=180.0, help="seconds of the load phase")
    parser.add_argument("--max-rounds", type=int, default=30, help="rounds per session and phase at most")
    parser.add_argument("--input-size", type=int, default=64, help="model input side in pixels (VGG16 minimum 32)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per stage")
    parser.add_argument("--slide-rows", type=int, default=6, help="rows of 40X fields of tissue in the slide (×2 per class)")
    parser.add_argument("--job-timeout-s", type=float, default=900.0, help="longest wait for each background job")
    parser.add_argument("--no-sign-in", action="store_true", help="serve without sign-in")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (runs, logs) and print it")
    args = parser.parse_args(argv)

    from loadsessions import ProcessSampler, run_sessions, serve_app, server_tracebacks, sign_in_available
    from slides import build_slide
    from test_browser import find_chromium

    from breakhis_core.runs import default_model, registry
    from breakhis_core.training import jobs
    from breakhis_core import runtime
    from breakhis_core.slides import jobs as slide_jobs
    from breakhis_core.config import TrainConfig
    from breakhis_core.files import read_json
    from breakhis_core.runs.rundir import STATUS_FILE, RunDir, seconds_from_iso

    runtime.load_tensorflow()  # the launchers check the run's weights with TensorFlow: its start-up lines stay quiet

    chromium = find_chromium()
    if chromium is None:
        print("error: no chromium found ($BREAKHIS_CHROMIUM, chromium, chromium-browser): apt-get install -y chromium",
              file=sys.stderr)
        return 2
    if not SAMPLE.is_dir():
        print(f"error: the BreakHis sample is not at {SAMPLE}", file=sys.stderr)
        return 2
    sign_in = not args.no_sign_in and sign_in_available()
    work = Path(tempfile.mkdtemp(prefix="breakhis-load-"))
    runs = work / "runs"
    images = sorted(SAMPLE.rglob("*.png"))
    flags = sorted(set(runtime.cpu_flags()) & {"avx512_bf16", "amx_bf16"})
    print(f"CPU: {runtime.usable_cpus()} cores, bf16 flags: {', '.join(flags) or 'none'}; oneDNN "
          f"{'off' if os.environ.get('TF_ENABLE_ONEDNN_OPTS') == '0' else 'default'}; "
          f"load average {os.getloadavg()[0]:.1f}; sign-in {'on (mock provider)' if sign_in else 'off'}", flush=True)
    config = TrainConfig(data=str(SAMPLE), weights="none", input_size=args.input_size, epochs_frozen=args.epochs,
                         epochs_finetune=args.epochs, batch_size=8, device="cpu", seed=0, recipe="paper", cache="on")
    app = None
    try:
        # 1. idle references ------------------------------------------------------------------------------
        started = time.monotonic()
        reference_run = jobs.start_job(config, runs)
        reference_status = wait_ended(lambda: jobs.job_state(reference_run).status, args.job_timeout_s)
        idle_training_s = time.monotonic() - started
        print(f"idle training: {reference_run.name} {reference_status} in {idle_training_s:.0f} s", flush=True)
        if reference_status != RunStatus.DONE:
            print(f"error: the idle reference run did not finish:\n{RunDir(reference_run).train_log.read_text()[-2000:]}",
                  file=sys.stderr)
            return 1
        default_model.set_default(reference_run.name, "finetuned", runs)
        model_ref = registry.model_id(registry.load_run(reference_run.name, runs), "finetuned")
        (work / "slides").mkdir()
        reference_slide = build_slide(work / "slides" / "idle.tiff", SAMPLE, rows=args.slide_rows,
                                      cols_per_class=args.slide_rows).path
        load_slide = work / "slides" / "load.tiff"
        shutil.copyfile(reference_slide, load_slide)
        started = time.monotonic()
        reference_folder = slide_jobs.start_job(reference_slide, model_ref, runs)
        reference_slide_status = wait_ended(lambda: slide_jobs.job_state(reference_folder).status, args.job_timeout_s)
        idle_slide_s = time.monotonic() - started
        print(f"idle slide analysis: {reference_slide_status} in {idle_slide_s:.0f} s", flush=True)

        # 2. the app --------------------------------------------------------------------------------------
        (work / "server").mkdir()
        app = serve_app(runs, SAMPLE, work / "server", users=args.sessions if sign_in else 0)
        with ProcessSampler(app.server.pid, os.getpid()) as sampler:
            # 3. single user ------------------------------------------------------------------------------
            warm_up = run_sessions(app, chromium, 1, images, duration_s=WARM_UP_S, max_rounds=1)
            sampler.reset()
            single = run_sessions(app, chromium, 1, images, args.single_s, args.max_rounds)
            single_rss, single_cpu = sampler.peak_mib, cpu_line(sampler, single[0].rounds)
            single_latencies = single[0].latencies_s
            print(f"single user: {single[0].rounds} rounds, verdict latency p50 {percentile(single_latencies, 50):.1f} s "
                  f"p95 {percentile(single_latencies, 95):.1f} s, peak RSS {single_rss:.0f} MiB; {single_cpu}", flush=True)

            # 4. load -------------------------------------------------------------------------------------
            sampler.reset()
            load_started, load_started_at = time.monotonic(), time.time()
            load_run = jobs.start_job(config, runs)
            load_folder = slide_jobs.start_job(load_slide, model_ref, runs)
            loaded = run_sessions(app, chromium, args.sessions, images, args.load_s, args.max_rounds)
            load_phase_s = time.monotonic() - load_started
            training_during = jobs.job_state(load_run).status
            load_rss, load_cpu = sampler.peak_mib, cpu_line(sampler, sum(result.rounds for result in loaded))
        load_training_status = wait_ended(lambda: jobs.job_state(load_run).status, args.job_timeout_s)
        load_training_s = seconds_from_iso(jobs.job_state(load_run).record.get("updated")) - load_started_at
        load_slide_status = wait_ended(lambda: slide_jobs.job_state(load_folder).status, args.job_timeout_s)
        load_slide_s = seconds_from_iso(read_json(load_folder / STATUS_FILE, {}).get("ended")) - load_started_at
        idle_files, load_files = RunDir(reference_run), RunDir(load_run)  # per-image predictions, validation and test
        compared = [same_file(idle_files.val_predictions_file, load_files.val_predictions_file),
                    same_file(idle_files.test_predictions_file, load_files.test_predictions_file)]
        training_same, training_note = all(same for same, _ in compared), "; ".join(note for _, note in compared)
        slide_same, slide_note = same_file(reference_folder / "tiles.csv", load_folder / "tiles.csv")
    finally:
        if app is not None:
            app.stop()
    tracebacks = server_tracebacks(app.log_path)

    latencies = [latency for result in loaded for latency in result.latencies_s]
    page_errors = [error for result in [*warm_up, *single, *loaded] for error in result.errors]
    errors = page_errors + [f"server log: {line}" for line in tracebacks]
    training_ok = training_same and load_training_status == RunStatus.DONE and reference_status == RunStatus.DONE
    slide_ok = slide_same and load_slide_status == RunStatus.DONE and reference_slide_status == RunStatus.DONE
    p95_single, p50_load, p95_load = percentile(single_latencies, 95), percentile(latencies, 50), percentile(latencies, 95)

    print(f"load: {args.sessions} sessions for {load_phase_s:.0f} s, {len(latencies)} rounds; the training job was "
          f"{training_during} at the end of it")
    print("\n".join(session_lines(loaded)))
    print(f"  all sessions: verdict latency p50 {p50_load:.1f} s p95 {p95_load:.1f} s "
          f"({p95_load / p95_single:.1f}× the single user's p95); peak RSS {load_rss:.0f} MiB "
          f"({load_rss - single_rss:+.0f} MiB on the single user's); {load_cpu}")
    print(f"training under load: {load_training_status} after {load_training_s:.0f} s of the {load_phase_s:.0f} s phase "
          f"(idle: {idle_training_s:.0f} s); {training_note}")
    print(f"slide under load: {load_slide_status} after {load_slide_s:.0f} s (idle: {idle_slide_s:.0f} s); {slide_note}")
    for error in errors:
        print(f"error: {error}")
    print(f"targets: p95 ≤ 3× single {'met' if p95_load <= 3 * p95_single else 'MISSED'}, 0 errors "
          f"{'met' if not errors else 'MISSED'}, RSS ≤ single + 500 MiB {'met' if load_rss <= single_rss + 500 else 'MISSED'}, "
          f"jobs identical to idle {'met' if training_ok and slide_ok else 'MISSED'}; load average now "
          f"{os.getloadavg()[0]:.1f}")
    if args.keep:
        print(f"kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load sessions {args.sessions}, single p95 {p95_single:.1f} s, diagnose p50 {p50_load:.1f} s "
          f"p95 {p95_load:.1f} s, errors {len(errors)}, peak RSS {load_rss:.0f} MiB (single {single_rss:.0f} MiB), "
          f"training {'ok' if training_ok else 'FAILED'}, slide {'ok' if slide_ok else 'FAILED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
