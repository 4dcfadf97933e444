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


def _weights(path, values=(1.0, 2.0, 3.0)):
    import numpy as np
    import safetensors.numpy

    safetensors.numpy.save_file({"w": np.array(values, dtype=np.float32)}, str(path))


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one bit of the last weight
    path.write_bytes(bytes(data))


def test_a_built_folder_is_checked_against_the_checksums_recorded_when_it_was_built(tmp_path):
    folder = tmp_path / "model"

    def build(tmp):
        _weights(tmp / "model.safetensors")
        (tmp / "metrics.json").write_text("{}")

    def never(tmp):
        raise AssertionError("a built folder must not be built again")

    files.build_folder(folder, build)
    recorded = __import__("json").loads((folder / files.CHECKSUMS).read_text())
    assert set(recorded) == {"model.safetensors", "metrics.json"}
    files.build_folder(folder, never)  # intact: loads
    _flip_a_byte(folder / "model.safetensors")
    with pytest.raises(files.CacheCorruptedError, match=r"model/model\.safetensors does not match the SHA-256 recorded "
                                                        r"in .*checksums\.json.*; retrain it with f\(retrain=True\)"):
        files.build_folder(folder, never, rebuild_hint="retrain it with f(retrain=True)")
    files.build_folder(folder, build, rebuild=True)
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:-4])  # truncated
    with pytest.raises(files.CacheCorruptedError, match=r"model\.safetensors does not match"):
        files.build_folder(folder, never)


def test_a_folder_built_before_checksums_were_recorded_loads_without_a_rebuild_and_gets_them(tmp_path, capsys):
    folder = tmp_path / "old"
    folder.mkdir()
    _weights(folder / "model.safetensors")
    (folder / "metrics.json").write_text("{}")

    def never(tmp):
        raise AssertionError("an old cache must not be rebuilt")

    files.build_folder(folder, never)
    assert "recorded them now" in capsys.readouterr().err  # a one-line notice
    assert (folder / files.CHECKSUMS).is_file()
    files.build_folder(folder, never)
    assert capsys.readouterr().err == ""
    _flip_a_byte(folder / "model.safetensors")  # from now on a damaged file is caught
    with pytest.raises(files.CacheCorruptedError, match="does not match the SHA-256"):
        files.build_folder(folder, never)
    (folder / files.CHECKSUMS).unlink()
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:-4])
    with pytest.raises(files.CacheCorruptedError, match=r"old/model\.safetensors is damaged \(.*\); build it again"):
        files.build_folder(folder, never)  # an old cache's truncated weights are refused, not recorded
    assert not (folder / files.CHECKSUMS).exists()


_SLOW_BUILD = """
import sys, time
from pathlib import Path
from tcomp_utils import files

def build(tmp):
    (tmp / "model.safetensors").write_bytes(b"half")
    print("building", flush=True)
    time.sleep(120)

files.build_folder(Path(sys.argv[1]), build)
"""


def terminated_while_building(code: str, *args: str) -> int:
    """Run ``code`` in a fresh Python until it prints ``building``, send it SIGTERM; its exit status."""
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True,
                            cwd=files.REPO_ROOT)
    try:
        assert proc.stdout.readline().strip() == "building"
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_during_a_build_leaves_no_temporary_folder(tmp_path):
    assert terminated_while_building(_SLOW_BUILD, str(tmp_path / "cache" / "model")) == 143  # 128 + SIGTERM
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_build_removes_what_killed_builds_of_the_same_folder_left_but_never_a_checkpoint(tmp_path):
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    host = files._host()
    left = {name: tmp_path / name for name in [
        f".model-build-{host}-{dead_pid}-abc_123",   # killed: removed
        f".model-build-{host}-{os.getpid()}-xyz",    # a build still running: kept
        f".model-build-otherhost-{dead_pid}-abc",    # another machine's, sharing the cache: kept
        f".other-build-{host}-{dead_pid}-abc",       # another folder's: kept
        ".ckpt-model-3fdda75aae40",                  # a resumable checkpoint: kept
    ]}
    for path in left.values():
        path.mkdir()
        (path / "state.pt").write_text("x")
    files.build_folder(tmp_path / "model", lambda tmp: (tmp / "metrics.json").write_text("{}"))
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == sorted(["model", *list(left)[1:]])
