"""Whole-slide speed and memory: tiles/s of a slide analysis against the Predictor's own batched images/s.

    python bench/slide.py                       # VGG16 at 224×224 (ImageNet base if cached, else random weights)
    python bench/slide.py --input-size 64       # a quick check on a smaller model

Builds two pyramidal TIFF slides from the real BreakHis sample (tests/slides.py: tissue assembled
from 40X images on white glass, 0.5 µm/px, levels 1/4/16), a small and a large one, and analyses
each in a fresh process (so peak RSS is the analysis' own, not the slide builder's). In that
process, after one warm-up batch:

- the slide analysis: tissue tiles, seconds, tiles/s (reading and resizing included; opening, thumbnail and
  tissue mask, a fraction of a second, not);
- the Predictor's batched images/s on the same tiles already in memory, same batch size, same process
  (mean of one pass before and one after the analysis);
- their ratio (1.0: reading costs nothing beside the model) and the process's peak RSS.

Ends with ``slide tiles/s X.X, ratio to batched Y.YY, peak RSS small A MiB large B MiB`` (tiles/s
and ratio of the large slide). Timings on a shared machine are noisy: the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
SAMPLE = ROOT.parent / "shared" / "breakhis_sample"
SIZES = {"small": (4, 4), "large": (12, 12)}
"""Slide → (rows, columns per class) of 40X training fields of tissue."""


def child(args) -> int:
    """Analyse one slide and time the Predictor on its tiles; print one JSON line."""
    from breakhis_core.data.images import resize
    from breakhis_core.models.classifier import build_model
    from breakhis_core.data.pixelsize import breakhis_field
    from breakhis_core.inference.predict import Predictor
    from breakhis_core.slides.predict import analyze_slide, plan_tiles, read_tile, tissue_tiles
    from breakhis_core.slides.tissue import tissue_mask
    from breakhis_core.slides.wsi import open_slide

    predictor = Predictor(build_model(args.input_size, weights="none", seed=0), "bench", batch_size=args.batch_size)
    field = breakhis_field(40)
    with open_slide(args.child) as slide:  # the same tiles the analysis will predict, held in memory
        thumbnail, scale = slide.thumbnail()
        mask = tissue_mask(thumbnail, scale)
        plan = plan_tiles(slide.info, slide, field, args.input_size, mask)
        cells = tissue_tiles(plan, mask)
        tiles = [resize(read_tile(slide, plan, row, col), args.input_size) for row, col, _ in cells]
    for size in {args.batch_size, len(tiles) % args.batch_size} - {0}:  # warm-up: every batch shape used below
        predictor.predict(tiles[:size])

    def batched_rate() -> float:
        started = time.perf_counter()
        for start in range(0, len(tiles), args.batch_size):
            predictor.predict(tiles[start : start + args.batch_size])
        return len(tiles) / (time.perf_counter() - started)

    before = batched_rate()
    result = analyze_slide(args.child, predictor, field)
    batched = (before + batched_rate()) / 2  # before and after the analysis, against drifting load
    print(json.dumps({"tissue_tiles": len(result.tiles), "seconds": result.seconds, "tiles_per_s": result.tiles_per_s,
                      "batched_images_per_s": batched, "level": result.plan.level,
                      "read": f"{result.plan.read_width}x{result.plan.read_height}",
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    from slides import build_slide

    figures = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, (rows, cols) in SIZES.items():
            built = build_slide(Path(folder) / f"{name}.tiff", SAMPLE, rows=rows, cols_per_class=cols)
            out = subprocess.run([sys.executable, __file__, "--child", str(built.path), "--input-size", str(args.input_size),
                                  "--batch-size", str(args.batch_size)], capture_output=True, text=True, check=True)
            figures[name] = json.loads(out.stdout.strip().splitlines()[-1])
            f = figures[name]
            print(f"{name}: {built.width}×{built.height} px, {f['tissue_tiles']} tissue tiles read at level {f['level']} "
                  f"as {f['read']} px, {f['seconds']:.1f} s, {f['tiles_per_s']:.1f} tiles/s; Predictor batched "
                  f"{f['batched_images_per_s']:.1f} images/s; ratio {f['tiles_per_s'] / f['batched_images_per_s']:.2f}; "
                  f"peak RSS {f['peak_rss_mib']:.0f} MiB")
    large, small = figures["large"], figures["small"]
    print(f"model input {args.input_size}×{args.input_size}, batch {args.batch_size}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; peak RSS large / small = "
          f"{large['peak_rss_mib'] / small['peak_rss_mib']:.2f}")
    print(f"slide tiles/s {large['tiles_per_s']:.1f}, ratio to batched {large['tiles_per_s'] / large['batched_images_per_s']:.2f}, "
          f"peak RSS small {small['peak_rss_mib']:.0f} MiB large {large['peak_rss_mib']:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
