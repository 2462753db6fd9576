"""access.py: roles of signed-in users from the roles file."""

from __future__ import annotations

import pytest

from breakhis_core.lab.access import ADMIN, PATHOLOGIST, TRAINER, VIEWER, Roles, allows, load_roles, roles_path
from breakhis_core.errors import ConfigError


def test_roles_from_patterns(tmp_path):
    path = tmp_path / "roles.toml"
    path.write_text('trainer = ["Lead@Lab.example"]\nviewer = ["*@lab.example", "guest@other.example"]\n')
    roles = load_roles(path)
    assert roles.role_of("lead@lab.example") == TRAINER  # listed as both: the higher role; case ignored
    assert roles.role_of("pathologist@LAB.example") == VIEWER and roles.role_of("guest@other.example") == VIEWER
    assert roles.role_of("someone@else.example") is None and roles.role_of(None) is None and roles.role_of("") is None
    assert allows(TRAINER, VIEWER) and allows(TRAINER, TRAINER) and allows(VIEWER, VIEWER)
    assert not allows(VIEWER, TRAINER) and not allows(None, VIEWER)


def test_four_roles_and_what_each_may_do(tmp_path):
    path = tmp_path / "roles.toml"
    path.write_text('admin = ["it@lab.example"]\ntrainer = ["lead@lab.example"]\n'
                    'pathologist = ["dr.*@lab.example", "lead@lab.example"]\nviewer = ["*@lab.example"]\n')
    roles = load_roles(path)
    assert roles.role_of("it@lab.example") == ADMIN  # matched by viewer too: the first of admin ... viewer
    assert roles.role_of("lead@lab.example") == TRAINER and roles.role_of("dr.who@lab.example") == PATHOLOGIST
    assert roles.role_of("clerk@lab.example") == VIEWER
    assert allows(PATHOLOGIST, PATHOLOGIST) and allows(PATHOLOGIST, VIEWER) and not allows(PATHOLOGIST, TRAINER)
    assert not allows(TRAINER, PATHOLOGIST) and not allows(VIEWER, PATHOLOGIST)
    assert all(allows(ADMIN, role) for role in (VIEWER, PATHOLOGIST, TRAINER, ADMIN))
    assert not any(allows(role, ADMIN) for role in (VIEWER, PATHOLOGIST, TRAINER, None))


def test_roles_file_location_and_absence(tmp_path, monkeypatch):
    monkeypatch.delenv("BREAKHIS_ROLES", raising=False)
    monkeypatch.setenv("BREAKHIS_RUNS", str(tmp_path))
    assert roles_path() == tmp_path / "roles.toml"
    assert load_roles() == Roles()
    monkeypatch.setenv("BREAKHIS_ROLES", str(tmp_path / "elsewhere.toml"))
    assert roles_path() == tmp_path / "elsewhere.toml"


@pytest.mark.parametrize("text, message", [
    ("trainer = [", "not a readable TOML"),
    ('superuser = ["a@b"]\n', "Received: superuser"),
    ('viewer = "a@b"\n', "must be a list"),
    ("trainer = [1]\n", "must be a list"),
])
def test_bad_roles_file_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "roles.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_roles(path)
