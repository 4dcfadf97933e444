"""Atomic writes and folders built once (tcomp_utils.files)."""
import pytest

from tcomp_utils import files


def test_a_folder_is_built_once_and_a_failed_build_leaves_nothing(tmp_path):
    folder, calls = tmp_path / "cache" / "model", []

    def build(tmp):
        calls.append(tmp)
        (tmp / "weights").write_text("w")
        (tmp / "metrics.json").write_text("{}")

    assert files.build_folder(folder, build) == folder and (folder / "weights").read_text() == "w"
    files.build_folder(folder, build)
    assert len(calls) == 1  # the marker is there: not built again

    def broken(tmp):
        (tmp / "weights").write_text("half")
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        files.build_folder(tmp_path / "cache" / "other", broken)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["model"]  # no half-built folder
    with pytest.raises(RuntimeError, match="stopped"):
        files.build_folder(folder, broken, rebuild=True)
    assert (folder / "weights").read_text() == "w"  # a failed rebuild keeps the old folder


def test_a_build_that_another_process_finished_first_keeps_theirs_unless_rebuilding(tmp_path):
    folder = tmp_path / "converted"

    def racing(text):
        def build(tmp):
            if not folder.exists():  # the other process finishes while this one builds
                folder.mkdir()
                (folder / "config.json").write_text("theirs")
            (tmp / "config.json").write_text(text)
        return build

    files.build_folder(folder, racing("mine"), marker="config.json")
    assert (folder / "config.json").read_text() == "theirs"
    files.build_folder(folder, racing("mine"), rebuild=True, marker="config.json")
    assert (folder / "config.json").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["converted"]


def test_atomic_writes_leave_no_temporary_file(tmp_path):
    import pandas as pd

    files.write_json_atomic(tmp_path / "a" / "x.json", {"ä": 1})
    files.write_csv_atomic(pd.DataFrame({"n": [1, 2]}), tmp_path / "a" / "x.csv")
    assert (tmp_path / "a" / "x.json").read_text(encoding="utf-8") == '{\n "ä": 1\n}'
    assert (tmp_path / "a" / "x.csv").read_text() == "n\n1\n2\n"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.csv", "x.json"]
    assert files.sha256_file(tmp_path / "a" / "x.csv") == __import__("hashlib").sha256(b"n\n1\n2\n").hexdigest()
