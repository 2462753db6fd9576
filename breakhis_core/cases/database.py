"""Where the case database is and how it is opened: the URL, the engine, the schema version and its migrations.

The URL is ``$BREAKHIS_DATABASE_URL`` (a lab server: ``postgresql+psycopg://user@host/breakhis``), else an embedded
SQLite file, ``<runs folder>/cases/cases.db`` (``layout``; no set-up). SQLite runs in WAL mode (readers never wait for the writer)
with foreign keys on, a 30 s busy timeout, and every transaction taken with ``BEGIN IMMEDIATE`` so that two writers
queue instead of failing when one of them upgrades a read to a write.

The schema is Alembic's (``migrations/``). :meth:`CaseDatabase.open` makes a new, empty database at the newest
revision; a database at an older revision is refused with a message naming the migration to run
(``breakhis db upgrade``), because a lab server's database is upgraded on purpose, after a backup.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from breakhis_core.errors import DatabaseError
from breakhis_core.cases.layout import DATABASE_FILE, cases_dir

DATABASE_URL_ENV = "BREAKHIS_DATABASE_URL"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 30.0
UPGRADE_COMMAND = "breakhis db upgrade"
MIGRATION_LOCK = 2024_0024
"""PostgreSQL advisory lock key held while migrating, so that two processes opening a new database never both
create its tables."""


def database_url(runs_root: str | Path | None = None) -> str:
    """``$BREAKHIS_DATABASE_URL``, else ``sqlite:///<runs folder>/cases/cases.db``."""
    configured = os.environ.get(DATABASE_URL_ENV, "").strip()
    if configured:
        return configured
    return f"sqlite:///{(cases_dir(runs_root) / DATABASE_FILE).resolve()}"


def shown_url(url: str | sa.URL) -> str:
    """The URL as a message may show it (password hidden)."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparsable URL>"


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _sqlite_engine(url: sa.URL) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # the driver's own BEGIN off: ours is below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def make_engine(url: str) -> Engine:
    """An engine for ``url`` (SQLite set up as the module docstring says).

    Raises:
        DatabaseError: for a URL SQLAlchemy cannot parse or whose driver is not installed, or a SQLite file whose
            folder cannot be made.
    """
    try:
        parsed = sa.make_url(url)
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(parsed)
        return sa.create_engine(parsed, pool_pre_ping=True)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError, ValueError) as exc:
        raise DatabaseError(f"{DATABASE_URL_ENV} is not a database URL this program can use ({exc}). "
                            f"Received: {shown_url(url)}") from None
    except OSError as exc:
        raise DatabaseError(f"the folder of the case database cannot be made ({exc.strerror or exc}). "
                            f"Received: {shown_url(url)}") from None


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands: ``current`` revision (None for an empty database), this program's ``head``, the
    revisions between them (``pending``, oldest first; empty for a revision this program does not know) and whether
    it holds a ``cases`` table (``has_tables``: a database with tables but no revision is not ours)."""

    current: str | None
    head: str
    pending: tuple[str, ...]
    has_tables: bool


class CaseDatabase:
    """An open case database: the engine and its sessions. Make one with :meth:`open`; ``close`` it when done."""

    def __init__(self, url: str, engine: Engine):
        self.url = url
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    @property
    def backend(self) -> str:
        """"sqlite" or "postgresql" (SQLAlchemy's backend name)."""
        return self.engine.url.get_backend_name()

    @classmethod
    def open(cls, url: str | None = None, runs_root: str | Path | None = None, create: bool = True,
             check: bool = True) -> CaseDatabase:
        """Open the database at ``url`` (default :func:`database_url`) and check its schema.

        Args:
            create: make an empty database's tables (the newest revision); when False, an empty database is
                refused like an old one.
            check: refuse a database at another revision; False opens it anyway (only to :meth:`migrate` it).

        Raises:
            DatabaseError: unreachable, not a database, not a case database, or at another revision than this
                program's (the message names the migration and the command).
        """
        url = url or database_url(runs_root)
        database = cls(url, make_engine(url))
        try:
            state = database.schema_state()
            if state.current is None and not state.has_tables and create:
                database.migrate()
            elif check:
                database.check_schema(state)
        except BaseException:
            database.close()
            raise
        return database

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def session(self) -> Session:
        """A new ORM session (use as a context manager; ``session.begin()`` for a transaction)."""
        return self.sessions()

    def unreachable(self, exc: BaseException) -> DatabaseError:
        """The error to raise when a database call failed with ``exc`` (the driver's reason, the URL without password)."""
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return DatabaseError(f"the case database cannot be reached or read ({reason}); check {DATABASE_URL_ENV}, "
                             f"that the server runs and that the file is a database. Received: {shown_url(self.url)}")

    def schema_state(self) -> SchemaState:
        """The database's revision against this program's migrations.

        Raises:
            DatabaseError: when the database cannot be reached or read.
        """
        script = ScriptDirectory.from_config(_alembic_config())
        head = script.get_current_head()
        try:
            with self.engine.connect() as connection:
                current = MigrationContext.configure(connection).get_current_revision()
                has_tables = sa.inspect(connection).has_table("cases")
        except sa.exc.DBAPIError as exc:
            raise self.unreachable(exc) from None
        known = {revision.revision for revision in script.walk_revisions()}
        if current is not None and current not in known:
            pending: tuple[str, ...] = ()
        else:
            pending = tuple(reversed([revision.revision for revision in script.iterate_revisions(head, current)]))
        return SchemaState(current, head, pending, has_tables)

    def check_schema(self, state: SchemaState | None = None) -> None:
        """Refuse a database that is not at this program's revision, naming what to do.

        Raises:
            DatabaseError: see :meth:`open`.
        """
        state = state or self.schema_state()
        if state.current == state.head:
            return
        where = shown_url(self.url)
        if state.current is None:
            if state.has_tables:
                raise DatabaseError(f"the database holds a 'cases' table but no schema version; it is not a case "
                                    f"database of this program. Received: {where}")
            raise DatabaseError(f"the case database is empty; run `{UPGRADE_COMMAND}` to create schema revision "
                                f"{state.head}. Received: {where}")
        if not state.pending:
            raise DatabaseError(f"the case database is at schema revision {state.current}, which this program does not "
                                f"know (a newer version of the program made it); upgrade the program. Received: {where}")
        raise DatabaseError(f"the case database is at schema revision {state.current}; this program needs {state.head}. "
                            f"Back it up, then run `{UPGRADE_COMMAND}` (migration {', '.join(state.pending)}). "
                            f"Received: {where}")

    def migrate(self, target: str = "head") -> SchemaState:
        """Run the migrations up to ``target`` (a revision id, default the newest) in one transaction.

        Raises:
            DatabaseError: when the database cannot be reached or a migration fails (nothing is changed).
        """
        config = _alembic_config()
        try:
            with self.engine.begin() as connection:
                if self.backend == "postgresql":
                    connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
                config.attributes["connection"] = connection
                command.upgrade(config, target)
        except sa.exc.DBAPIError as exc:
            raise self.unreachable(exc) from None
        return self.schema_state()
