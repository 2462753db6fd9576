"""Who may do what on a shared server: the roles of signed-in users, from a small TOML file.

Four roles: *viewer* (Home, Diagnose, Slides, Compare, Cases: read), *pathologist* (also review and sign cases),
*trainer* (also Train and Models: start and cancel training, import, export and delete models, set the active model)
and *admin* (everything). Sign-in itself is the app's (Streamlit's ``st.login``, OpenID Connect); this module only
maps a signed-in e-mail address to a role and says what a role may do (``allows``), for the pages and for the case
service (``breakhis_core.cases.service``), which enforces it itself.

The roles file is ``$BREAKHIS_ROLES``, else ``roles.toml`` in the runs folder (beside ``audit.jsonl``)::

    admin = ["it@lab.example"]
    trainer = ["lead@lab.example"]
    pathologist = ["dr.*@lab.example"]
    viewer = ["*@lab.example"]      # shell-style patterns, matched without regard to case

A user matched by several keys gets the first of admin, trainer, pathologist, viewer; a user matched by none has
no role and is refused everything, with the reason. Without sign-in configured (the desktop default) there are no
roles: the single local user is an admin and may do everything.
"""

from __future__ import annotations

import fnmatch
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from breakhis_core.errors import ConfigError

ROLES_ENV = "BREAKHIS_ROLES"
ROLES_NAME = "roles.toml"
VIEWER, PATHOLOGIST, TRAINER, ADMIN = "viewer", "pathologist", "trainer", "admin"
ROLES = (ADMIN, TRAINER, PATHOLOGIST, VIEWER)
"""The roles, in the order a user matched by several patterns gets them (the first)."""
GRANTS = {
    VIEWER: frozenset({VIEWER}),
    PATHOLOGIST: frozenset({VIEWER, PATHOLOGIST}),
    TRAINER: frozenset({VIEWER, TRAINER}),
    ADMIN: frozenset({VIEWER, PATHOLOGIST, TRAINER, ADMIN}),
}
"""What each role may do, named by the roles whose work it is: a pathologist may do a viewer's work too, an admin
everyone's."""


@dataclass(frozen=True)
class Roles:
    """Address patterns of each role (lower-case, shell-style: ``*@lab.example``)."""

    trainers: tuple[str, ...] = ()
    viewers: tuple[str, ...] = ()
    pathologists: tuple[str, ...] = ()
    admins: tuple[str, ...] = ()

    def patterns(self, role: str) -> tuple[str, ...]:
        """The patterns of ``role`` (one of ``ROLES``)."""
        return {ADMIN: self.admins, TRAINER: self.trainers, PATHOLOGIST: self.pathologists, VIEWER: self.viewers}[role]

    def role_of(self, email: str | None) -> str | None:
        """The first role of ``ROLES`` whose patterns match a signed-in address, or None (no role)."""
        address = (email or "").strip().lower()
        if not address:
            return None
        return next((role for role in ROLES
                     if any(fnmatch.fnmatchcase(address, pattern) for pattern in self.patterns(role))), None)


def roles_path(runs_root: str | Path | None = None) -> Path:
    """``$BREAKHIS_ROLES``, else ``<runs folder>/roles.toml``."""
    if os.environ.get(ROLES_ENV):
        return Path(os.environ[ROLES_ENV]).expanduser()
    from breakhis_core.lab.paths import runs_dir

    return runs_dir(runs_root) / ROLES_NAME


def load_roles(path: str | Path | None = None, runs_root: str | Path | None = None) -> Roles:
    """The roles of ``path`` (default :func:`roles_path`); no one has a role when the file does not exist.

    Raises:
        ConfigError: for a file that is not TOML, keys other than admin, trainer, pathologist and viewer, or
            values that are not lists of text.
    """
    path = Path(path) if path is not None else roles_path(runs_root)
    if not path.is_file():
        return Roles()
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"the roles file is not a readable TOML file ({exc}). Received: {path}") from None
    unknown = sorted(set(values) - set(ROLES))
    if unknown:
        raise ConfigError(f"the roles file knows the keys {', '.join(ROLES)} only. Received: {', '.join(unknown)} in {path}")
    lists = {}
    for key in ROLES:
        value = values.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{key} in the roles file must be a list of e-mail addresses or patterns. Received: {value!r}")
        lists[key] = tuple(item.strip().lower() for item in value if item.strip())
    return Roles(trainers=lists[TRAINER], viewers=lists[VIEWER], pathologists=lists[PATHOLOGIST], admins=lists[ADMIN])


def allows(role: str | None, needed: str) -> bool:
    """Whether ``role`` may do the work of the role ``needed`` (one of ``ROLES``; see ``GRANTS``)."""
    return needed in GRANTS.get(role or "", frozenset())
