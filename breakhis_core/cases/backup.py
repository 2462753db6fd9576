"""``breakhis db backup PATH`` / ``breakhis db restore PATH`` of the embedded SQLite database.

A backup is SQLite's online backup (``sqlite3.Connection.backup``): a consistent copy taken while the app keeps
working, written to a temporary file and renamed, so a backup is whole or absent. A restore checks that the file is
a case database of a known schema revision, copies it into the live database the same way (one step, under
SQLite's lock) and runs the migrations it lacks. The image files (``cases/images``) are files: copy that folder
beside the database backup. A PostgreSQL database is backed up with ``pg_dump`` (the message says how).
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path

import sqlalchemy as sa

from breakhis_core.errors import DatabaseError
from breakhis_core.cases.database import CaseDatabase, SchemaState, shown_url


def _sqlite_only(database: CaseDatabase, what: str) -> None:
    if database.backend != "sqlite":
        raise DatabaseError(f"{what} copies the embedded SQLite database; back up a PostgreSQL database with "
                            f"`pg_dump --format=custom --file=cases.dump DBNAME` and restore it with "
                            f"`pg_restore --clean --dbname=DBNAME cases.dump`. Received: {shown_url(database.url)}")


def backup(database: CaseDatabase, target: str | Path) -> Path:
    """Copy the live database to the new file ``target`` (its folder is made).

    Raises:
        DatabaseError: a PostgreSQL database, a ``target`` that exists, or a copy that fails (no file is left).
    """
    _sqlite_only(database, "backup")
    target = Path(target).expanduser()
    if target.exists():
        raise DatabaseError(f"the backup file exists already; choose a new name. Received: {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    raw = database.engine.raw_connection()
    try:
        copy = sqlite3.connect(temporary)
        try:
            raw.driver_connection.backup(copy)
        finally:
            copy.close()
        os.replace(temporary, target)
    except (sqlite3.Error, OSError) as exc:
        Path(temporary).unlink(missing_ok=True)
        raise DatabaseError(f"the backup could not be written ({exc}). Received: {target}") from None
    finally:
        raw.close()
    return target


def restore(database: CaseDatabase, source: str | Path) -> SchemaState:
    """Replace the live database's content with the backup ``source``, then migrate it to this program's schema.

    Raises:
        DatabaseError: a PostgreSQL database, a ``source`` that is not a case database of a known revision (nothing
            is changed), or a copy that fails.
    """
    _sqlite_only(database, "restore")
    source = Path(source).expanduser()
    if not source.is_file():
        raise DatabaseError(f"no such backup file. Received: {source}")
    read_only = f"sqlite:///file:{source.resolve()}?mode=ro&uri=true"
    backed_up = CaseDatabase(read_only, sa.create_engine(read_only))
    try:
        state = backed_up.schema_state()
    finally:
        backed_up.close()
    if state.current is None or (state.current != state.head and not state.pending):
        raise DatabaseError(f"the file is not a case database this program knows (schema revision "
                            f"{state.current or 'none'}). Received: {source}")
    raw = database.engine.raw_connection()
    try:
        reader = sqlite3.connect(f"file:{source.resolve()}?mode=ro", uri=True)
        try:
            reader.backup(raw.driver_connection)
        finally:
            reader.close()
    except sqlite3.Error as exc:
        raise DatabaseError(f"the backup could not be restored ({exc}). Received: {source}") from None
    finally:
        raw.close()
    database.engine.dispose()
    return database.migrate()
