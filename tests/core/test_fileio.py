import os
import stat

import pytest

from rdd3d.core.fileio import atomic_open, stale_temp_files, write_json


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_mode_the_umask_gives(tmp_path, umask, monkeypatch):
    import rdd3d.core.fileio as fileio

    previous = os.umask(umask)
    try:
        monkeypatch.setattr(fileio, "_NEW_FILE_MODE", fileio._mode_for_new_files())
        write_json(tmp_path / "result.json", {"a": 1})
        with open(tmp_path / "plain.json", "w") as handle:
            handle.write("{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "result.json").stat().st_mode) == stat.S_IMODE((tmp_path / "plain.json").stat().st_mode)
    assert stat.S_IMODE((tmp_path / "result.json").stat().st_mode) == 0o666 & ~umask


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "last.pt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as handle:
            handle.write("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and stale_temp_files(target) == []
    (tmp_path / ".last.pt.abc.tmp").write_text("a killed writer's")
    assert stale_temp_files(target) == [tmp_path / ".last.pt.abc.tmp"]
