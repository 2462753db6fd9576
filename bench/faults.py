"""Hostile inputs and injected faults against the library and the CLI, as one figure.

    python bench/faults.py [--keep DIR]

Tries every file of the generated corpora (``tests/badfiles.py``: broken, odd and bomb images, odd
names, hostile zips and uploads) through the library, the upload reader and ``python -m breakhis_core
predict``, then injects every fault of ``tests/faultcases.py`` (kill -9 mid-epoch and mid-caching,
full disk, cancel, a second trainer, stale and raced job locks, concurrent Diagnose requests and
audit appends, unsafe model files, half-written runs, data paths escaping the data roots). The same
cases run as tests (``tests/test_faults.py``). One line per failure, then the figure as the last line::

    inputs tried N, handled N; faults injected N, survived N; runs lost 0

Needs the BreakHis sample in ``../shared/breakhis_sample``; runs on the CPU in a few minutes.
Exit code 0 when everything was handled and survived and no run was lost, else 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import logging  # noqa: E402

from faultcases import FAULTS, SAMPLE_DIR, Context, input_results, lost_runs  # noqa: E402

logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing and AutoGraph notes are not findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None, help="work in DIR and keep it (default: a temporary folder)")
    args = parser.parse_args(argv)
    if not SAMPLE_DIR.is_dir():
        print(f"error: the BreakHis sample is needed at {SAMPLE_DIR}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="breakhis-faults-") as scratch:
        workdir = args.keep or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        ctx = Context(workdir)
        started = time.monotonic()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inputs = input_results(ctx)
        for result in inputs:
            if not result.handled:
                print(f"input not handled ({result.via}): {result.name!r}: {result.detail}")
        print(f"inputs: {len(inputs)} tried through the library, the upload reader and the CLI "
              f"({time.monotonic() - started:.0f} s)", file=sys.stderr)
        survived = 0
        for fault in FAULTS:
            began = time.monotonic()
            try:
                fault(ctx)
                survived += 1
                outcome = "survived"
            except AssertionError as exc:
                outcome = f"NOT survived: {exc}"
                print(f"fault {fault.__name__}: {outcome}")
            except Exception:
                outcome = "NOT survived (error)"
                print(f"fault {fault.__name__}: {outcome}\n{traceback.format_exc()}")
            print(f"fault {fault.__name__}: {outcome} ({time.monotonic() - began:.0f} s)", file=sys.stderr)
        lost = lost_runs(ctx)
        for run_dir, reason in lost:
            print(f"run lost: {run_dir.name}: {reason}")
    handled = sum(r.handled for r in inputs)
    print(f"inputs tried {len(inputs)}, handled {handled}; faults injected {len(FAULTS)}, survived {survived}; "
          f"runs lost {len(lost)}")
    return 0 if handled == len(inputs) and survived == len(FAULTS) and not lost else 1


if __name__ == "__main__":
    sys.exit(main())
