"""Inference speed in float32 and bfloat16: batched prediction and one image's prediction + Grad-CAM, through ``Predictor``.

    python bench/inference.py                     # trains a small model on the shared real images first (224×224)
    python bench/inference.py --run RUN_ID        # a trained run's model (--stage frozen|finetuned, --runs ROOT)
    python bench/inference.py --model FILE.keras

Without ``--run`` or ``--model`` the bench first trains a model (``python -m breakhis_core train``, weights none,
the paper's recipe on the cached path with 2 views, 25 + 2 epochs, float32) on a manifest of the real BreakHis
sample (../shared/breakhis_sample) and ``--idc`` IDC patches (../shared/idc_sample), so the precision comparison is made on a model that has learned
something from real tissue. The same float32 model is then timed twice in one process, as
``Predictor(precision="off")`` (float32) and ``Predictor(precision="on")`` (``mixed_bfloat16``; softmax in float32):

- batched prediction: images/s over ``--batch`` 700×460 BreakHis uploads in one ``Predictor.predict`` call
  (median of ``--repeats``, resize included);
- one image, prediction + Grad-CAM (heat map at 700×460): median and p90 seconds;
- tf.function traces after warm-up (0 = no retracing per request) and peak RSS;
- agreement: every BreakHis sample image and ``--agree-idc`` IDC patches predicted in both precisions, the share
  with the same verdict (P(malignant) >= 0.5) and the largest |P(malignant) difference|.

- per backbone (``--backbones``, default all of ``backbones.BACKBONE_NAMES``): one line of batched images/s of an
  untrained classifier on it (weights none, 224 px, float32; the same uploads, median of ``--repeats``).

The last line is ``bf16 speedup X.XXx, verdict agreement YY.Y%, max |dp| Z.ZZZ`` (speedup = batched images/s in
bf16 / in float32). On a CPU without avx512_bf16 or amx_bf16, where ``mixed_precision=auto`` stays float32 and
bf16 would only be emulated, the line says so and reports 1.00x. Timings on a shared machine are noisy: the
load average is printed with them.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SAMPLE = ROOT.parent / "shared" / "breakhis_sample"
IDC = ROOT.parent / "shared" / "idc_sample"


def training_manifest(folder: Path, idc: int, seed: int) -> Path:
    """A manifest CSV of every BreakHis sample image (patient = slide) and ``idc`` IDC patches (paths absolute)."""
    from breakhis_core import CLASS_NAMES
    from breakhis_core.data.records import parse_breakhis_name

    rows = []
    for path in sorted(SAMPLE.rglob("*.png")):
        name = parse_breakhis_name(path.name)
        rows.append((str(path), CLASS_NAMES[name["label"]], f"breakhis-{name['slide']}"))
    with open(IDC / "manifest.csv", newline="") as handle:
        idc_rows = list(csv.DictReader(handle))
    random.Random(seed).shuffle(idc_rows)
    rows += [(str(IDC / row["path"]), row["label"], f"idc-{row['patient']}") for row in idc_rows[:idc]]
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient"])
        writer.writerows(rows)
    return manifest


def train_bench_model(args, folder: Path) -> tuple[Path, str]:
    """Train the bench's model in a child process; returns its fine-tuned model file and a description."""
    from breakhis_core.runs.rundir import RunDir

    manifest = training_manifest(folder, args.idc, args.seed)
    command = [sys.executable, "-m", "breakhis_core", "train", str(manifest), "--runs", str(folder / "runs"),
               "--weights", "none", "--recipe", "paper", "--input-size", "224", "--epochs-frozen", "25",
               "--epochs-finetune", "2", "--cache", "on", "--cache-views", "2", "--mixed-precision", "off",
               "--seed", str(args.seed), "--quiet"]
    env = {**os.environ, "BREAKHIS_CACHE": str(folder / "cache")}
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"training the bench model failed:\n{result.stderr[-3000:]}")
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    return RunDir(run_dir).model_file("finetuned"), (f"VGG16 trained here on 37 BreakHis + {args.idc} IDC real images (224×224, "
                                         f"weights none, paper recipe, 25 + 2 epochs, {time.perf_counter() - started:.0f} s)")


def load_model(args, folder: Path):
    """The float32 model to time and a description of it."""
    from breakhis_core.models import loading as model_loading
    from breakhis_core.runs import registry

    if args.model:
        return model_loading.load_model(args.model), f"model file {args.model}"
    if args.run:
        run = registry.load_run(args.run, args.runs)
        stage = args.stage or run.best_stage
        return model_loading.load_model(run.models[stage]), f"run {run.run_id} ({stage})"
    path, what = train_bench_model(args, folder)
    return model_loading.load_model(path), what


def backbone_speeds(names: list[str], uploads, upload_names, repeats: int) -> dict[str, list[float]]:
    """Batched images/s of each backbone's classifier (weights none, 224 px, float32) on ``uploads``, one per call."""
    from breakhis_core.inference.predict import Predictor
    from breakhis_core.models.classifier import build_model

    speeds = {}
    for name in names:
        predictor = Predictor(build_model(224, "none", seed=0, backbone=name), name, precision="off")
        predictor.predict(uploads, upload_names)  # warm: traces once
        calls = []
        for _ in range(repeats):
            started = time.perf_counter()
            predictor.predict(uploads, upload_names)
            calls.append(len(uploads) / (time.perf_counter() - started))
        speeds[name] = calls
    return speeds


def measure(predictor, uploads, names, images, files, repeats: int) -> dict:
    """Batched images/s, one image's prediction + Grad-CAM seconds and retraces of one Predictor."""
    import numpy as np

    started = time.perf_counter()
    predictor.predict(uploads[:1], names[:1], cam="gradcam")  # warm: traces the compiled functions once
    predictor.predict(uploads, names)
    warm_s = time.perf_counter() - started
    explainer = predictor.explainer
    functions = [f for f in (getattr(explainer, "_gradcam_fn", None), getattr(explainer, "_probabilities_fn", None)) if f is not None]
    traces_before = sum(f.experimental_get_tracing_count() for f in functions)
    batched = []
    for _ in range(repeats):
        started = time.perf_counter()
        predictor.predict(uploads, names)
        batched.append(len(uploads) / (time.perf_counter() - started))
    single = []
    for i in range(repeats * 2):
        started = time.perf_counter()
        (prediction,) = predictor.predict([images[i % len(images)]], [files[i % len(files)].name], cam="gradcam")
        single.append(time.perf_counter() - started)
    assert prediction.heatmap.shape == images[(repeats * 2 - 1) % len(images)].shape[:2]
    traces = sum(f.experimental_get_tracing_count() for f in functions) - traces_before
    return {"warm_s": warm_s, "batched": batched, "single": single, "traces": traces,
            "images_s": float(np.median(batched))}


def main(argv=None) -> int:
    from breakhis_core.config import STAGES
    from breakhis_core.models.backbones import BACKBONE_NAMES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="run id or folder whose model to time")
    parser.add_argument("--runs", default=None, help="runs folder for --run")
    parser.add_argument("--stage", default=None, choices=STAGES)
    parser.add_argument("--model", help="a .keras model file")
    parser.add_argument("--idc", type=int, default=300, help="IDC patches added to the bench model's training data")
    parser.add_argument("--agree-idc", type=int, default=400, help="IDC patches added to the agreement check")
    parser.add_argument("--batch", type=int, default=32, help="uploads per batched call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbones", nargs="*", default=None, choices=BACKBONE_NAMES,
                        help="backbones timed untrained after the model (default: all; none: --backbones with no name)")
    args = parser.parse_args(argv)

    from breakhis_core import runtime

    runtime.load_tensorflow()
    import numpy as np

    from breakhis_core.data.images import read_image
    from breakhis_core.inference.predict import Predictor

    files = sorted(SAMPLE.rglob("*.png"))
    if not files:
        print(f"no images in {SAMPLE}", file=sys.stderr)
        return 2
    images = [read_image(path) for path in files]
    uploads = [images[i % len(images)] for i in range(args.batch)]
    names = [files[i % len(files)].name for i in range(args.batch)]
    with open(IDC / "manifest.csv", newline="") as handle:
        idc_rows = list(csv.DictReader(handle))
    random.Random(args.seed + 1).shuffle(idc_rows)
    agreement_images = images + [read_image(IDC / row["path"]) for row in idc_rows[: args.agree_idc]]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        started = time.perf_counter()
        model, what = load_model(args, Path(tmp))
        load_s = time.perf_counter() - started
        predictors = {"float32": Predictor(model, "bench", precision="off"),
                      "bf16": Predictor(model, "bench", precision="on")}
        results = {name: measure(p, uploads, names, images, files, args.repeats) for name, p in predictors.items()}
        p_malignant = {name: np.array([q.p_malignant for q in p.predict(agreement_images)]) for name, p in predictors.items()}
    per_backbone = backbone_speeds(BACKBONE_NAMES if args.backbones is None else args.backbones, uploads, names,
                                   args.repeats)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"model: {what}; {os.cpu_count()} CPU cores; load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"model ready in {load_s:.1f} s; CPU bf16 flags: {', '.join(sorted(runtime.cpu_flags() & set(runtime.BF16_CPU_FLAGS))) or 'none'}")
    for name, r in results.items():
        print(f"[{name}] warm-up {r['warm_s']:.1f} s; batched prediction: {r['images_s']:.2f} images/s (median of "
              f"{len(r['batched'])} calls of {len(uploads)} 700×460 uploads; all {', '.join(f'{b:.2f}' for b in r['batched'])}); "
              f"one image + Grad-CAM: median {np.median(r['single']):.3f} s, p90 {np.percentile(r['single'], 90):.3f} s; "
              f"traces after warm-up: {r['traces']}")
    print(f"peak RSS {peak_mib:.0f} MiB (both predictors in one process)")
    same = (p_malignant["float32"] >= 0.5) == (p_malignant["bf16"] >= 0.5)
    max_dp = float(np.abs(p_malignant["float32"] - p_malignant["bf16"]).max())
    print(f"agreement on {len(same)} real images ({len(images)} BreakHis + {len(same) - len(images)} IDC): "
          f"{int(same.sum())} same verdicts; P(malignant) float32 mean {p_malignant['float32'].mean():.3f}, "
          f"share malignant {np.mean(p_malignant['float32'] >= 0.5):.2f}")
    for name, calls in per_backbone.items():
        print(f"[backbone {name}] batched prediction: {np.median(calls):.2f} images/s (weights none, 224 px, float32; "
              f"median of {len(calls)} calls of {len(uploads)} 700×460 uploads; all {', '.join(f'{c:.2f}' for c in calls)})")
    if runtime.choose_precision("auto", on_gpu=False).policy != runtime.MIXED_BFLOAT16:
        print(f"bf16 speedup 1.00x, verdict agreement 100.0%, max |dp| 0.000 (this CPU has no avx512_bf16/amx_bf16: "
              f"auto computes in float32; emulated bf16 ran at {results['bf16']['images_s'] / results['float32']['images_s']:.2f}x)")
    else:
        print(f"bf16 speedup {results['bf16']['images_s'] / results['float32']['images_s']:.2f}x, "
              f"verdict agreement {100 * same.mean():.1f}%, max |dp| {max_dp:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
