"""llmspec/files.py: writes that land whole or not at all, and never collide with another writer's."""

from __future__ import annotations

import stat

import pytest

from llmspec.files import replaced_atomically, write_atomic


def test_two_writers_of_one_cache_entry_never_share_a_temporary_file(tmp_path):
    # as two DeepSpeed ranks (or test workers) tokenising one corpus at once: each renames its own file into place
    target = tmp_path / "train.bin"
    with replaced_atomically(target) as first, replaced_atomically(target) as second:
        assert first != second and first.parent == second.parent == tmp_path
        first.write_bytes(b"first")
        second.write_bytes(b"second")
    assert target.read_bytes() == b"first"  # the outer block ends last
    assert list(tmp_path.iterdir()) == [target]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = write_atomic(tmp_path / "meta.json", "old")
    with pytest.raises(KeyboardInterrupt), replaced_atomically(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt  # Ctrl-C mid-write
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_written_files_are_readable_and_scripts_executable(tmp_path):
    assert stat.S_IMODE(write_atomic(tmp_path / "a.json", "{}").stat().st_mode) == 0o644
    assert stat.S_IMODE(write_atomic(tmp_path / "launch.sh", "", executable=True).stat().st_mode) == 0o755
