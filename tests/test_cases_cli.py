"""The CLI over the case store (``breakhis cases list|show|export-dataset``, ``breakhis db upgrade|backup|restore``)
on SQLite and PostgreSQL, and the loop: reviewed cases → manifest → a run that records its cases."""

from __future__ import annotations

import json

import pytest

from breakhis_core.lab import audit
from breakhis_core.cases.database import CaseDatabase, make_engine
from breakhis_core.cases.dataset import DATASET_COLUMNS, unseen_cases
from breakhis_core.cases.records import Actor, Review
from breakhis_core.cases.service import CaseService
from breakhis_core.cli import main
from breakhis_core.data.records import read_csv_rows, scan
from test_cases_store import new_case

PATHOLOGIST = Actor("dr.a@lab.example", "pathologist")


@pytest.fixture
def runs(monkeypatch, tmp_path, database_url):
    """A runs folder whose case store is the test's database (``$BREAKHIS_DATABASE_URL``)."""
    monkeypatch.setenv("BREAKHIS_DATABASE_URL", database_url)
    monkeypatch.setenv("BREAKHIS_RUNS", str(tmp_path / "runs"))
    return tmp_path / "runs"


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def reviewed_cases(runs, n: int = 8) -> list:
    """``n`` cases of 2 images each (patients P-0 … P-n-1), half reviewed benign, half malignant; the last one open."""
    service = CaseService.open(PATHOLOGIST, runs)
    made = []
    try:
        for number in range(n):
            case = service.create_case(new_case(seeds=(100 + 2 * number, 101 + 2 * number), accession=f"L-{number}",
                                                patient=f"P-{number}"))
            if number < n - 1:
                case = service.review(case.id, case.version, Review(number % 2 == 0, ("benign", "malignant")[number % 2]))
            made.append(case)
    finally:
        service.close()
    return made


def test_cases_list_show_and_export_dataset(runs, capsys):
    made = reviewed_cases(runs)
    code, out, _ = run_cli(capsys, "cases", "list", "--json")
    listed = json.loads(out)
    assert code == 0 and [c["accession"] for c in listed] == [f"L-{n}" for n in reversed(range(8))]
    code, out, _ = run_cli(capsys, "cases", "list", "--status", "open")
    assert code == 0 and out.splitlines()[0].startswith("accession\t") and out.splitlines()[1].startswith("L-7\t")
    assert len(out.splitlines()) == 2
    code, out, _ = run_cli(capsys, "cases", "show", "L-1", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["final_label"] == "malignant" and shown["patient_ref"] == "P-1"
    assert [image["sha256"] for image in shown["images"]] == [image.sha256 for image in made[1].images]
    code, out, _ = run_cli(capsys, "cases", "show", str(made[2].id))
    assert code == 0 and "case L-2" in out and "final label benign" in out and "review by dr.a@lab.example: agrees" in out
    code, out, _ = run_cli(capsys, "cases", "export-dataset", "--name", "mine")
    assert code == 0 and out.splitlines()[-1] == str(runs / "cases" / "datasets" / "mine.csv")
    rows = read_csv_rows(runs / "cases" / "datasets" / "mine.csv")
    assert tuple(rows[0]) == DATASET_COLUMNS and len(rows) == 14  # 7 reviewed cases × 2 images; L-7 is open
    assert {row["accession"]: row["label"] for row in rows} == {f"L-{n}": ("benign", "malignant")[n % 2] for n in range(7)}
    scanned = scan(runs / "cases" / "datasets" / "mine.csv")
    assert len(scanned.records) == 14 and {r.patient for r in scanned.records} == {f"P-{n}" for n in range(7)}
    actions = [(line["action"], line["user"]) for line in audit.read_audit(runs / "audit.jsonl") if line["event"] == "case"]
    assert actions[-1][0] == "read" and actions[-1][1].endswith("(cli)")


def test_cases_cli_bad_input_is_one_line_and_exit_2(runs, capsys):
    reviewed_cases(runs, n=1)
    code, _, err = run_cli(capsys, "cases", "show", "NOPE")
    assert code == 2 and err.strip() == "error: no such case (an accession number or case id). Received: 'NOPE'"
    code, _, err = run_cli(capsys, "cases", "export-dataset")
    assert code == 2 and "no reviewed case with a final label yet" in err
    code, _, err = run_cli(capsys, "cases", "list", "--since", "yesterday")
    assert code == 2 and "a date is YYYY-MM-DD. Received: yesterday" in err


def test_an_unreachable_database_or_an_old_schema_is_a_clear_cli_error(monkeypatch, tmp_path, capsys, database_url):
    monkeypatch.setenv("BREAKHIS_DATABASE_URL", f"sqlite:///{tmp_path / 'missing-folder' / 'file' / 'x.db'}")
    (tmp_path / "missing-folder").write_text("a file where a folder should be")
    code, _, err = run_cli(capsys, "cases", "list", "--runs", str(tmp_path))
    assert code == 2 and "error: " in err and "Received: sqlite:///" in err and "Traceback" not in err
    older = CaseDatabase(database_url, make_engine(database_url))
    older.migrate("0001_cases")
    older.close()
    monkeypatch.setenv("BREAKHIS_DATABASE_URL", database_url)
    code, _, err = run_cli(capsys, "cases", "list")
    assert code == 2 and "run `breakhis db upgrade` (migration 0002_addenda)" in err
    code, out, _ = run_cli(capsys, "db", "upgrade")
    assert code == 0 and "schema revision 0002_addenda" in out
    assert run_cli(capsys, "cases", "list")[0] == 0


def test_db_backup_and_restore_round_trip_from_the_cli(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("BREAKHIS_DATABASE_URL", raising=False)
    runs = tmp_path / "runs"
    monkeypatch.setenv("BREAKHIS_RUNS", str(runs))
    reviewed_cases(runs, n=2)
    code, out, _ = run_cli(capsys, "db", "backup", str(tmp_path / "backup.db"))
    assert code == 0 and "copy the image folder" in out
    service = CaseService.open(PATHOLOGIST, runs)
    service.create_case(new_case(seeds=(900,), accession="AFTER"))
    service.close()
    code, out, _ = run_cli(capsys, "db", "restore", str(tmp_path / "backup.db"))
    assert code == 0 and "restored" in out
    code, out, _ = run_cli(capsys, "cases", "list", "--json")
    assert sorted(c["accession"] for c in json.loads(out)) == ["L-0", "L-1"]


def test_a_run_on_reviewed_cases_records_them_and_unseen_cases_leaves_them_out(runs, capsys):
    from breakhis_core.training.setup import prepare_run
    from breakhis_core.runs.rundir import RunDir
    from conftest import tiny_config

    made = reviewed_cases(runs, n=9)
    code, out, _ = run_cli(capsys, "cases", "export-dataset")
    manifest = out.splitlines()[-1]
    run_dir = prepare_run(tiny_config(manifest, split="image"), runs)
    recorded = RunDir(run_dir).read_info()["cases"]
    assert [case["accession"] for case in recorded] == [f"L-{n}" for n in range(8)]
    assert recorded[0]["images"] == [image.sha256 for image in made[0].images]
    pathologist = CaseService.open(PATHOLOGIST, runs)
    try:
        added = pathologist.create_case(new_case(seeds=(500, 101), accession="NEW-1", patient="P-99"))  # shares an image
        fresh = pathologist.create_case(new_case(seeds=(600,), accession="NEW-2", patient="P-98"))
        pathologist.review(added.id, added.version, Review(True, "benign"))
        pathologist.review(fresh.id, fresh.version, Review(True, "malignant"))
    finally:
        pathologist.close()
    trainer = CaseService.open(Actor("lead@lab.example", "trainer"), runs)
    try:
        unseen = unseen_cases(trainer.reviewed_cases("evaluate"), recorded)
    finally:
        trainer.close()
    assert [case.accession for case in unseen] == ["NEW-2"]  # NEW-1 holds an image the run trained on
