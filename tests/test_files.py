"""breakhis_core.files: atomic writes, torn-line-safe appends, temporary files and locks."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading

import pytest

from breakhis_core.errors import DiskSpaceError
from breakhis_core.files import (
    append_jsonl,
    format_bytes,
    is_disk_full,
    locked,
    read_jsonl,
    remove_temp_files,
    try_lock,
    unlock,
    write_json_atomic,
)


def test_append_ends_a_torn_line_first(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2, "lo')  # a crash mid-line
    append_jsonl(path, {"epoch": 2})
    assert read_jsonl(path) == [{"epoch": 1}, {"epoch": 2}]


def test_full_disk_is_a_domain_error(tmp_path, monkeypatch):
    write_json_atomic(tmp_path / "a.json", {"v": 1})

    def full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskSpaceError, match=r"not enough disk space to write a\.json .*MiB free.*Received"):
        write_json_atomic(tmp_path / "a.json", {"v": 2})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "full")
    assert is_disk_full(wrapped) and not is_disk_full(OSError(errno.EACCES, "denied"))


def test_remove_temp_files_only_touches_ours(tmp_path):
    names = [".tmp-123-frozen.keras", ".status.json.abc.tmp", "frozen.keras", ".train.lock", "notes.tmp"]
    for name in names:
        (tmp_path / name).write_text("x")
    removed = sorted(p.name for p in remove_temp_files(tmp_path))
    assert removed == [".status.json.abc.tmp", ".tmp-123-frozen.keras"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".train.lock", "frozen.keras", "notes.tmp"]


def test_try_lock_is_exclusive_until_released(tmp_path):
    first = try_lock(tmp_path / "lock")
    assert first is not None and try_lock(tmp_path / "lock") is None
    unlock(first)
    second = try_lock(tmp_path / "lock")
    assert second is not None
    unlock(second)


def test_a_lock_held_by_another_process_is_refused_and_freed_when_it_is_killed(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from breakhis_core.files import try_lock; "
         "lock = try_lock(sys.argv[1]); print('held' if lock else 'refused', flush=True); time.sleep(60)",
         str(tmp_path / "lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert try_lock(tmp_path / "lock") is None
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    after = try_lock(tmp_path / "lock")
    assert after is not None
    unlock(after)


def test_locked_waits_for_the_holder(tmp_path):
    order = []

    def wait_for_the_lock():
        with locked(tmp_path / "lock"):
            order.append("waiter")

    first = try_lock(tmp_path / "lock")
    waiter = threading.Thread(target=wait_for_the_lock)
    waiter.start()
    waiter.join(timeout=0.5)
    order.append("holder releases")
    unlock(first)
    waiter.join(timeout=10)
    assert order == ["holder releases", "waiter"]


def test_byte_counts_read_in_binary_units():
    sizes = (0, 812, 1023, 1024, 3 * 1024, 1536 * 1024, 200 << 20, 4 << 30, 1536 << 30)
    assert [format_bytes(size) for size in sizes] == [
        "0 bytes", "812 bytes", "1023 bytes", "1.0 KiB", "3.0 KiB", "1.5 MiB", "200.0 MiB", "4.0 GiB", "1,536.0 GiB",
    ]
