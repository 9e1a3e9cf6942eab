"""What a one-file artifact carries besides code, and how it is checked at every start.

Inside the artifact the data package `streetcascade_bundle` holds:

    bundle.json               BundleInfo: what was packed, from what, for which platform, hashes
    miner.toml                the miner config, byte for byte as given to `streetcascade package`
    cascade.toml              [engine] cascade_config (thresholds), when the config names one
    engines/<target>/         the engine set: manifest.json + the files it lists, nothing else

At start the config, the cascade config and the engine manifest are hashed and compared with
bundle.json; the manifest's own hashes then cover every engine file (checked by the loader).
A change to any of them after packing (an edit in the unpacked cache, a damaged download, a
re-zipped artifact) is refused with ArtifactTampered. This is an integrity check, not a
signature: someone who can rewrite bundle.json too can defeat it, so publish the artifact's
own sha256 (`package` writes <artifact>.sha256) and check it where it is deployed.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from streetcascade.errors import ArtifactTampered, ConfigError
from streetcascade.manifest import MANIFEST_NAME, sha256_file

BUNDLE_PACKAGE = "streetcascade_bundle"
BUNDLE_INFO = "bundle.json"
CONFIG_NAME = "miner.toml"
CASCADE_CONFIG_NAME = "cascade.toml"
ENGINES_DIR = "engines"
FORMAT_VERSION = 1


class PackedFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    path: str  # relative to the bundle folder
    sha256: str
    size_bytes: int


class BundleInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format_version: int
    streetcascade_version: str
    built_at: str  # ISO 8601 UTC
    tool: str  # what built the artifact, e.g. "pex 2.105.2"
    python: str  # the Python version its wheels are for, e.g. "3.11"
    platform: str  # e.g. "linux-x86_64"
    target: str  # the engine set's target name
    backend: str
    config: PackedFile
    manifest: PackedFile
    engines_dir: str  # relative to the bundle folder
    cascade_config: PackedFile | None = None
    requirements: list[str] = []  # what was resolved into the artifact, name==version


def packed(root: Path, relative: str) -> PackedFile:
    path = root / relative
    return PackedFile(relative, sha256_file(path), path.stat().st_size)


def bundle_root() -> Path:
    """The folder of the bundle this process runs from (unpacked by pex / shiv)."""
    try:
        module = __import__(BUNDLE_PACKAGE)
    except ImportError:
        raise ConfigError(f"no {BUNDLE_PACKAGE} package: this is not a one-file artifact built by `streetcascade package`") from None
    root = Path(module.__file__).resolve().parent
    if not root.is_dir():  # imported from inside a zip: engine files cannot be opened there
        raise ConfigError(f"{root}: the artifact's files are not unpacked; build it with `streetcascade package` (pex --venv)")
    return root


def read_bundle(root: Path) -> BundleInfo:
    path = root / BUNDLE_INFO
    try:
        return msgspec.json.decode(path.read_bytes(), type=BundleInfo)
    except FileNotFoundError:
        raise ArtifactTampered(f"{path}: missing; the artifact is damaged: rebuild it with `streetcascade package`") from None
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ArtifactTampered(f"{path}: unreadable ({exc}); the artifact is damaged: rebuild it with `streetcascade package`") from None


def verify_bundle(root: Path, info: BundleInfo) -> None:
    """The config(s) and the engine manifest still have the hashes recorded at packing time
    (the manifest's hashes cover the engine files; the loader checks those)."""
    for entry in (info.config, info.cascade_config, info.manifest):
        if entry is None:
            continue
        path = root / entry.path
        if not path.is_file():
            raise ArtifactTampered(f"{path}: packed into the artifact but missing now; rebuild it with `streetcascade package`")
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise ArtifactTampered(
                f"{path}: sha256 {digest[:16]}... differs from the {entry.sha256[:16]}... recorded when the artifact was packed: "
                "it was changed afterwards; refusing to run it. Rebuild with `streetcascade package` (and check the artifact's "
                "own sha256 against the one published with it)"
            )
    if Path(info.manifest.path).name != MANIFEST_NAME:
        raise ArtifactTampered(f"bundle.json names {info.manifest.path} as the engine manifest")
