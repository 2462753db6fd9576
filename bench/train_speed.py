"""Training speed: the plain ``model.fit`` path against the cached path, same data, epochs and seed.

    python bench/train_speed.py                                  # 224×224, 96 IDC images, 3 + 3 epochs measured
    python bench/train_speed.py --measure-epochs 0 --input-size 64 --limit 600 --cache-views 4   # all 25 + 20 epochs
    python bench/train_speed.py --data /path/to/BreaKHis_v1 --limit 0 --weights imagenet --measure-epochs 0

Each path is one ``python -m breakhis_core train`` process (``--no-cache`` / ``--cache on``) with a fresh
activation cache folder, so the cached path pays for building its cache. Default data: the real IDC
patches of ../shared/idc_sample, ``--limit`` images taken evenly from its 60 patients (patient-wise
split); ``--data`` takes a BreakHis folder or manifest (``--limit 0`` = all of it).

The paper trains 25 + 20 epochs (``--epochs-frozen``, ``--epochs-finetune``). By default each path runs
only ``--measure-epochs`` (3) epochs per stage, and its total for the full epochs is extrapolated by
adding the missing epochs at the measured steady-state seconds per epoch (the first epoch, which traces
the functions, is not used as a rate) plus the median time to save an epoch's checkpoint; everything else
(loading, caching, evaluation) is measured.
``--measure-epochs 0`` runs every epoch. Validation accuracies are those after the epochs that ran.

Paths: ``plain`` (``--no-cache``), ``cached`` (float32) and ``cached-bf16`` (the cached path in
mixed_bfloat16, what ``--mixed-precision auto`` picks on CPUs with avx512_bf16/amx_bf16); the plain and
cached paths run in float32 (``--mixed-precision off``) so that the figures compare like with like.

Prints figures, not pass/fail: per path the total seconds, the cache build, seconds per epoch of each
stage, both stages' final validation accuracy, peak RSS; then their ratios, also per training image without the
fixed per-run costs (what a large data set such as BreakHis tends to). The last line is
``speedup X.Xx`` (plain total / cached total for the full epochs, medians over ``--repeats``; with
several ``--cache-views``, for the default number of views, else the first).
Timings on a shared machine are noisy: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
IDC = ROOT.parent / "shared" / "idc_sample" / "manifest.csv"
BREAKHIS_TRAIN = 5536
"""Training images of BreakHis (7,909) under a 7:2:1 split."""


def subset_manifest(source: str, limit: int, seed: int, folder: Path) -> tuple[Path, str]:
    """A manifest of ``limit`` images taken evenly from every patient of ``source`` (all when limit is 0)."""
    from breakhis_core.data.records import scan

    records = scan(source, verify=False).records
    by_patient = defaultdict(list)
    for record in records:
        by_patient[record.patient].append(record)
    rng = random.Random(seed)
    chosen = []
    if limit and limit < len(records):
        queues = []
        for patient in sorted(by_patient):
            items = sorted(by_patient[patient], key=lambda r: r.path)
            rng.shuffle(items)
            queues.append(items)
        while len(chosen) < limit:  # round robin over the patients
            for queue in queues:
                if queue and len(chosen) < limit:
                    chosen.append(queue.pop())
    else:
        chosen = records
    path = folder / "manifest.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient", "magnification"])
        for record in chosen:
            writer.writerow([record.path, record.label, record.patient, record.magnification or ""])
    return path, f"{len(chosen)} images of {len({r.patient for r in chosen})} patients from {source}"


def run_path(path: str, views: int | None, precision: str, manifest: Path, args, work: Path, index: int) -> dict:
    """Train one run with the plain or cached path (``views`` cached views) in a child process; its figures.

    ``precision``: "float32" (``--mixed-precision off``) or "bf16" (``--mixed-precision on``: mixed_bfloat16 on a CPU).
    """
    from breakhis_core.runs.rundir import RunDir

    name = (path if views is None else f"{path}-{views}") + ("-bf16" if precision == "bf16" else "")
    runs = work / f"runs-{name}-{index}"
    command = [
        sys.executable, "-m", "breakhis_core", "train", str(manifest), "--runs", str(runs), "--quiet",
        "--weights", args.weights, "--input-size", str(args.input_size), "--epochs-frozen", str(_ran(args.epochs_frozen, args)),
        "--epochs-finetune", str(_ran(args.epochs_finetune, args)), "--batch-size", str(args.batch_size), "--seed", str(args.seed),
        "--device", "cpu", "--split", "patient", "--recipe", "paper",  # the paper's stages on either weights
        "--mixed-precision", "on" if precision == "bf16" else "off",
    ]
    command += ["--no-cache"] if path == "plain" else ["--cache", "on", "--cache-views", str(views)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "BREAKHIS_CACHE": str(work / f"cache-{name}-{index}")}
    load = os.getloadavg()[0]
    out_path, err_path = work / f"{name}-{index}.out", work / f"{name}-{index}.err"
    started = time.monotonic()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own resource usage (peak RSS)
        process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    if process.returncode:
        raise SystemExit(f"{path} run failed ({process.returncode}):\n{err_path.read_text()[-3000:]}")
    run_dir = Path(out_path.read_text().strip().splitlines()[-1])
    run = RunDir(run_dir)
    info = run.read_info()
    cached = info.get("cache") or {}
    result = {"path": name, "total_s": seconds, "cache_s": cached.get("seconds", 0.0) + cached.get("features_seconds", 0.0),
              "cache_size": cached.get("size", "-"), "training_path": info.get("training_path"),
              "counts": info["split"]["counts"], "load": (load + os.getloadavg()[0]) / 2}
    extrapolated = seconds
    for stage, target in (("frozen", args.epochs_frozen), ("finetuned", args.epochs_finetune)):
        lines = run.read_history(stage)
        later = [line["seconds"] for line in lines[1:]] or [lines[0]["seconds"]]
        result[f"{stage}_first_s"] = lines[0]["seconds"]
        result[f"{stage}_epoch_s"] = median(later)
        result[f"{stage}_checkpoint_s"] = median(line.get("checkpoint_s", 0.0) for line in lines)
        result[f"{stage}_val_acc"] = lines[-1].get("val_accuracy")
        result[f"{stage}_val_acc_last5"] = sum(line.get("val_accuracy", 0.0) for line in lines[-5:]) / len(lines[-5:])
        extrapolated += (target - len(lines)) * (result[f"{stage}_epoch_s"] + result[f"{stage}_checkpoint_s"])
    result["measured_s"] = seconds
    result["total_s"] = extrapolated
    result["peak_mib"] = usage.ru_maxrss / 1024
    return result


def _per_image(row: dict, args, counts: dict) -> float:
    """Seconds per training image of the work that grows with the data: cache build and all epochs (val included)."""
    epochs = args.epochs_frozen * row["frozen_epoch_s"] + args.epochs_finetune * row["finetuned_epoch_s"]
    return (row["cache_s"] + epochs) / counts["train"]["images"]


def _ran(target: int, args) -> int:
    """Epochs a stage actually runs: all, or ``--measure-epochs`` of them."""
    return target if not args.measure_epochs else min(target, args.measure_epochs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(IDC), help="BreakHis folder or manifest CSV (default: the IDC sample)")
    parser.add_argument("--limit", type=int, default=96, help="images taken evenly over the patients; 0 = all")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--epochs-frozen", type=int, default=25)
    parser.add_argument("--epochs-finetune", type=int, default=20)
    parser.add_argument("--measure-epochs", type=int, default=3,
                        help="epochs run per stage, the rest extrapolated from their rate; 0 = run every epoch")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cache-views", default=None,
                        help="views cached per image; several, comma-separated, run one cached path each "
                             "(default: the TrainConfig default)")
    parser.add_argument("--weights", default="none", help="none (default: no download needed), imagenet or a .h5 file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="run every path this many times; medians are printed")
    parser.add_argument("--paths", default="plain,cached,cached-bf16",
                        help="which paths to run, comma-separated: plain, cached (float32), cached-bf16 (mixed_bfloat16)")
    parser.add_argument("--keep", default=None, help="keep the runs and caches in this folder")
    args = parser.parse_args(argv)
    from breakhis_core.config import TrainConfig

    default_views = TrainConfig().cache_views
    views = [int(v) for v in str(args.cache_views or default_views).split(",")]
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="train-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    manifest, described = subset_manifest(args.data, args.limit, args.seed, work)
    paths = [p.strip() for p in args.paths.split(",")]
    plan = [("plain", None, "float32")] if "plain" in paths else []
    plan += [("cached", k, "float32") for k in views if "cached" in paths]
    plan += [("cached", k, "bf16") for k in views if "cached-bf16" in paths]
    ran = f"{_ran(args.epochs_frozen, args)} + {_ran(args.epochs_finetune, args)}"
    full = f"{args.epochs_frozen} + {args.epochs_finetune}"
    print(f"data: {described}; {args.input_size}×{args.input_size}, epochs {full}"
          + (f" ({ran} run, the rest extrapolated)" if ran != full else ""))
    print(f"batch {args.batch_size}, seed {args.seed}, weights {args.weights}, cached views {', '.join(map(str, views))}")
    print(f"machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at start (other work slows every path)",
          flush=True)
    results = defaultdict(list)
    for index in range(args.repeats):
        for path, k, precision in plan:
            result = run_path(path, k, precision, manifest, args, work, index)
            results[result["path"]].append(result)
            print(_line(result), flush=True)
    counts = next(iter(results.values()))[0]["counts"]
    print(f"split: train {counts['train']['images']}, val {counts['val']['images']}, test {counts['test']['images']} images")
    summary = {name: {key: median(r[key] for r in rows) for key in rows[0] if isinstance(rows[0][key], (int, float))}
               for name, rows in results.items()}
    for name, row in summary.items():
        print(f"median {name:9s} total {row['total_s']:8.1f} s  cache {row['cache_s']:6.1f} s  "
              f"epoch frozen {row['frozen_epoch_s']:6.2f} s  finetuned {row['finetuned_epoch_s']:6.2f} s  "
              f"val acc {row['frozen_val_acc']:.3f} / {row['finetuned_val_acc']:.3f} "
              f"(last 5 {row['finetuned_val_acc_last5']:.3f})  peak RSS {row['peak_mib']:.0f} MiB")
    last = None
    if "plain" in summary:
        plain = summary["plain"]
        for name, cached in summary.items():
            if name == "plain":
                continue
            print(f"{name}: per-epoch ratio plain/cached frozen {plain['frozen_epoch_s'] / cached['frozen_epoch_s']:.1f}x, "
                  f"finetuned {plain['finetuned_epoch_s'] / cached['finetuned_epoch_s']:.1f}x; validation accuracy "
                  f"(finetuned) difference {100 * (cached['finetuned_val_acc'] - plain['finetuned_val_acc']):+.1f} points final, "
                  f"{100 * (cached['finetuned_val_acc_last5'] - plain['finetuned_val_acc_last5']):+.1f} points over the last 5 epochs")
            print(f"{name}: total for {full} epochs plain {plain['total_s']:.0f} s, cached {cached['total_s']:.0f} s "
                  f"(measured {plain['measured_s']:.0f} s and {cached['measured_s']:.0f} s): "
                  f"{plain['total_s'] / cached['total_s']:.1f}x")
            scaled_plain, scaled_cached = _per_image(plain, args, counts), _per_image(cached, args, counts)
            print(f"{name}: per training image, without the fixed per-run costs (start, loading, tracing, checkpoints, evaluation): "
                  f"plain {scaled_plain:.2f} s, cached {scaled_cached:.2f} s: {scaled_plain / scaled_cached:.1f}x "
                  f"(what a large data set tends to; BreakHis ≈ {BREAKHIS_TRAIN} training images: plain "
                  f"{scaled_plain * BREAKHIS_TRAIN / 3600:.1f} h, cached {scaled_cached * BREAKHIS_TRAIN / 3600:.1f} h)")
            if last is None or name == f"cached-{default_views}":  # the float32 cached path, as before
                last = plain["total_s"] / cached["total_s"]
    for name, row in summary.items():
        if name.endswith("-bf16") and name[: -len("-bf16")] in summary:
            base = summary[name[: -len("-bf16")]]
            print(f"{name}: bf16 against float32 cached: per-epoch frozen {base['frozen_epoch_s'] / row['frozen_epoch_s']:.2f}x, "
                  f"finetuned {base['finetuned_epoch_s'] / row['finetuned_epoch_s']:.2f}x, cache build "
                  f"{base['cache_s'] / max(row['cache_s'], 1e-9):.2f}x, total {base['total_s'] / row['total_s']:.2f}x; validation "
                  f"accuracy (finetuned) {100 * (row['finetuned_val_acc'] - base['finetuned_val_acc']):+.1f} points")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    if last is not None:
        print(f"speedup {last:.1f}x")
    return 0


def _line(r: dict) -> str:
    return (f"{r['path']:9s} ({r['training_path']}): total {r['total_s']:7.1f} s (measured {r['measured_s']:.1f} s), "
            f"cache {r['cache_s']:6.1f} s "
            f"({r['cache_size']}), epochs frozen {r['frozen_epoch_s']:.2f} s (first {r['frozen_first_s']:.2f}), "
            f"finetuned {r['finetuned_epoch_s']:.2f} s (first {r['finetuned_first_s']:.2f}), checkpoint "
            f"{r['finetuned_checkpoint_s']:.2f} s per epoch, val acc "
            f"{r['frozen_val_acc']:.3f} / {r['finetuned_val_acc']:.3f} (last 5 epochs {r['finetuned_val_acc_last5']:.3f}), "
            f"peak RSS {r['peak_mib']:.0f} MiB, load {r['load']:.1f}")


if __name__ == "__main__":
    sys.exit(main())
