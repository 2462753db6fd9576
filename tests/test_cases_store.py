"""The case store on real databases (a SQLite file and a throwaway PostgreSQL cluster): schema and migrations,
creating, reading, reviewing, signing and addenda, roles, conflicts, transactions and bad input."""

from __future__ import annotations

import io
from datetime import datetime, timezone
import multiprocessing
import sqlite3
import threading

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from breakhis_core.lab import audit
from breakhis_core.cases.database import CaseDatabase, make_engine
from breakhis_core.cases.imagefiles import ImageFiles
from breakhis_core.cases.models import Base
from breakhis_core.cases.records import Actor, CaseFilter, CasePrediction, ImagePrediction, NewCase, NewImage, Review
from breakhis_core.cases.service import CaseService
from breakhis_core.errors import (
    AccessionExistsError,
    CaseConflictError,
    CaseError,
    DatabaseError,
    ImageDecodeError,
    PermissionDeniedError,
)
from breakhis_core.files import sha256

PATHOLOGIST = Actor("dr.a@lab.example", "pathologist")
COLLEAGUE = Actor("dr.b@lab.example", "pathologist")


def png(seed: int, size: int = 24) -> bytes:
    """A small PNG whose pixels depend on ``seed`` (different seeds, different files)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def new_case(seeds=(1, 2), accession: str | None = None, patient: str = "P-0001") -> NewCase:
    images = tuple(NewImage(f"img{seed}.png", png(seed), 40,
                            ImagePrediction("run1:finetuned", "malignant", 0.8, threshold=0.45, temperature=1.3))
                   for seed in seeds)
    return NewCase(patient, images, accession, CasePrediction("run1:finetuned", "malignant", 0.8, "mean", 0.45, 1.3))


@pytest.fixture
def store(database_url, tmp_path):
    """(database, image files, audit log path) on the test's own database."""
    database = CaseDatabase.open(database_url)
    yield database, ImageFiles(tmp_path / "case_images"), tmp_path / "audit.jsonl"
    database.close()


def service(store, actor: Actor = PATHOLOGIST) -> CaseService:
    database, files, log = store
    return CaseService(database, files, actor, log)


# ----------------------------------------------------------------------------- schema and migrations


def test_a_new_database_gets_the_newest_schema_and_it_is_the_declared_one(store):
    database, _, _ = store
    state = database.schema_state()
    assert state.current == state.head and state.pending == ()
    with database.engine.connect() as connection:
        tables = set(sa.inspect(connection).get_table_names())
        migrated = {table: {c["name"] for c in sa.inspect(connection).get_columns(table)} for table in Base.metadata.tables}
    assert set(Base.metadata.tables) <= tables
    assert migrated == {name: {c.name for c in table.columns} for name, table in Base.metadata.tables.items()}


def test_a_database_at_the_previous_schema_is_refused_naming_the_migration_then_upgraded_keeping_its_cases(
        database_url, tmp_path):
    older = CaseDatabase(database_url, make_engine(database_url))
    older.migrate("0001_cases")
    with older.engine.begin() as connection:  # a case saved by the previous version of the program
        connection.execute(sa.text("INSERT INTO cases (accession, patient_ref, status, created_at, created_by, "
                                   "updated_at, version) VALUES ('OLD-1', 'P-9', 'open', :t, 'x', :t, 1)"),
                           {"t": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)})
    with pytest.raises(DatabaseError, match=r"revision 0001_cases.*`breakhis db upgrade` \(migration 0002_addenda\)"):
        CaseDatabase.open(database_url)
    assert older.migrate().pending == ()
    older.close()
    database = CaseDatabase.open(database_url)
    try:
        record = CaseService(database, ImageFiles(tmp_path / "img"), PATHOLOGIST, tmp_path / "a.jsonl").get_case("OLD-1")
        assert record.patient_ref == "P-9" and record.addenda == () and record.version == 1
    finally:
        database.close()


def test_an_empty_database_is_refused_when_not_asked_to_create_it(database_url):
    with pytest.raises(DatabaseError, match=r"empty; run `breakhis db upgrade` to create schema revision 0002_addenda"):
        CaseDatabase.open(database_url, create=False)


def test_a_database_made_by_a_newer_program_or_not_by_this_one_is_refused(database_url):
    database = CaseDatabase.open(database_url)
    with database.engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '0099_future'"))
    database.close()
    with pytest.raises(DatabaseError, match=r"revision 0099_future, which this program does not know.*upgrade the "
                                            r"program. Received"):
        CaseDatabase.open(database_url)
    foreign = CaseDatabase(database_url, make_engine(database_url))
    with foreign.engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE alembic_version"))
    foreign.close()
    with pytest.raises(DatabaseError, match=r"holds a 'cases' table but no schema version; it is not a case database"):
        CaseDatabase.open(database_url)


def test_a_file_that_is_not_a_database_or_a_bad_url_is_one_clear_error(tmp_path):
    not_a_database = tmp_path / "cases.db"
    not_a_database.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(DatabaseError, match=r"cannot be reached or read \(file is not a database\).*Received: sqlite"):
        CaseDatabase.open(f"sqlite:///{not_a_database}")
    with pytest.raises(DatabaseError, match=r"not a database URL.*Received"):
        CaseDatabase.open("nosuchdriver://x/y")


def test_a_postgresql_database_that_cannot_be_reached_is_one_clear_error(postgres_cluster):
    gone = postgres_cluster.url("no_such_database")
    with pytest.raises(DatabaseError, match=r"cannot be reached.*no_such_database.*Received: postgresql\+psycopg://"):
        CaseDatabase.open(gone)


# ----------------------------------------------------------------------------- what a case holds


def test_a_case_holds_its_images_predictions_and_is_read_back_with_an_audit_line(store):
    cases = service(store)
    created = cases.create_case(new_case(accession="S26-0001"))
    assert created.accession == "S26-0001" and created.status == "open" and created.version == 1
    read = cases.get_case("S26-0001")
    assert read == cases.get_case(created.id)
    assert read.patient_ref == "P-0001" and read.created_by == PATHOLOGIST.user
    assert read.prediction == CasePrediction("run1:finetuned", "malignant", 0.8, "mean", 0.45, 1.3)
    assert [image.name for image in read.images] == ["img1.png", "img2.png"]
    first = read.images[0]
    assert first.prediction.model_id == "run1:finetuned" and first.prediction.threshold == 0.45
    assert first.prediction.temperature == 1.3 and first.prediction.task == "benign-malignant"
    assert (first.width, first.height) == (24, 24)
    assert cases.image_path(first).read_bytes() == png(1)
    assert first.sha256 == sha256(png(1))
    lines = [line for line in audit.read_audit(store[2]) if line["event"] == "case"]
    assert [line["action"] for line in lines] == ["create", "read", "read"]
    assert all(line["user"] == PATHOLOGIST.user and line["cases"][0]["accession"] == "S26-0001" for line in lines)


def test_a_generated_accession_number_is_unique(store):
    cases = service(store)
    numbers = {cases.create_case(new_case(seeds=(seed,), accession=None)).accession for seed in range(5)}
    assert len(numbers) == 5 and all(number.startswith("C") for number in numbers)


def test_an_accession_number_that_exists_is_refused_naming_the_case_to_open(store):
    cases = service(store)
    first = cases.create_case(new_case(accession="S26-0002"))
    with pytest.raises(AccessionExistsError, match=r"already case .*open that case.*Received: S26-0002") as refused:
        cases.create_case(new_case(seeds=(7,), accession=" S26-0002 "))
    assert refused.value.case_id == first.id
    assert len(cases.list_cases()) == 1


def test_an_image_already_in_another_case_is_linked_not_copied(store):
    cases = service(store)
    first = cases.create_case(new_case(seeds=(1, 2), accession="A-1"))
    second = cases.create_case(new_case(seeds=(2, 3), accession="A-2", patient="P-0002"))
    files = sorted(p for p in store[1].root.rglob("*") if p.is_file())
    assert len(files) == 3  # images 1, 2 and 3 once each
    shared = sha256(png(2))
    assert [image.also_in for image in second.images] == [("A-1",), ()]
    assert [image.also_in for image in cases.get_case("A-1").images] == [(), ("A-2",)]
    assert cases.image_path(second.images[0]) == cases.image_path(first.images[1])
    assert second.images[0].sha256 == shared
    # the same bytes twice in one upload: one image of the case
    third = cases.create_case(NewCase("P-3", (NewImage("a.png", png(9)), NewImage("copy.png", png(9))), "A-3"))
    assert [image.name for image in third.images] == ["a.png"]


@pytest.mark.parametrize("patient", ["Jane Doe", "P/1", "1980-01-01;DROP", "", "ü-1", "x" * 33])
def test_a_patient_reference_outside_the_allowed_set_is_refused(store, patient):
    with pytest.raises(CaseError, match=r"patient reference is a pseudonym.*Received: "):
        service(store).create_case(new_case(patient=patient))
    assert service(store).list_cases() == []


@pytest.mark.parametrize("accession", ["has space", "-lead", "x" * 33, "a;b"])
def test_a_bad_accession_number_is_refused(store, accession):
    with pytest.raises(CaseError, match=r"accession number is 1 to 32.*Received: "):
        service(store).create_case(new_case(accession=accession))


def test_a_file_that_is_not_an_image_is_refused_before_anything_is_saved(store):
    bad = NewCase("P-1", (NewImage("a.png", png(1)), NewImage("b.png", b"not an image")), "X-1")
    with pytest.raises(ImageDecodeError):
        service(store).create_case(bad)
    assert service(store).list_cases() == []


# ----------------------------------------------------------------------------- review, sign-off, addenda


def test_review_sign_and_addendum_keep_the_signed_case_and_its_history(store):
    cases = service(store)
    case = cases.create_case(new_case(accession="R-1"))
    first_sha = case.images[0].sha256
    reviewed = cases.review("R-1", case.version, Review(False, "benign", "F", "fibroadenoma, reactive atypia"),
                            {first_sha: Review(False, "benign", None, "no invasion here")})
    assert reviewed.status == "reviewed" and reviewed.version == case.version + 1
    assert reviewed.reviewed_by == PATHOLOGIST.user and reviewed.final_label == "benign"
    assert reviewed.images[0].review == Review(False, "benign", None, "no invasion here")
    assert reviewed.images[1].review == Review()
    signed = cases.sign("R-1", reviewed.version)
    assert signed.status == "signed" and signed.signed_by == PATHOLOGIST.user and signed.signed_at is not None
    with pytest.raises(CaseError, match=r"signed by dr.a@lab.example .*add an addendum"):
        cases.review("R-1", signed.version, Review(True, "malignant", None, "changed my mind"))
    later = service(store, COLLEAGUE).add_addendum("R-1", signed.version, "second opinion: ductal carcinoma",
                                                    Review(True, "malignant", "DC", ""))
    assert later.review == signed.review and later.signed_at == signed.signed_at  # the signed review as signed
    assert later.final_label == "malignant" and later.addenda[0].author == COLLEAGUE.user
    assert later.to_dict()["final_label"] == "malignant"
    actions = [line["action"] for line in audit.read_audit(store[2])]
    assert actions == ["create", "review", "sign", "addendum"]


def test_sign_needs_a_final_label_and_an_addendum_needs_a_signed_case(store):
    cases = service(store)
    case = cases.create_case(new_case(accession="R-2"))
    with pytest.raises(CaseError, match="no final label yet"):
        cases.sign("R-2", case.version)
    with pytest.raises(CaseError, match="is not signed; change its review"):
        cases.add_addendum("R-2", case.version, "text")


@pytest.mark.parametrize("review, message", [
    (Review(None, "cancer"), "final label is one of benign, malignant"),
    (Review(None, "benign", "DC"), "DC \\(ductal carcinoma\\) is a malignant type"),
    (Review(None, "malignant", "XX"), "tumour type is one of"),
    (Review(None, None, None, "x" * 10_001), "at most 10,000 characters"),
])
def test_a_bad_review_is_refused(store, review, message):
    cases = service(store)
    case = cases.create_case(new_case(accession="R-3"))
    with pytest.raises(CaseError, match=message):
        cases.review("R-3", case.version, review)
    assert cases.get_case("R-3").version == case.version


# ----------------------------------------------------------------------------- roles


def test_roles_are_enforced_by_the_service(store):
    admin, viewer = service(store, Actor("root@lab.example", "admin")), service(store, Actor("v@lab.example", "viewer"))
    trainer, nobody = service(store, Actor("t@lab.example", "trainer")), service(store, Actor("x@else.example", None))
    case = admin.create_case(new_case(accession="ROLE-1"))
    assert viewer.get_case("ROLE-1").id == case.id and [c.accession for c in viewer.list_cases()] == ["ROLE-1"]
    with pytest.raises(PermissionDeniedError, match=r"saving a case needs the pathologist role; v@lab.example has the "
                                                    r"viewer role. Received: role=viewer"):
        viewer.create_case(new_case(seeds=(5,), accession="ROLE-2"))
    for refused in (viewer, trainer):
        with pytest.raises(PermissionDeniedError, match="reviewing a case needs the pathologist role"):
            refused.review("ROLE-1", case.version, Review(True, "malignant"))
        with pytest.raises(PermissionDeniedError, match="signing a case needs the pathologist role"):
            refused.sign("ROLE-1", case.version)
    with pytest.raises(PermissionDeniedError, match="reading a case needs the viewer role; x@else.example has no role"):
        nobody.get_case("ROLE-1")
    with pytest.raises(PermissionDeniedError, match="using reviewed cases as data needs the trainer role"):
        service(store).reviewed_cases("export-dataset")
    assert trainer.reviewed_cases("export-dataset") == []
    assert admin.sign("ROLE-1", admin.review("ROLE-1", case.version, Review(True, "malignant")).version).status == "signed"


# ----------------------------------------------------------------------------- conflicts and transactions


def test_a_second_reviewer_saving_from_a_stale_version_gets_a_conflict_and_nothing_is_lost(store):
    cases, colleague = service(store), service(store, COLLEAGUE)
    opened = cases.create_case(new_case(accession="C-1"))
    colleague.review("C-1", opened.version, Review(True, "malignant", "DC", "colleague's text"))
    mine = Review(False, "benign", None, "my long text")
    with pytest.raises(CaseConflictError, match=r"case C-1 was changed \(by dr.b@lab.example.*nothing of your change "
                                                r"was saved.*Received: version 1, the case is at version 2"):
        cases.review("C-1", opened.version, mine)
    assert mine.comment == "my long text"  # the caller still holds it
    stored = cases.get_case("C-1")
    assert stored.review.comment == "colleague's text" and stored.version == 2
    with pytest.raises(CaseConflictError):
        cases.sign("C-1", opened.version)


def test_concurrent_reviewers_of_one_case_one_wins_the_others_get_conflicts(store):
    opened = service(store).create_case(new_case(accession="C-2"))
    outcomes: list[str] = []
    barrier = threading.Barrier(6)

    def reviewer(number: int) -> None:
        actor = Actor(f"dr.{number}@lab.example", "pathologist")
        barrier.wait()
        try:
            service(store, actor).review("C-2", opened.version, Review(True, "malignant", None, f"review {number}"))
            outcomes.append(f"saved {number}")
        except CaseConflictError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=reviewer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    saved = [o for o in outcomes if o.startswith("saved")]
    assert len(saved) == 1 and outcomes.count("conflict") == 5
    stored = service(store).get_case("C-2")
    assert stored.version == 2 and stored.review.comment == f"review {saved[0].split()[1]}"


def _save_and_die(url: str, image_root: str, log: str) -> None:
    """Child process: start saving a case and be killed inside the transaction (after the insert, before commit)."""
    import os

    from sqlalchemy import event

    database = CaseDatabase.open(url)

    @event.listens_for(database.sessions, "before_commit")
    def _die(_session) -> None:
        os._exit(9)

    CaseService(database, ImageFiles(image_root), PATHOLOGIST, log).create_case(new_case(accession="K-1"))


def test_a_process_killed_mid_save_leaves_no_half_case_and_the_images_stay_for_a_retry(store, database_url):
    database, files, log = store
    child = multiprocessing.get_context("spawn").Process(target=_save_and_die,
                                                         args=(database_url, str(files.root), str(log)))
    child.start()
    child.join(120)
    assert child.exitcode == 9
    with database.engine.connect() as connection:
        counts = [connection.scalar(sa.text(f"SELECT count(*) FROM {table}"))
                  for table in ("cases", "case_images", "stored_images")]
    assert counts == [0, 0, 0]
    assert files.path(sha256(png(1)), ".png").read_bytes() == png(1)  # kept on disk for the retry
    retried = service(store).create_case(new_case(accession="K-1"))
    assert [image.sha256 for image in retried.images] == [sha256(png(1)), sha256(png(2))]


def test_a_database_that_goes_away_is_a_clear_error_and_the_upload_stays_on_disk(tmp_path):
    path = tmp_path / "cases.db"
    database = CaseDatabase.open(f"sqlite:///{path}")
    files = ImageFiles(tmp_path / "case_images")
    path.unlink()
    path.mkdir()  # the database file is gone and cannot be made again
    (tmp_path / "cases.db-wal").unlink(missing_ok=True)
    database.close()
    cases = CaseService(database, files, PATHOLOGIST, tmp_path / "audit.jsonl")
    with pytest.raises(DatabaseError, match=r"cannot be reached or read.*Received: sqlite:///"):
        cases.create_case(new_case(accession="U-1"))
    assert files.path(sha256(png(1)), ".png").read_bytes() == png(1)


# ----------------------------------------------------------------------------- the case list


def test_list_search_and_filter(store):
    cases = service(store)
    a = cases.create_case(new_case(seeds=(1,), accession="S-100", patient="ALPHA-1"))
    b = cases.create_case(new_case(seeds=(2,), accession="S-200", patient="BETA-2"))
    service(store, COLLEAGUE).review("S-200", b.version, Review(True, "malignant"))
    assert [c.accession for c in cases.list_cases()] == ["S-200", "S-100"]  # newest first
    assert [c.accession for c in cases.list_cases(CaseFilter(text="alpha"))] == ["S-100"]
    assert [c.accession for c in cases.list_cases(CaseFilter(text="s-2"))] == ["S-200"]
    assert [c.accession for c in cases.list_cases(CaseFilter(status="reviewed"))] == ["S-200"]
    assert [c.accession for c in cases.list_cases(CaseFilter(reviewer=COLLEAGUE.user))] == ["S-200"]
    assert [c.accession for c in cases.list_cases(CaseFilter(verdict="benign"))] == []
    assert [c.accession for c in cases.list_cases(CaseFilter(until=a.created_at))] == ["S-100"]
    assert [c.accession for c in cases.list_cases(CaseFilter(since=b.created_at))] == ["S-200"]
    summary = cases.list_cases(CaseFilter(text="S-200"))[0]
    assert summary.n_images == 1 and summary.final_label == "malignant" and summary.reviewed_by == COLLEAGUE.user


# ----------------------------------------------------------------------------- backup and restore


def test_backup_and_restore_round_trip(tmp_path):
    from breakhis_core.cases.backup import backup, restore

    database = CaseDatabase.open(f"sqlite:///{tmp_path / 'cases.db'}")
    cases = CaseService(database, ImageFiles(tmp_path / "images"), PATHOLOGIST, tmp_path / "audit.jsonl")
    kept = cases.create_case(new_case(accession="B-1"))
    copy = backup(database, tmp_path / "backups" / "monday.db")
    with pytest.raises(DatabaseError, match="exists already"):
        backup(database, copy)
    cases.review("B-1", kept.version, Review(True, "malignant", None, "after the backup"))
    cases.create_case(new_case(seeds=(8,), accession="B-2"))
    state = restore(database, copy)
    assert state.current == state.head
    assert [c.accession for c in cases.list_cases()] == ["B-1"]
    assert cases.get_case("B-1") == kept
    not_a_backup = tmp_path / "notes.db"
    not_a_backup.write_bytes(b"")
    sqlite3.connect(not_a_backup).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(DatabaseError, match="not a case database this program knows"):
        restore(database, not_a_backup)
    assert [c.accession for c in cases.list_cases()] == ["B-1"]  # nothing changed
    database.close()


def test_backup_of_postgresql_names_pg_dump(postgres_cluster, tmp_path):
    from breakhis_core.cases.backup import backup

    database = CaseDatabase.open(postgres_cluster.new_database())
    try:
        with pytest.raises(DatabaseError, match=r"pg_dump --format=custom.*pg_restore"):
            backup(database, tmp_path / "x.db")
    finally:
        database.close()
