import hashlib
import json
import shutil
import zipfile

import pytest

from tcomp_utils import assets


@pytest.mark.slow
def test_every_fetched_asset_matches_its_pinned_hashes():
    for name in assets.ASSETS:
        path = assets.asset_path(name)  # verifies every file's SHA-256
        assert path.exists()
        if assets.ASSETS[name].source == "pypi":
            manifest = json.loads((path / assets.MANIFEST).read_text())
            assert manifest["wheel_sha256"] == assets.ASSETS[name].sha256 and manifest["files"]


def test_registry_entries_are_complete():
    for a in assets.ASSETS.values():
        assert len(a.sha256) == 64 and a.licence and a.description
        assert a.source in ("pypi", "repo")
        if a.source == "pypi":
            assert a.spec and a.members and a.filename.endswith(".whl")


def test_unknown_asset_name():
    with pytest.raises(assets.UnknownAssetError, match=r"unknown asset 'bert-large'; known assets: austen"):
        assets.asset_path("bert-large")
    assert assets.main(["list"]) == 0


@pytest.fixture
def fake_asset(tmp_path, monkeypatch):
    """A registered asset backed by a small wheel in a local wheelhouse, with an empty cache."""
    house = tmp_path / "house"
    house.mkdir()
    wheel = house / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake/data/values.txt", "1 2 3\n")
        zf.writestr("fake/other.py", "x = 1\n")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    asset = assets.Asset("fake", "data", "test asset", "pypi", wheel.name, digest, "MIT", "fake==1.0", ("fake/data/",))
    monkeypatch.setitem(assets.ASSETS, "fake", asset)
    monkeypatch.setenv("TCOMP_WHEELHOUSE", str(house))
    monkeypatch.setenv("TCOMP_CACHE", str(tmp_path / "cache"))
    return asset


def test_missing_asset_says_how_to_fetch_it(fake_asset):
    with pytest.raises(assets.AssetMissingError, match=r"python -m tcomp_utils\.assets fetch fake"):
        assets.asset_path("fake")


def test_fetch_unpacks_only_the_members_and_is_idempotent(fake_asset):
    path = assets.fetch("fake")
    assert (path / "fake/data/values.txt").read_text() == "1 2 3\n"
    assert not (path / "fake/other.py").exists()
    assert assets.fetch("fake") == path
    assert sorted(p.name for p in path.parent.iterdir()) == ["fake"]  # no temporary folders left


def test_corrupted_asset_file_is_detected(fake_asset):
    path = assets.fetch("fake")
    (path / "fake/data/values.txt").write_text("1 2 4\n")
    with pytest.raises(assets.AssetCorruptedError, match=r"values\.txt.*does not match.*fetch fake --force"):
        assets.asset_path("fake")
    assets.fetch("fake", force=True)
    assert (assets.asset_path("fake") / "fake/data/values.txt").read_text() == "1 2 3\n"


def test_wheel_with_wrong_hash_leaves_nothing_behind(fake_asset, monkeypatch, tmp_path):
    monkeypatch.setitem(assets.ASSETS, "fake", assets.Asset(**{**fake_asset.__dict__, "sha256": "0" * 64}))
    with pytest.raises(assets.AssetCorruptedError, match="does not match the pinned"):
        assets.fetch("fake")
    assert list((tmp_path / "cache" / "assets").iterdir()) == []


def test_corrupted_committed_data_file(monkeypatch, tmp_path):
    (tmp_path / "data").mkdir()
    shutil.copy(assets.REPO_ROOT / "data/de_en_pairs.tsv.gz", tmp_path / "data/de_en_pairs.tsv.gz")
    monkeypatch.setattr(assets, "REPO_ROOT", tmp_path)
    assert assets.asset_path("de-en") == tmp_path / "data/de_en_pairs.tsv.gz"
    with open(tmp_path / "data/de_en_pairs.tsv.gz", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(assets.AssetCorruptedError, match=r"'de-en'.*git checkout -- data/de_en_pairs\.tsv\.gz"):
        assets.asset_path("de-en")


def test_a_damaged_manifest_is_named_by_verify_and_repaired_by_fetch(fake_asset, capsys):
    path = assets.fetch("fake")
    manifest = path / assets.MANIFEST
    intact = manifest.read_bytes()
    manifest.write_bytes(intact[: len(intact) // 2])  # truncated
    with pytest.raises(assets.AssetCorruptedError, match=rf"asset 'fake': its manifest {manifest} is damaged "
                                                         r"\(.*\); rebuild it with `python -m tcomp_utils\.assets "
                                                         r"fetch fake --force`"):
        assets.main(["verify", "fake"])
    manifest.write_bytes(intact.replace(b'"files"', b'"filds"'))  # one flipped byte
    with pytest.raises(assets.AssetCorruptedError, match=r"manifest.json is damaged \(no 'files' mapping"):
        assets.asset_path("fake")
    manifest.write_bytes(intact.replace(b"fake==1.0", b"fake==1.1"))
    with pytest.raises(assets.AssetCorruptedError, match=r"'spec' is 'fake==1\.1', not 'fake==1\.0'"):
        assets.asset_path("fake")
    capsys.readouterr()
    assert assets.fetch("fake") == path  # fetch rebuilds it, without --force
    assert "manifest" in capsys.readouterr().err and manifest.read_bytes() == intact
    assert assets.main(["verify", "fake"]) == 0
    assert sorted(p.name for p in path.parent.iterdir()) == ["fake"]
