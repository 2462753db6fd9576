"""Who may do what on a shared server: the roles of signed-in users, from a small TOML file.

Two roles: *viewer* (Home, Diagnose, Slides, Compare) and *trainer* (also Train and Models: start and cancel
training, import, export and delete models, set the active model). Sign-in itself is the app's
(Streamlit's ``st.login``, OpenID Connect); this module only maps a signed-in e-mail address to a role.

The roles file is ``$BREAKHIS_ROLES``, else ``roles.toml`` in the runs folder (beside ``audit.jsonl``)::

    trainer = ["lead@lab.example"]
    viewer = ["*@lab.example"]      # shell-style patterns, matched without regard to case

A user listed under both is a trainer; a user matched by neither has no role and is refused
everything, with the reason. Without sign-in configured (the desktop default) there are no roles:
the single local user may do everything.
"""

from __future__ import annotations

import fnmatch
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

ROLES_ENV = "BREAKHIS_ROLES"
ROLES_NAME = "roles.toml"
VIEWER, TRAINER = "viewer", "trainer"
RANK = {VIEWER: 1, TRAINER: 2}
"""A role may do what any role of lower or equal rank may do."""


@dataclass(frozen=True)
class Roles:
    """Address patterns of each role (lower-case, shell-style: ``*@lab.example``)."""

    trainers: tuple[str, ...] = ()
    viewers: tuple[str, ...] = ()

    def role_of(self, email: str | None) -> str | None:
        """"trainer", "viewer" or None (no role) for a signed-in address."""
        address = (email or "").strip().lower()
        if not address:
            return None
        if any(fnmatch.fnmatchcase(address, pattern) for pattern in self.trainers):
            return TRAINER
        if any(fnmatch.fnmatchcase(address, pattern) for pattern in self.viewers):
            return VIEWER
        return None


def roles_path(runs_root: str | Path | None = None) -> Path:
    """``$BREAKHIS_ROLES``, else ``<runs folder>/roles.toml``."""
    if os.environ.get(ROLES_ENV):
        return Path(os.environ[ROLES_ENV]).expanduser()
    from .registry import runs_dir

    return runs_dir(runs_root) / ROLES_NAME


def load_roles(path: str | Path | None = None, runs_root: str | Path | None = None) -> Roles:
    """The roles of ``path`` (default :func:`roles_path`); no one has a role when the file does not exist.

    Raises:
        ConfigError: for a file that is not TOML, keys other than trainer and viewer, or values that are
            not lists of text.
    """
    path = Path(path) if path is not None else roles_path(runs_root)
    if not path.is_file():
        return Roles()
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"the roles file is not a readable TOML file ({exc}). Received: {path}") from None
    unknown = sorted(set(values) - {TRAINER, VIEWER})
    if unknown:
        raise ConfigError(f"the roles file knows the keys trainer and viewer only. Received: {', '.join(unknown)} in {path}")
    lists = {}
    for key in (TRAINER, VIEWER):
        value = values.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{key} in the roles file must be a list of e-mail addresses or patterns. Received: {value!r}")
        lists[key] = tuple(item.strip().lower() for item in value if item.strip())
    return Roles(trainers=lists[TRAINER], viewers=lists[VIEWER])


def allows(role: str | None, needed: str) -> bool:
    """Whether ``role`` may do what needs ``needed`` ("viewer" or "trainer")."""
    return RANK.get(role or "", 0) >= RANK[needed]
