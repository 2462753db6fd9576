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

from breakhis_core import audit
from breakhis_core.cases.database import CaseDatabase, make_engine
from breakhis_core.cases.imagefiles import ImageFiles
from breakhis_core.cases.models import Base
from breakhis_core.cases.records import (Actor, CaseFilter, CasePrediction, ImagePrediction, NewCase, NewImage,
                                         Review)
from breakhis_core.cases.service import CaseService
from breakhis_core.errors import (AccessionExistsError, CaseConflictError, CaseError, DatabaseError,
                                  ImageDecodeError, PermissionDeniedError)

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


def test_a_database_that_cannot_be_reached_or_is_not_a_database_is_one_clear_error(tmp_path, postgres_cluster):
    not_a_database = tmp_path / "cases.db"
    not_a_database.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(DatabaseError, match=r"cannot be reached or read \(file is not a database\).*Received: sqlite"):
        CaseDatabase.open(f"sqlite:///{not_a_database}")
    gone = postgres_cluster.url("no_such_database")
    with pytest.raises(DatabaseError, match=r"cannot be reached.*no_such_database.*Received: postgresql\+psycopg://"):
        CaseDatabase.open(gone)
    with pytest.raises(DatabaseError, match=r"not a database URL.*Received"):
        CaseDatabase.open("nosuchdriver://x/y")
