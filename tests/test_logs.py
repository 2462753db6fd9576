"""logs.py: the library's records through Python's logging, at the level of $BREAKHIS_LOG_LEVEL, on stderr."""

from __future__ import annotations

import logging

import pytest

from breakhis_core.lab.logs import log_level, setup_logging


@pytest.fixture
def library_logger():
    logger = logging.getLogger("breakhis_core")
    handlers, level = list(logger.handlers), logger.level
    yield logger
    logger.handlers[:] = handlers
    logger.setLevel(level)


def test_level_from_the_environment(monkeypatch):
    monkeypatch.delenv("BREAKHIS_LOG_LEVEL", raising=False)
    assert log_level() == logging.WARNING
    monkeypatch.setenv("BREAKHIS_LOG_LEVEL", "info")
    assert log_level() == logging.INFO
    assert log_level("DEBUG") == logging.DEBUG and log_level("loud") == logging.WARNING


def test_records_reach_stderr_once_at_the_level(monkeypatch, capsys, library_logger):
    monkeypatch.setenv("BREAKHIS_LOG_LEVEL", "INFO")
    setup_logging()
    setup_logging()  # a second call adds no second handler
    logging.getLogger("breakhis_core.runs.registry").info("active model set to %s", "r:finetuned")
    logging.getLogger("breakhis_core.runs.registry").debug("not shown")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].endswith(" INFO breakhis_core.runs.registry: active model set to r:finetuned"), err
    monkeypatch.setenv("BREAKHIS_LOG_LEVEL", "ERROR")
    setup_logging()
    logging.getLogger("breakhis_core.training.train").warning("hidden")
    assert capsys.readouterr().err == ""


def test_an_unknown_level_is_said(monkeypatch, capsys, library_logger):
    monkeypatch.setenv("BREAKHIS_LOG_LEVEL", "chatty")
    setup_logging()
    assert "BREAKHIS_LOG_LEVEL=chatty is not one of" in capsys.readouterr().err


def test_library_operations_log(tmp_path, caplog, tiny_run):
    from breakhis_core.runs import default_model

    (tmp_path / tiny_run.name).symlink_to(tiny_run, target_is_directory=True)  # the shared run's folder is left alone
    with caplog.at_level(logging.INFO, logger="breakhis_core"):
        default_model.set_default(tiny_run.name, "frozen", tmp_path)
    assert f"active model set to {tiny_run.name}:frozen" in caplog.text
