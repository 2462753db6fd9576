"""Does the paper's recipe learn? Patient-wise cross-validation on real data, beside three baselines on the same folds.

    python bench/learning.py                                   # ImageNet weights, BreakHis sample then IDC sample
    python bench/learning.py --data idc --idc-per-patient 20   # a quicker look
    python bench/learning.py --train-args "--lr-finetune 1e-5" # one experiment of docs/TRAINING.md

The starting weights default to ``imagenet``: when ``../shared/weights`` holds Keras' VGG16 no-top file, the bench
points a temporary ``KERAS_HOME`` at it (``weights.install_imagenet_weights``, a link), so nothing is downloaded and
the user's ``~/.keras`` is not touched; without it, the Keras cache (or its download) is used.

For each data set (``--data``: ``breakhis`` = ../shared/breakhis_sample, 37 BreakHis images of 23 slides, at
224 px; ``idc`` = ../shared/idc_sample, 50×50 IDC patches of 60 patients, ``--idc-per-patient`` of each patient's
patches at 64 px) the product runs as ``python -m breakhis_core train DATA --cv K`` (one process; every fold is
the full two-stage recipe, ``breakhis_core/crossval.py``). Its pooled out-of-fold predictions of **both stages**
(every patient predicted once, by the fold model that did not train on it) are set beside baselines fitted on
each fold's other patients and scored on exactly the same folds (the experiment's ``folds.csv``):

- feature-LR: scikit-learn logistic regression (standardised, class-balanced, C chosen by a patient-grouped inner
  3-fold search) on the frozen ImageNet base's average-pooled ``block5_pool`` features (the ``head_pool`` input
  of the frozen stage, same input size): the oracle the frozen stage must at least match;
- colour-LR: the same regression on per-channel RGB and HSV histograms (16 bins) and channel means and standard
  deviations of the image at 64×64;
- majority class: every test image gets the training images' majority class (AUC 0.5 by construction).

Patient-level AUC ranks patients by their mean P(malignant) over all their images (every magnification;
``evaluate.compute_metrics``' ``patient_auc``); 95 % CIs resample patients. Every IDC patient has both IDC-positive
and negative patches, so for IDC the verdict unit is a patient's patches of one class (two units a patient,
grouped by patient in the folds). The last line is that of the last data set run (IDC by default)::

    imagenet patient-auc frozen F.FFF finetuned T.TTT | feature-LR O.OOO | colour-LR C.CCC | majority M.MMM
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
SHARED_WEIGHTS = SHARED / "weights" / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
HISTOGRAM_BINS = 16
COLOUR_SIZE = 64


@dataclass(frozen=True)
class DataSet:
    """One bench data set: where it is, the input side the pipeline uses, and whether patients carry both classes."""

    source: Path
    input_size: int
    mixed_patients: bool


DATASETS = {
    "breakhis": DataSet(SHARED / "breakhis_sample", 224, False),
    "idc": DataSet(SHARED / "idc_sample" / "manifest.csv", 64, True),
}


@dataclass(frozen=True)
class Scores:
    """Out-of-fold P(malignant) ``(N,)`` of one method, in the order of :class:`Pooled`'s images."""

    method: str
    p_malignant: np.ndarray


@dataclass(frozen=True)
class Pooled:
    """The pooled out-of-fold images of one experiment: paths, labels, patients and fold numbers, ``(N,)`` each."""

    paths: list[str]
    labels: np.ndarray
    patients: np.ndarray
    folds: np.ndarray


def use_shared_imagenet_weights(folder: Path) -> str | None:
    """Point KERAS_HOME at ``folder`` holding a link to the shared ImageNet file; the KERAS_HOME set, or None."""
    if not SHARED_WEIGHTS.is_file():
        return None
    from breakhis_core.models.weights import install_imagenet_weights

    install_imagenet_weights(SHARED_WEIGHTS, folder, link=True)
    os.environ["KERAS_HOME"] = str(folder)
    return str(folder)


def subset(source: Path, per_patient: int, seed: int, folder: Path) -> Path:
    """A manifest of at most ``per_patient`` images of every patient of ``source`` (``source`` itself when 0)."""
    from breakhis_core.data.records import scan

    if not per_patient:
        return source
    by_patient = defaultdict(list)
    for record in scan(source, verify=False).records:
        by_patient[record.patient].append(record)
    rng = random.Random(seed)
    manifest = folder / f"{source.stem}-{per_patient}-per-patient.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient", "magnification"])
        for patient, records in sorted(by_patient.items()):
            for record in rng.sample(records, min(per_patient, len(records))):
                writer.writerow([record.path, record.label, record.patient, record.magnification or ""])
    return manifest


def run_pipeline(data: Path, args, input_size: int, runs: Path) -> Path:
    """``python -m breakhis_core train DATA --cv K`` in its own process; returns the experiment folder."""
    command = [sys.executable, "-m", "breakhis_core", "train", str(data), "--cv", str(args.folds), "--runs", str(runs),
               "--weights", args.weights, "--input-size", str(input_size), "--epochs-frozen", str(args.epochs_frozen),
               "--epochs-finetune", str(args.epochs_finetune), "--seed", str(args.seed), "--quiet",
               *shlex.split(args.train_args)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if done.returncode != 0:
        sys.exit(f"the pipeline failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def read_pooled(exp_dir: Path) -> tuple[Pooled, list[Scores]]:
    """The experiment's out-of-fold table: its images and each stage's scores."""
    from breakhis_core.config import STAGES
    from breakhis_core.evaluation.metrics import PredictionColumn, stage_column
    from breakhis_core.runs.experimentdir import ExperimentDir
    from breakhis_core.training.crossval import FOLD_COLUMN

    with open(ExperimentDir(exp_dir).oof_file, newline="") as handle:
        rows = list(csv.DictReader(handle))
    pooled = Pooled([r[PredictionColumn.PATH] for r in rows], np.array([int(r[PredictionColumn.LABEL]) for r in rows]),
                    np.array([r[PredictionColumn.PATIENT] for r in rows]), np.array([int(r[FOLD_COLUMN]) for r in rows]))
    stages = [s for s in STAGES if rows and rows[0].get(stage_column(s))]
    return pooled, [Scores(s, np.array([float(r[stage_column(s)]) for r in rows])) for s in stages]


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


def imagenet_features(images: np.ndarray, weights: str, batch_size: int = 32) -> np.ndarray:
    """``(N, 512)`` average-pooled ``block5_pool`` features of the frozen base (the frozen stage's head input)."""
    import keras

    from breakhis_core.models.classifier import build_model

    model = build_model(images.shape[1], weights=weights)
    features = keras.Model(model.input, model.get_layer("head_pool").output)
    return np.concatenate([np.asarray(features(images[i : i + batch_size].astype(np.float32)))
                           for i in range(0, len(images), batch_size)])


def fold_regression(features: np.ndarray, pooled: Pooled, seed: int) -> np.ndarray:
    """Out-of-fold P(malignant) of a logistic regression fitted on each fold's other patients (C by inner CV)."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    scores = np.zeros(len(pooled.labels))
    for fold in sorted(set(pooled.folds.tolist())):
        test, train = pooled.folds == fold, pooled.folds != fold
        inner = list(GroupKFold(3).split(features[train], pooled.labels[train], pooled.patients[train]))
        model = make_pipeline(StandardScaler(), LogisticRegressionCV(
            Cs=np.logspace(-4, 1, 6), cv=inner, scoring="roc_auc", class_weight="balanced", max_iter=3000,
            random_state=seed))
        model.fit(features[train], pooled.labels[train])
        scores[test] = model.predict_proba(features[test])[:, 1]
    return scores


def baselines(pooled: Pooled, input_size: int, weights: str, seed: int) -> list[Scores]:
    """feature-LR, colour-LR and majority class, each fitted per fold on the same folds as the pipeline."""
    from breakhis_core.data.records import ImageRecord
    from breakhis_core.data.arrays import load_arrays

    records = [ImageRecord(path, int(label), str(patient)) for path, label, patient in
               zip(pooled.paths, pooled.labels, pooled.patients)]
    images = load_arrays(records, input_size).images
    colour = load_arrays(records, COLOUR_SIZE).images
    majority = np.zeros(len(pooled.labels))
    for fold in sorted(set(pooled.folds.tolist())):
        majority[pooled.folds == fold] = float(np.mean(pooled.labels[pooled.folds != fold]) >= 0.5)
    return [Scores("feature-LR", fold_regression(imagenet_features(images, weights), pooled, seed)),
            Scores("colour-LR", fold_regression(colour_features(colour), pooled, seed)),
            Scores("majority", majority)]


def summarise(pooled: Pooled, methods: list[Scores], mixed_patients: bool, seed: int) -> dict[str, dict]:
    """``evaluate.compute_metrics`` overall summary per method; with mixed patients the patient unit is patient × class."""
    from breakhis_core.evaluation.metrics import compute_metrics

    units = np.char.add(np.char.add(pooled.patients.astype(str), ":"), pooled.labels.astype(str)) \
        if mixed_patients else pooled.patients
    return {m.method: compute_metrics(pooled.labels, m.p_malignant, units, seed=seed)["overall"] for m in methods}


def show(title: str, results: dict[str, dict], n_patients: int, seconds: float) -> None:
    from breakhis_core.evaluation.metrics import format_metric

    first = next(iter(results.values()))
    print(f"\n{title}: pooled out-of-fold, {first['n_images']} images of {n_patients} patients "
          f"({first['n_patients']} verdict units), pipeline {seconds / 60:.1f} min")
    columns = (("patient AUC", "patient_auc"), ("patient verdict acc.", "patient_verdict_accuracy"),
               ("image AUC", "roc_auc"), ("image acc.", "image_accuracy"))
    print(f"  {'method':<18}" + "".join(f"{name:>26}" for name, _ in columns))
    for method, summary in results.items():
        print(f"  {method:<18}" + "".join(f"{format_metric(summary[key]):>26}" for _, key in columns))


def value(summary: dict, name: str = "patient_auc") -> str:
    metric = summary[name]["value"]
    return "n/a" if metric is None else f"{metric:.3f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="+", default=["breakhis", "idc"], choices=sorted(DATASETS))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--idc-per-patient", type=int, default=40,
                        help="IDC patches taken from every patient (0 = all 5,020)")
    parser.add_argument("--weights", default="imagenet", help="imagenet | none | PATH to VGG16 no-top weights")
    parser.add_argument("--epochs-frozen", type=int, default=10)
    parser.add_argument("--epochs-finetune", type=int, default=5)
    parser.add_argument("--train-args", default="", help="further `train` options, e.g. \"--lr-finetune 1e-5\"")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", default=None, help="keep the runs in this folder (default: a temporary one)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")
    with tempfile.TemporaryDirectory(prefix="learning-") as scratch:
        scratch = Path(scratch)
        if args.weights == "imagenet":
            home = use_shared_imagenet_weights(scratch / "keras")
            print(f"ImageNet weights: {'../shared/weights via KERAS_HOME=' + home if home else 'the Keras cache'}")
        runs = Path(args.keep) if args.keep else scratch / "runs"
        line = ""
        for name in args.data:
            dataset = DATASETS[name]
            data = subset(dataset.source, args.idc_per_patient if name == "idc" else 0, args.seed, scratch)
            started = time.monotonic()
            exp_dir = run_pipeline(data, args, dataset.input_size, runs)
            seconds = time.monotonic() - started
            pooled, stages = read_pooled(exp_dir)
            methods = stages + baselines(pooled, dataset.input_size, args.weights, args.seed)
            results = summarise(pooled, methods, dataset.mixed_patients, args.seed)
            show(f"{name} ({args.folds}-fold, weights {args.weights}, {dataset.input_size} px; {exp_dir.name})",
                 results, len(set(pooled.patients.tolist())), seconds)
            get = lambda method: value(results[method]) if method in results else "n/a"  # noqa: E731
            line = (f"{args.weights if args.weights in ('imagenet', 'none') else 'file'} patient-auc "
                    f"frozen {get('frozen')} finetuned {get('finetuned')} | feature-LR {get('feature-LR')} | "
                    f"colour-LR {get('colour-LR')} | majority {get('majority')}")
            (scratch / f"{name}.json").write_text(json.dumps(results, default=str))
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
