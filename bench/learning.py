"""Does the pipeline learn? K-fold patient-wise cross-validation on real data, beside two baselines on the same folds.

    python bench/learning.py                                   # IDC sample then BreakHis sample, 5 folds, weights none
    python bench/learning.py --weights /path/to/vgg16_notop.h5 --epochs-frozen 10 --epochs-finetune 5
    python bench/learning.py --data idc --limit 600 --folds 3  # a quicker look

For each data set (``--data``: ``idc`` = ../shared/idc_sample, 5,020 50×50 IDC patches of 60 patients;
``breakhis`` = ../shared/breakhis_sample, 37 BreakHis images of 23 slides; default both) the pipeline runs as
``python -m breakhis_core train DATA --cv K`` (one process: every fold is the full two-stage recipe, see
``breakhis_core/crossval.py``). Its pooled out-of-fold predictions (every patient predicted once, by the fold
model that did not train on it) are set beside two baselines scored on exactly the same folds
(the experiment's ``folds.csv``), each trained on the fold's other patients:

- majority class: every test image gets the training images' majority class (its AUC is 0.5 by construction);
- colour-LR: scikit-learn logistic regression (standardised, class-balanced) on per-channel RGB and HSV
  histograms (16 bins each) plus channel means and standard deviations of the image resized to 64×64.

Patient-level accuracy is the patient recognition rate (the mean over patients of their image accuracy, the
paper's); AUC is image-level; 95 % CIs resample patients (``evaluate.compute_metrics``). ``--limit`` takes that
many images evenly from every patient (0 = all). Prints one table per data set; the last line is that of the last
data set run (IDC by default is run last)::

    pipeline patient-acc X.XXX auc Y.YYY | majority M.MMM | colour-LR C.CCC auc D.DDD
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
DATASETS = {"breakhis": SHARED / "breakhis_sample", "idc": SHARED / "idc_sample" / "manifest.csv"}
HISTOGRAM_BINS = 16
FEATURE_SIZE = 64


def subset(source: Path, limit: int, seed: int, folder: Path) -> Path:
    """A manifest of ``limit`` images taken round-robin from every patient of ``source`` (``source`` when limit is 0)."""
    from breakhis_core.data import scan

    records = scan(source, verify=False).records
    if not limit or limit >= len(records):
        return source
    by_patient = defaultdict(list)
    for record in records:
        by_patient[record.patient].append(record)
    rng = random.Random(seed)
    queues = [rng.sample(items, len(items)) for _, items in sorted(by_patient.items())]
    chosen = []
    while len(chosen) < limit:
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(queue.pop())
    manifest = folder / f"{source.stem}-{limit}.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient", "magnification"])
        for record in chosen:
            writer.writerow([record.path, record.label, record.patient, record.magnification or ""])
    return manifest


def run_pipeline(data: Path, args, runs: Path) -> Path:
    """``python -m breakhis_core train DATA --cv K`` in its own process; returns the experiment folder."""
    command = [sys.executable, "-m", "breakhis_core", "train", str(data), "--cv", str(args.folds), "--runs", str(runs),
               "--weights", args.weights, "--input-size", str(args.input_size), "--epochs-frozen", str(args.epochs_frozen),
               "--epochs-finetune", str(args.epochs_finetune), "--batch-size", str(args.batch_size),
               "--cache-views", str(args.cache_views), "--seed", str(args.seed), "--quiet"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if done.returncode != 0:
        sys.exit(f"the pipeline failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def colour_features(images: np.ndarray) -> np.ndarray:
    """``(N, 6 * HISTOGRAM_BINS + 12)`` float features of ``(N, S, S, 3)`` uint8 RGB images."""
    import cv2

    rows = []
    for image in images:
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        parts = []
        for space, ranges in ((image, (256, 256, 256)), (hsv, (180, 256, 256))):
            for channel in range(3):
                counts, _ = np.histogram(space[..., channel], bins=HISTOGRAM_BINS, range=(0, ranges[channel]))
                parts.append(counts / counts.sum())
            parts.append(space.reshape(-1, 3).mean(axis=0) / 255.0)
            parts.append(space.reshape(-1, 3).std(axis=0) / 255.0)
        rows.append(np.concatenate(parts))
    return np.array(rows)


def baselines(exp_dir: Path, seed: int) -> dict:
    """Pooled out-of-fold metrics of the majority class and of colour-LR on the experiment's folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from breakhis_core.crossval import load_experiment, read_folds
    from breakhis_core.data import filter_magnification, load_arrays, scan
    from breakhis_core.evaluate import compute_metrics

    experiment = load_experiment(exp_dir)
    config = experiment.config
    folds = read_folds(exp_dir)
    records = filter_magnification(scan(config.data).records, config.magnification_filter)
    loaded = load_arrays(records, FEATURE_SIZE)
    images, labels, records = loaded.images, loaded.labels, loaded.records
    patients = np.array([r.group(config.group_by) for r in records])
    fold_of = np.array([folds[p] for p in patients])
    features = colour_features(images)
    majority, colour = np.zeros(len(records)), np.zeros(len(records))
    for fold in sorted(set(fold_of.tolist())):
        test, train = fold_of == fold, fold_of != fold
        majority[test] = float(np.mean(labels[train]) >= 0.5)
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced", random_state=seed))
        model.fit(features[train], labels[train])
        colour[test] = model.predict_proba(features[test])[:, 1]
    return {name: compute_metrics(labels, scores, patients, seed=seed)["overall"]
            for name, scores in (("majority", majority), ("colour-LR", colour))}


def show(name: str, results: dict[str, dict]) -> None:
    from breakhis_core.evaluate import format_metric

    print(f"\n{name}: pooled out-of-fold, {results['pipeline']['n_images']} images of {results['pipeline']['n_patients']} patients")
    print(f"  {'method':<12}{'patient-level accuracy':>28}{'image-level accuracy':>28}{'AUC':>28}")
    for method, m in results.items():
        auc = format_metric(m["roc_auc"]) if method != "majority" else "0.500 (constant)"
        print(f"  {method:<12}{format_metric(m['patient_recognition_rate']):>28}{format_metric(m['image_accuracy']):>28}{auc:>28}")
    pipeline, others = results["pipeline"], {k: v for k, v in results.items() if k != "pipeline"}
    beaten = [k for k, v in others.items() if (pipeline["patient_recognition_rate"]["value"] or 0) <= (v["patient_recognition_rate"]["value"] or 0)]
    if beaten:
        print(f"  NOTE: the pipeline does not beat {', '.join(beaten)} on patient-level accuracy here "
              "(few patients or epochs, or no pretrained weights: see the README's learning check)")


def _value(summary: dict, name: str) -> str:
    value = summary[name]["value"]
    return "n/a" if value is None else f"{value:.3f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="+", default=["breakhis", "idc"], choices=sorted(DATASETS))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--limit", type=int, default=0, help="images per data set, evenly from every patient (0 = all)")
    parser.add_argument("--weights", default="none", help="none | imagenet | PATH to VGG16 no-top weights")
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--epochs-frozen", type=int, default=10)
    parser.add_argument("--epochs-finetune", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cache-views", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", default=None, help="keep the runs in this folder (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="learning-") as scratch:
        runs = Path(args.keep) if args.keep else Path(scratch) / "runs"
        line = ""
        for name in args.data:
            data = subset(DATASETS[name], args.limit, args.seed, Path(scratch))
            exp_dir = run_pipeline(data, args, runs)
            pooled = json.loads((exp_dir / "cv_metrics.json").read_text())["pooled"]
            stage = "finetuned" if "finetuned" in pooled else "frozen"
            results = {"pipeline": pooled[stage]["overall"], **baselines(exp_dir, args.seed)}
            show(f"{name} ({args.folds}-fold, {stage} model, weights {args.weights}; {exp_dir.name})", results)
            p, m, c = results["pipeline"], results["majority"], results["colour-LR"]
            line = (f"pipeline patient-acc {_value(p, 'patient_recognition_rate')} auc {_value(p, 'roc_auc')} | "
                    f"majority {_value(m, 'patient_recognition_rate')} | "
                    f"colour-LR {_value(c, 'patient_recognition_rate')} auc {_value(c, 'roc_auc')}")
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
