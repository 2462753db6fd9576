"""A throwaway PostgreSQL cluster for the case store's tests and bench/cases.py: ``initdb`` into a temporary folder,
the server listening on a unix socket in that folder only (no TCP port), stopped and removed at the end.

PostgreSQL refuses to run as root, so as root (CI) the cluster belongs to the ``postgres`` user (Debian's package
makes it) or else ``nobody``, and its programs run through ``runuser``. The programs are found on ``PATH`` or in
Debian's ``/usr/lib/postgresql/<version>/bin``. Without them the PostgreSQL tests skip with the reason, unless
``$BREAKHIS_TEST_POSTGRES`` is "required" (``.ci/run`` sets it), where they fail.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

REQUIRED_ENV = "BREAKHIS_TEST_POSTGRES"


def postgres_bin() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: on ``PATH``, else Debian's newest ``/usr/lib/postgresql/*/bin``."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    folders = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return next((folder for folder in reversed(folders) if (folder / "initdb").is_file()), None)


def postgres_required() -> bool:
    """Whether a missing PostgreSQL is a failure (CI) rather than a reason to skip."""
    return os.environ.get(REQUIRED_ENV, "").strip().lower() == "required"


class PostgresCluster:
    """One cluster in a temporary folder; :meth:`start` it, :meth:`url` gives a database, :meth:`stop` removes it."""

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.folder = Path(tempfile.mkdtemp(prefix="breakhis-pg-"))
        self.data = self.folder / "data"
        self.owner = None
        if os.geteuid() == 0:
            self.owner = next(name for name in ("postgres", "nobody") if _user_exists(name))
            account = pwd.getpwnam(self.owner)
            os.chown(self.folder, account.pw_uid, account.pw_gid)

    def _run(self, *args: str) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.owner:
            command = ["runuser", "-u", self.owner, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.folder, timeout=120)
        if result.returncode:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")

    def start(self) -> PostgresCluster:
        """initdb (trust authentication, superuser "postgres") and start the server on a socket in the folder."""
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-k {self.folder} -c listen_addresses='' -c fsync=off -c max_connections=60"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.folder / "server.log"), "-w", "start")
        return self

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of ``database`` on this cluster (psycopg 3, the socket folder as host)."""
        return f"postgresql+psycopg://postgres@/{database}?host={self.folder}"

    def new_database(self) -> str:
        """The URL of a new, empty database of its own."""
        import sqlalchemy as sa

        name = f"cases_{secrets.token_hex(4)}"
        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql(f"CREATE DATABASE {name}")
        finally:
            engine.dispose()
        return self.url(name)

    def stop(self) -> None:
        """Stop the server at once and remove the folder."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
