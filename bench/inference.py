"""Inference speed: batched prediction and one image's prediction + Grad-CAM, through the public ``Predictor``.

    python bench/inference.py                     # a VGG16 classifier at 224×224 (ImageNet base if cached, else random)
    python bench/inference.py --run RUN_ID        # a trained run's model (--stage frozen|finetuned, --runs ROOT)
    python bench/inference.py --model FILE.keras

Images are the real 700×460 BreakHis sample (../shared/breakhis_sample), decoded once; the timings
include resizing to the model input, as in the app. Prints figures, not pass/fail:

- batched prediction: images/s over ``--batch`` uploads in one ``Predictor.predict`` call (median of ``--repeats``);
- one image, prediction + Grad-CAM (heat map at 700×460): median and p90 seconds over ``--repeats`` requests;
- tf.function traces after warm-up (0 = no retracing per request) and peak RSS.

Timings on a shared machine are noisy: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SAMPLE = ROOT.parent / "shared" / "breakhis_sample"


def load_predictor(args):
    from breakhis_core import registry
    from breakhis_core.model import WEIGHTS_FILE, build_model
    from breakhis_core.predict import Predictor

    if args.model:
        return Predictor.from_file(args.model), f"model file {args.model}"
    if args.run:
        run = registry.load_run(args.run, args.runs)
        return Predictor.from_run(run, args.stage), f"run {run.run_id} ({args.stage or run.best_stage})"
    cached = (Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models" / WEIGHTS_FILE).is_file()
    weights = "imagenet" if cached else "none"
    model = build_model(args.input_size, weights=weights, seed=0)
    return Predictor(model, "bench"), f"fresh VGG16 classifier at {args.input_size}×{args.input_size}, weights {weights}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="run id or folder whose model to time")
    parser.add_argument("--runs", default=None, help="runs folder for --run")
    parser.add_argument("--stage", default=None, choices=["frozen", "finetuned"])
    parser.add_argument("--model", help="a .keras model file")
    parser.add_argument("--input-size", type=int, default=224, help="input side of the fresh model (default 224)")
    parser.add_argument("--batch", type=int, default=32, help="uploads per batched call")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    import numpy as np

    from breakhis_core.images import read_image

    files = sorted(SAMPLE.rglob("*.png"))
    if not files:
        print(f"no images in {SAMPLE}", file=sys.stderr)
        return 2
    images = [read_image(path) for path in files]
    uploads = [images[i % len(images)] for i in range(args.batch)]
    names = [files[i % len(files)].name for i in range(args.batch)]
    load_before = os.getloadavg()
    started = time.perf_counter()
    predictor, what = load_predictor(args)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    predictor.predict(uploads[:1], names[:1], cam="gradcam")  # warm: traces the compiled functions once
    predictor.predict(uploads, names)
    warm_s = time.perf_counter() - started
    explainer = predictor.explainer
    functions = [f for f in (getattr(explainer, "_gradcam_fn", None), getattr(explainer, "_probabilities_fn", None)) if f is not None]
    traces_before = sum(f.experimental_get_tracing_count() for f in functions)

    batched = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        predictor.predict(uploads, names)
        batched.append(len(uploads) / (time.perf_counter() - started))
    single = []
    for i in range(args.repeats * 2):
        started = time.perf_counter()
        (prediction,) = predictor.predict([images[i % len(images)]], [files[i % len(files)].name], cam="gradcam")
        single.append(time.perf_counter() - started)
    assert prediction.heatmap.shape == images[(args.repeats * 2 - 1) % len(images)].shape[:2]
    traces = sum(f.experimental_get_tracing_count() for f in functions) - traces_before
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"model: {what}; {os.cpu_count()} CPU cores; load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"load {load_s:.1f} s, warm-up {warm_s:.1f} s (one prediction + Grad-CAM and one batch, traced once)")
    print(f"batched prediction: {np.median(batched):.2f} images/s (median of {len(batched)} calls of {len(uploads)} "
          f"700×460 uploads, resize included; all {', '.join(f'{b:.2f}' for b in batched)})")
    print(f"one 700×460 image, prediction + Grad-CAM: median {np.median(single):.3f} s, p90 {np.percentile(single, 90):.3f} s "
          f"({len(single)} requests)")
    print(f"tf.function traces after warm-up: {traces}")
    print(f"peak RSS {peak_mib:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
