"""crisp.fileio: the one atomic writer (text and bytes), with and without creating folders."""

import pytest

from crisp.fileio import OutputError, atomic_write_bytes, atomic_write_text


def test_atomic_write_text_and_bytes(tmp_path):
    assert atomic_write_text(tmp_path / "a.txt", "héllo").read_text(encoding="utf-8") == "héllo"
    assert atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin"]  # no temporary file left


def test_missing_folder_is_an_error_unless_parents(tmp_path):
    target = tmp_path / "new" / "deep" / "out.json"
    with pytest.raises(OutputError, match="does not exist"):
        atomic_write_text(target, "{}")
    atomic_write_text(target, "{}", parents=True)
    assert target.read_text() == "{}"
