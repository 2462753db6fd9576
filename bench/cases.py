"""The case store under load: 8 concurrent writers saving and reviewing cases on SQLite and on PostgreSQL.

    python bench/cases.py [--cases 1000] [--writers 8] [--conflict-every 10]

Each backend gets a new, empty database (a SQLite file in WAL mode; a database on a throwaway PostgreSQL cluster,
``tests/postgres.py``). ``--writers`` processes share the cases: each saves its cases (one small image each,
through ``CaseService.create_case``) and reviews them; every ``--conflict-every``-th case is also reviewed by a
colleague first, and the writer's review from the version it read must then be refused (a forced conflict). At the
end every case is read back: a case missing, or whose review is not the one that won, is lost. The last line::

    cases N saved in S.S s (sqlite) T.T s (postgres), p95 save X ms, conflicts detected C/C, lost 0

where S and T are each backend's wall time from the first writer's start to the last writer's end (process
start-up not counted), X the 95th percentile of one save (a create or a
review, both backends), C the forced conflicts refused / forced (both backends). Exit code 0 when every forced conflict was
detected and nothing was lost, else 1.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from breakhis_core.cases.database import CaseDatabase  # noqa: E402
from breakhis_core.cases.imagefiles import ImageFiles  # noqa: E402
from breakhis_core.cases.records import Actor, ImagePrediction, NewCase, NewImage, Review  # noqa: E402
from breakhis_core.cases.service import CaseService  # noqa: E402
from breakhis_core.errors import CaseConflictError, CaseError  # noqa: E402
from postgres import PostgresCluster, postgres_bin  # noqa: E402

COLLEAGUE = Actor("colleague@lab.example", "pathologist")


@dataclass(frozen=True)
class Job:
    """One writer's share: its number, the case numbers it saves, the store and how often to force a conflict."""

    writer: int
    numbers: tuple[int, ...]
    url: str
    images: str
    audit_log: str
    conflict_every: int


@dataclass(frozen=True)
class WriterResult:
    """What a writer did: when it began and ended (``time.time()``, s), the seconds of each save, conflicts forced and
    refused."""

    began: float
    ended: float
    save_seconds: tuple[float, ...]
    forced: int
    detected: int


def png(number: int) -> bytes:
    """A 16×16 PNG of its own for case ``number``."""
    pixels = np.random.default_rng(number).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def winning_comment(number: int, conflict_every: int) -> str:
    """The review comment case ``number`` must end with."""
    return f"colleague {number}" if number % conflict_every == 0 else f"writer review {number}"


def write(job: Job) -> WriterResult:
    """Save and review ``job.numbers``; force a conflict on every ``conflict_every``-th case."""
    began = time.time()
    database = CaseDatabase.open(job.url)
    files = ImageFiles(job.images)
    mine = CaseService(database, files, Actor(f"writer{job.writer}@lab.example", "pathologist"), job.audit_log)
    colleague = CaseService(database, files, COLLEAGUE, job.audit_log)
    seconds, forced, detected = [], 0, 0
    try:
        for number in job.numbers:
            prediction = ImagePrediction("bench:finetuned", "malignant", 0.7, 0.5, 1.0)
            new = NewCase(f"P-{number % 97}", (NewImage(f"case{number}.png", png(number), 40, prediction),),
                          f"BENCH-{number:05d}")
            start = time.perf_counter()
            case = mine.create_case(new)
            seconds.append(time.perf_counter() - start)
            if number % job.conflict_every == 0:
                colleague.review(case.id, case.version, Review(True, "malignant", None, f"colleague {number}"))
                forced += 1
                start = time.perf_counter()
                try:
                    mine.review(case.id, case.version, Review(False, "benign", None, f"writer review {number}"))
                except CaseConflictError:
                    detected += 1
                seconds.append(time.perf_counter() - start)
                continue
            start = time.perf_counter()
            mine.review(case.id, case.version, Review(True, "malignant", None, f"writer review {number}"))
            seconds.append(time.perf_counter() - start)
    finally:
        database.close()
    return WriterResult(began, time.time(), tuple(seconds), forced, detected)


def lost_cases(url: str, images: str, audit_log: str, n_cases: int, conflict_every: int) -> int:
    """Cases missing from the store, or whose stored review is not the one that should have won."""
    database = CaseDatabase.open(url)
    try:
        service = CaseService(database, ImageFiles(images), COLLEAGUE, audit_log)
        lost = 0
        for number in range(n_cases):
            try:
                case = service.get_case(f"BENCH-{number:05d}")
            except CaseError:  # a case that is not there at all
                lost += 1
                continue
            if case.review.comment != winning_comment(number, conflict_every) or len(case.images) != 1:
                lost += 1
        return lost
    finally:
        database.close()


def run_backend(url: str, folder: Path, n_cases: int, writers: int, conflict_every: int) -> tuple[float, list[WriterResult], int]:
    """(wall seconds of all writers, each writer's result, lost cases) on one database."""
    CaseDatabase.open(url).close()  # the schema, made once before the writers start
    images, audit_log = str(folder / "images"), str(folder / "audit.jsonl")
    jobs = [Job(w, tuple(range(w, n_cases, writers)), url, images, audit_log, conflict_every) for w in range(writers)]
    with multiprocessing.get_context("spawn").Pool(writers) as pool:
        results = pool.map(write, jobs, chunksize=1)
    wall = max(r.ended for r in results) - min(r.began for r in results)
    return wall, results, lost_cases(url, images, audit_log, n_cases, conflict_every)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--conflict-every", type=int, default=10)
    args = parser.parse_args(argv)
    bin_dir = postgres_bin()
    if bin_dir is None:
        print("PostgreSQL (initdb, pg_ctl) not found; install it (Debian: apt-get install postgresql)", file=sys.stderr)
        return 1
    walls, results, lost = {}, [], 0
    with tempfile.TemporaryDirectory(prefix="breakhis-bench-cases-") as scratch:
        cluster = PostgresCluster(bin_dir).start()
        try:
            for backend, url in (("sqlite", f"sqlite:///{Path(scratch) / 'sqlite' / 'cases.db'}"),
                                 ("postgres", cluster.new_database())):
                folder = Path(scratch) / backend
                folder.mkdir(exist_ok=True)
                wall, backend_results, backend_lost = run_backend(url, folder, args.cases, args.writers,
                                                                  args.conflict_every)
                walls[backend] = wall
                results += backend_results
                lost += backend_lost
                print(f"{backend}: {args.cases} cases by {args.writers} writers in {wall:.1f} s, lost {backend_lost}")
        finally:
            cluster.stop()
    saves = np.array([s for r in results for s in r.save_seconds])
    forced, detected = sum(r.forced for r in results), sum(r.detected for r in results)
    print(f"cases {args.cases} saved in {walls['sqlite']:.1f} s (sqlite) {walls['postgres']:.1f} s (postgres), "
          f"p95 save {1000 * np.percentile(saves, 95):.0f} ms, conflicts detected {detected}/{forced}, lost {lost}")
    return 0 if detected == forced and lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
