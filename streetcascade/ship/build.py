"""`streetcascade package`: one engine set + one miner config -> one runnable file.

    streetcascade package --engines engines/cpu-x86_64 --config miner.toml -o miner-cpu-x86_64.pex

The artifact is a PEX zipapp in venv mode (https://docs.pex-tool.org): on first start it unpacks
itself into $PEX_ROOT (default ~/.cache/pex) once and re-executes from there; later starts skip
the unpacking. It holds our online modules (contents.py), the distributions they need for one
Python version and platform, and the bundle (bundle.py). shiv can build the same contents
(`--tool shiv`); docs/deploy.md has both measured, and why pex is the default.

Where the distributions come from (`--resolve`):
  env        (default) the distributions installed in this virtualenv: no network, and exactly the
             versions the tests ran with; the artifact is for this Python and this platform.
  index      a package index (PyPI, or --index-url / --find-links): the versions installed here
             pinned when present, else pyproject's specifiers; --python-version and --platform
             build for another machine (binary wheels only).
  --wheelhouse DIR  index mode with only that folder of wheels (offline; fill it with `pip download`,
             see docs/deploy.md).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import json
import logging
import platform as platform_module
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from streetcascade import __version__
from streetcascade.errors import ConfigError, EngineMismatch, StreetcascadeError
from streetcascade.manifest import MANIFEST_NAME, Manifest, iter_graphs, read_manifest, sha256_file, verify_files

from . import contents
from .bundle import (BUNDLE_INFO, BUNDLE_PACKAGE, CASCADE_CONFIG_NAME, CONFIG_NAME, ENGINES_DIR, FORMAT_VERSION, BundleInfo, packed)

log = logging.getLogger(__name__)

ENTRY_POINT = "streetcascade.ship.entry:main"
TOOLS = ("pex", "shiv")
RESOLVES = ("env", "index")
# The artifact runs with whatever `python3` is first on PATH (or the interpreter named on the
# command line, `python3.11 miner.pex serve`).
SHEBANG = "/usr/bin/env python3"


class PackageError(StreetcascadeError):
    """The artifact could not be built (a tool failed, a dependency could not be resolved)."""

    exit_code = 11


@dataclass
class PackageOptions:
    engines: Path
    config: Path
    out: Path
    tool: str = "pex"
    resolve: str = "env"
    wheelhouse: Path | None = None
    index_urls: list[str] = field(default_factory=list)
    find_links: list[str] = field(default_factory=list)
    python_version: str = ""  # e.g. "3.12": build for another Python (index / wheelhouse only)
    platform: str = ""  # e.g. "manylinux2014_x86_64" (with python_version)
    layout: str = "zipapp"  # pex: zipapp (one file) or packed (a folder; for sets past 4 GiB)


@dataclass
class PackageResult:
    path: Path
    size_bytes: int
    sha256: str
    tool: str
    requirements: list[str]
    seconds: float
    python: str
    platform: str


def _tool_command(name: str) -> list[str]:
    """pex / pex3 / shiv from this environment (the `ship` extra)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise PackageError(f"`{name}` is not installed here: pip install 'streetcascade[ship]' (pex and shiv)")
    return [found]


def _run(cmd: list[str], what: str) -> None:
    log.info("running %s", " ".join(cmd))
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-25:])
        raise PackageError(f"{what} failed (exit {res.returncode}):\n{tail}")


def _tool_version(cmd: list[str]) -> str:
    out = subprocess.run([*cmd, "--version"], capture_output=True, text=True)
    return (out.stdout or out.stderr).strip().splitlines()[-1] if out.returncode == 0 else "?"


def target_python(opts: PackageOptions) -> tuple[str, str]:
    """(python version "3.11", platform "linux-x86_64" or the manylinux tag) the artifact is for."""
    if opts.resolve == "env":
        if opts.python_version or opts.platform:
            raise ConfigError("--python-version / --platform need --resolve index (or --wheelhouse): --resolve env packs what is installed here")
        return f"{sys.version_info.major}.{sys.version_info.minor}", f"{sys.platform}-{platform_module.machine()}"
    if bool(opts.python_version) != bool(opts.platform):
        raise ConfigError("give --python-version and --platform together (e.g. 3.12 and manylinux2014_x86_64), or neither")
    if opts.python_version:
        return opts.python_version, opts.platform
    return f"{sys.version_info.major}.{sys.version_info.minor}", f"{sys.platform}-{platform_module.machine()}"


def check_arch(manifest: Manifest, platform_tag: str) -> None:
    """CPU engine sets are built for one architecture (and ISA); refuse another platform's artifact."""
    arch = manifest.target.arch
    aliases = {"x86_64": ("x86_64", "amd64"), "aarch64": ("aarch64", "arm64")}.get(arch, (arch,))
    if arch and not any(a in platform_tag.lower() for a in aliases):
        raise EngineMismatch(f"engine set {manifest.target.name} is for {arch}, the artifact would be for {platform_tag}")


def _copy_module_tree(src: Path, dest: Path) -> None:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"))


def stage_sources(stage: Path, opts: PackageOptions, manifest: Manifest, cascade_config: Path | None, requirements: list[str],
                  tool: str, python: str, platform_tag: str) -> BundleInfo:
    """Our online modules and the bundle, laid out as the artifact's import root."""
    import streetcascade

    core = Path(streetcascade.__file__).parent
    pkg = stage / "streetcascade"
    pkg.mkdir(parents=True)
    for name in contents.CORE_MODULES:
        shutil.copy2(core / f"{name}.py", pkg / f"{name}.py")
    for name in contents.SUBPACKAGES:  # from where they are imported: in a checkout, not under streetcascade/
        module = importlib.import_module(f"streetcascade.{name}")
        _copy_module_tree(Path(module.__file__).parent, pkg / name)
    (pkg / "ship").mkdir()
    for name in contents.SHIP_MODULES:
        shutil.copy2(core / "ship" / f"{name}.py", pkg / "ship" / f"{name}.py")

    bundle = stage / BUNDLE_PACKAGE
    bundle.mkdir()
    (bundle / "__init__.py").write_text('"""Data of a streetcascade one-file artifact (bundle.json says what)."""\n')
    shutil.copy2(opts.config, bundle / CONFIG_NAME)
    if cascade_config is not None:
        shutil.copy2(cascade_config, bundle / CASCADE_CONFIG_NAME)
    engines_rel = f"{ENGINES_DIR}/{manifest.target.name}"
    dest = bundle / engines_rel
    dest.mkdir(parents=True)
    # Exactly what the manifest lists: nothing else lying in the folder is packed.
    shutil.copy2(opts.engines / MANIFEST_NAME, dest / MANIFEST_NAME)
    for _, graph in iter_graphs(manifest):
        for name in [graph.file, *(c.file for c in graph.companions)]:
            shutil.copy2(opts.engines / name, dest / name)
    info = BundleInfo(
        format_version=FORMAT_VERSION,
        streetcascade_version=__version__,
        built_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        tool=tool,
        python=python,
        platform=platform_tag,
        target=manifest.target.name,
        backend=manifest.target.backend,
        config=packed(bundle, CONFIG_NAME),
        manifest=packed(bundle, f"{engines_rel}/{MANIFEST_NAME}"),
        engines_dir=engines_rel,
        cascade_config=packed(bundle, CASCADE_CONFIG_NAME) if cascade_config is not None else None,
        requirements=requirements,
    )
    from streetcascade.structs import write_json

    write_json(bundle / BUNDLE_INFO, info)
    return info


def _resolve_args(opts: PackageOptions, python: str, platform_tag: str) -> list[str]:
    if opts.resolve == "env":
        if sys.prefix == sys.base_prefix:
            raise ConfigError("--resolve env packs this virtualenv's distributions, but this Python is not in a virtualenv; use --resolve index")
        return ["--venv-repository", sys.prefix]
    args: list[str] = []
    if opts.wheelhouse is not None:
        if not opts.wheelhouse.is_dir():
            raise ConfigError(f"--wheelhouse {opts.wheelhouse}: no such folder")
        args += ["--no-pypi", "--find-links", str(opts.wheelhouse)]
    for url in opts.index_urls:
        args += ["--index-url", url]
    for url in opts.find_links:
        args += ["--find-links", url]
    if opts.python_version:
        nodot = python.replace(".", "")
        args += ["--platform", f"{platform_tag}-cp-{nodot}-cp{nodot}"]
    return args


def pex_distributions(path: Path) -> list[str]:
    """name==version of every distribution in a built PEX (its PEX-INFO)."""
    target = path / "PEX-INFO" if path.is_dir() else path
    if path.is_dir():
        info = json.loads(target.read_text())
    else:
        with zipfile.ZipFile(path) as zf:
            info = json.loads(zf.read("PEX-INFO"))
    out = []
    for wheel in info.get("distributions", {}):
        name, version = wheel.split("-")[:2]
        out.append(f"{contents.normalise(name)}=={version}")
    return sorted(out)


def build_pex(stage: Path, requirements: list[str], out: Path, opts: PackageOptions, python: str, platform_tag: str) -> None:
    cmd = [*_tool_command("pex"), *requirements, "-D", str(stage), "-e", ENTRY_POINT,
           # venv mode: unpacked once into PEX_ROOT, later starts run from there; with the tools,
           # `PEX_TOOLS=1 python miner.pex venv DIR` installs it as a plain venv (the Docker image).
           "--venv", "--include-tools", "--python-shebang", SHEBANG, "--layout", opts.layout,
           # Not the host's site-packages, PYTHONPATH or user site: only what is packed.
           "--inherit-path=false", "--no-emit-warnings",
           *_resolve_args(opts, python, platform_tag), "-o", str(out)]
    _run(cmd, "pex")


def build_shiv(stage: Path, requirements: list[str], out: Path, opts: PackageOptions, python: str, platform_tag: str, work: Path) -> None:
    """The same contents as a shiv zipapp: pex resolves (the same way), `pex3 venv create
    --layout flat` lays the distributions out as one site-packages, shiv zips it with our code."""
    repo = work / "resolve.pex"
    build_pex(stage, requirements, repo, PackageOptions(**{**opts.__dict__, "layout": "zipapp"}), python, platform_tag)
    site = work / "site-packages"
    _run([*_tool_command("pex3"), "venv", "create", "--layout", "flat", "-d", str(site), "--pex-repository", str(repo), *requirements],
         "pex3 venv create --layout flat")
    for child in stage.iterdir():
        shutil.copytree(child, site / child.name, dirs_exist_ok=True)
    _run([*_tool_command("shiv"), "--site-packages", str(site), "-e", ENTRY_POINT, "-p", SHEBANG, "-o", str(out), "--reproducible"], "shiv")


def sha256_path(path: Path) -> str:
    """A file's sha256; a folder's (--layout packed) over each file's relative path and bytes, in order."""
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(p.relative_to(path)).encode())
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def package(opts: PackageOptions, progress=None) -> PackageResult:
    from streetcascade.miner.config import load_miner_config

    step = progress.step if progress is not None else log.info
    t0 = time.perf_counter()
    if opts.tool not in TOOLS:
        raise ConfigError(f"--tool {opts.tool}: choose {' or '.join(TOOLS)}")
    if opts.resolve not in RESOLVES:
        raise ConfigError(f"--resolve {opts.resolve}: choose {' or '.join(RESOLVES)}")
    if opts.layout != "zipapp" and opts.tool != "pex":
        raise ConfigError("--layout packed is a pex layout")
    opts.engines, opts.config, opts.out = Path(opts.engines), Path(opts.config), Path(opts.out)
    manifest = read_manifest(opts.engines)
    verify_files(opts.engines, manifest)
    cfg = load_miner_config(opts.config, engine=str(opts.engines.resolve()))
    if cfg.engine.engine == "fake":
        raise ConfigError("the config's engine is \"fake\"; an artifact serves the packed engine set")
    cascade_config = Path(cfg.engine.cascade_config) if cfg.engine.cascade_config else None
    python, platform_tag = target_python(opts)
    if manifest.target.device == "cpu":
        check_arch(manifest, platform_tag)
    names = contents.requirement_names(manifest, chain=cfg.chain.metagraph == "chain", ray=bool(cfg.engine.ray_address))
    requirements = contents.requirements(names, pin_installed=True)
    placeholders = [s.name for s in manifest.stages if s.placeholder_weights]
    if placeholders:
        step(f"NOTE stage(s) {', '.join(placeholders)} of {opts.engines} have PLACEHOLDER weights: this artifact cannot mine")
    tool_cmd = _tool_command(opts.tool)
    tool = f"{opts.tool} {_tool_version(tool_cmd).split()[-1]}"
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".package-", dir=opts.out.parent) as tmp:
        work = Path(tmp)
        stage = work / "src"
        step(f"packing {manifest.target.name} ({manifest.target.backend}, {len(manifest.stages)} stage(s)) and {opts.config.name} "
             f"with {tool} for Python {python} on {platform_tag}; resolving {len(requirements)} requirement(s) from "
             + ({"env": f"this virtualenv ({sys.prefix})"}.get(opts.resolve) or (f"the wheelhouse {opts.wheelhouse}" if opts.wheelhouse else "the index")))
        stage_sources(stage, opts, manifest, cascade_config, requirements, tool, python, platform_tag)
        built = work / opts.out.name
        if opts.tool == "pex":
            build_pex(stage, requirements, built, opts, python, platform_tag)
            resolved = pex_distributions(built)
        else:
            build_shiv(stage, requirements, built, opts, python, platform_tag, work)
            resolved = pex_distributions(work / "resolve.pex")
        bad = sorted(contents.forbidden_for(manifest) & {r.split("==")[0] for r in resolved})
        if bad:
            raise PackageError(f"the resolve pulled in {', '.join(bad)}, which must not be in an artifact (offline side)")
        if opts.out.exists():
            shutil.rmtree(opts.out) if opts.out.is_dir() else opts.out.unlink()
        built.rename(opts.out)
    digest = sha256_path(opts.out)
    size = opts.out.stat().st_size if opts.out.is_file() else sum(p.stat().st_size for p in opts.out.rglob("*") if p.is_file())
    Path(f"{opts.out}.sha256").write_text(f"{digest}  {opts.out.name}\n")
    seconds = time.perf_counter() - t0
    step(f"wrote {opts.out} ({size / 2**20:.1f} MiB, sha256 {digest[:16]}...) in {seconds:.1f} s; needs Python {python} on {platform_tag}")
    return PackageResult(opts.out, size, digest, tool, resolved, seconds, python, platform_tag)
