"""Validation curves of small random-init runs on real IDC patches: which setting makes training unstable.

Trains a few small runs on the same patient-wise split of a subset of the IDC patches
(``../shared/idc_sample``) with ``weights none`` and prints, per run, one line per epoch
(stage, epoch, loss, val_loss, val_accuracy), the kept epochs and the learning check, then the
test ROC AUC of both deployed models. Variants (``--variants``, comma-separated):

- ``paper-bn099``  the paper's recipe, head BatchNormalization momentum 0.99 (Keras' default)
- ``paper``        the paper's recipe, head_bn momentum ``model.HEAD_BN_MOMENTUM``
- ``paper-plain``  as ``paper``, on the plain ``model.fit`` path instead of the cached one
- ``paper-plain-bn099``, ``paper-plain-noaug``, ``paper-plain-lr1e-4``: the plain path with head_bn
  momentum 0.99, without augmentation, or with stage 1 at Adam 1e-4
- ``scratch``      the from-scratch recipe (stage 2 trains every base layer; plain path)

Usage::

    python bench/stability.py --patients 12 --size 32 --epochs 6,6 --variants paper-bn099,paper,scratch

Last line: ``stability: <variant> frozen AUC x / finetuned AUC y; ...``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from breakhis_core.models import classifier as model_module  # noqa: E402
from breakhis_core.config import STAGES, TrainConfig  # noqa: E402
from breakhis_core.training.setup import prepare_run  # noqa: E402
from breakhis_core.runs.rundir import RunDir  # noqa: E402
from breakhis_core.training.train import run_training  # noqa: E402

IDC = REPO.parent / "shared" / "idc_sample"
VARIANTS = {
    "paper-bn099": dict(recipe="paper", bn_momentum=0.99),
    "paper": dict(recipe="paper"),
    "paper-plain": dict(recipe="paper", cache="off"),
    "paper-plain-bn099": dict(recipe="paper", cache="off", bn_momentum=0.99),
    "paper-plain-noaug": dict(recipe="paper", cache="off", augment=False),
    "paper-plain-lr1e-4": dict(recipe="paper", cache="off", lr_frozen=1e-4),
    "scratch": dict(recipe="scratch"),
}


def subset_manifest(patients: int, out: Path) -> Path:
    """A manifest of the first ``patients`` patients of the IDC sample (absolute paths)."""
    with open(IDC / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    keep = sorted({r["patient"] for r in rows})[:patients]
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient"])
        for r in rows:
            if r["patient"] in keep:
                writer.writerow([str(IDC / r["path"]), r["label"], r["patient"]])
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", default="6,6", help="stage 1,stage 2 epochs")
    parser.add_argument("--variants", default="paper-bn099,paper,scratch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    frozen_epochs, finetune_epochs = (int(x) for x in args.epochs.split(","))
    summary = []
    with tempfile.TemporaryDirectory(prefix="stability-") as folder:
        manifest = subset_manifest(args.patients, Path(folder) / "manifest.csv")
        for name in args.variants.split(","):
            options = dict(VARIANTS[name])
            model_module.HEAD_BN_MOMENTUM = options.pop("bn_momentum", 0.9)
            config = TrainConfig(data=str(manifest), weights="none", input_size=args.size, epochs_frozen=frozen_epochs,
                                 epochs_finetune=finetune_epochs, batch_size=32, device="cpu", seed=args.seed,
                                 cache_views=2, keep_epoch="best_val_loss", **options)
            run_dir = prepare_run(config, Path(folder) / "runs")
            run_training(run_dir)
            run = RunDir(run_dir)
            info = run.read_info()
            metrics = json.loads(run.metrics_file.read_text())
            print(f"## {name} ({info['training_path']}, head_bn momentum {model_module.HEAD_BN_MOMENTUM})")
            print("| stage | epoch | loss | val_loss | val_accuracy |")
            print("|---|---|---|---|---|")
            for stage in STAGES:
                for r in run.read_history(stage):
                    print(f"| {stage} | {r['epoch']} | {r['loss']:.3f} | {r['val_loss']:.3f} | {r['val_accuracy']:.3f} |")
            print("kept:", json.dumps(info.get("kept_epochs")))
            checks = info.get("learning_check") or {}
            print("learning check:", {s: (c["ok"], c["splits"].get("val", {}).get("roc_auc")) for s, c in checks.items()})
            aucs = {s: metrics["models"][s]["overall"]["roc_auc"]["value"] for s in STAGES}
            summary.append(f"{name} frozen AUC {aucs['frozen']:.3f} / finetuned AUC {aucs['finetuned']:.3f}")
            print(flush=True)
    print("stability: " + "; ".join(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
