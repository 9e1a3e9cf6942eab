"""The one-file artifact's command line (its entry point):

    python3 miner-cpu-x86_64.pex serve  [--state-dir DIR] [--wallet-path DIR]   # the embedded config and engines
    python3 miner-cpu-x86_64.pex doctor [--state-dir DIR] [--wallet-path DIR]   # every check, each with a fix
    python3 miner-cpu-x86_64.pex info   [--json]                                # what it carries, verified
    python3 miner-cpu-x86_64.pex health                                         # GET /health (container HEALTHCHECK)

Every command but `health` first checks the packed files against the hashes recorded at packing
time (bundle.py). Runtime state never goes inside the artifact: the state dir (--state-dir, else
$STREETCASCADE_STATE_DIR, else ./streetcascade-state) holds the log (logs/miner.log), the last
good metagraph (metagraph.json, for restarts during a chain outage) and whatever relative paths
in the embedded config name. The hotkey is never packed: the config names it on the host
(wallet_name + wallet_path, --wallet-path to point elsewhere, or an absolute hotkey_file).
Nonces seen are kept in memory only, as in bittensor's own axon.

Exit codes as `streetcascade` (streetcascade/errors.py): 5 for a tampered or mismatched artifact.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from streetcascade.errors import ConfigError, run_command

from .bundle import BundleInfo, bundle_root, read_bundle, verify_bundle

STATE_ENV = "STREETCASCADE_STATE_DIR"
WALLET_ENV = "STREETCASCADE_WALLET_PATH"
DEFAULT_STATE = "streetcascade-state"
LOG_FILE = "logs/miner.log"
SNAPSHOT_FILE = "metagraph.json"


def state_dir(arg: str | None, root: Path) -> Path:
    """The writable state folder: created if missing; refused inside the artifact's own files."""
    path = Path(arg or os.environ.get(STATE_ENV) or DEFAULT_STATE).expanduser().resolve()
    if path == root or root in path.parents:
        raise ConfigError(f"state dir {path} is inside the artifact's unpacked files ({root}); give --state-dir elsewhere")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"state dir {path}: not writable ({exc.strerror or exc}); give --state-dir DIR or set {STATE_ENV}") from None
    return path


def bundled_config(root: Path, info: BundleInfo, state: Path | None, wallet_path: str | None):
    """The embedded miner.toml as a MinerConfig: its engine set and cascade config are the
    packed ones; relative paths (hotkey_file, snapshot_path, log_file) are under the state dir;
    the log file and the metagraph snapshot default to files there."""
    import msgspec

    from streetcascade.miner.config import MinerConfig, resolve_paths
    from streetcascade.structs import decode_struct, read_toml

    raw = read_toml(root / info.config.path)
    engine = raw.setdefault("engine", {})
    engine["engine"] = str(root / info.engines_dir)
    engine["cascade_config"] = str(root / info.cascade_config.path) if info.cascade_config else ""
    wallet_path = wallet_path or os.environ.get(WALLET_ENV)
    if wallet_path:
        for hotkey in raw.get("hotkeys", []):
            if isinstance(hotkey, dict) and hotkey.get("wallet_name"):
                hotkey["wallet_path"] = wallet_path
    cfg = decode_struct(raw, MinerConfig, f"{info.config.path} (packed in the artifact)")
    if state is not None:
        chain = cfg.chain
        if chain.metagraph == "chain" and not chain.snapshot_path:
            chain = msgspec.structs.replace(chain, snapshot_path=SNAPSHOT_FILE)
        cfg = msgspec.structs.replace(cfg, chain=chain, log_file=cfg.log_file or LOG_FILE)
        cfg = resolve_paths(cfg, state)
    return cfg


def _load() -> tuple[Path, BundleInfo]:
    root = bundle_root()
    info = read_bundle(root)
    verify_bundle(root, info)
    return root, info


def _logging(args, cfg) -> None:
    from streetcascade.miner.cli import setup_logging

    setup_logging(args.log_level or cfg.log_level, args.log_json or cfg.log_json, cfg.log_file)


def cmd_serve(args) -> int:
    from streetcascade.miner.cli import serve_config

    root, info = _load()
    cfg = bundled_config(root, info, state_dir(args.state_dir, root), args.wallet_path)
    _logging(args, cfg)
    return serve_config(cfg)


def cmd_doctor(args) -> int:
    from streetcascade.miner.doctor import FAIL, format_checks, run_doctor

    root, info = _load()
    cfg = bundled_config(root, info, state_dir(args.state_dir, root), args.wallet_path)
    _logging(args, cfg)
    checks = run_doctor(cfg, ntp_server=args.ntp_server, timeout_s=args.timeout)
    print(format_checks(checks))
    return 1 if any(c.status == FAIL for c in checks) else 0


def loaded_modules() -> dict[str, str]:
    """module name -> file, for every module imported so far that has a file."""
    out = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if module is not None and path:
            out[name] = path
    return out


def cmd_info(args) -> int:
    import importlib.metadata

    import msgspec

    from streetcascade.manifest import read_manifest, verify_files
    from streetcascade.runtime.backends import get_backend

    root, info = _load()
    engines = root / info.engines_dir
    manifest = read_manifest(engines)
    verify_files(engines, manifest)
    # What serving imports (the miner's HTTP stack, the backend and its library), so --json
    # can say where each module came from.
    import streetcascade.miner.server  # noqa: F401
    import streetcascade.runtime.load  # noqa: F401

    backend = get_backend(manifest.target.backend)
    if backend.package:  # the backend's library (its module has the distribution's name)
        __import__(backend.package)
    if args.json:
        out = {
            "bundle": msgspec.to_builtins(info),
            "root": str(root),
            "python": sys.version.split()[0],
            "executable": sys.executable,
            "verified": True,
            "stages": [s.name for s in manifest.stages],
            "placeholder_stages": [s.name for s in manifest.stages if s.placeholder_weights],
            "modules": loaded_modules(),
            "distributions": sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()),
        }
        print(json.dumps(out, indent=2))
        return 0
    print(f"artifact    streetcascade {info.streetcascade_version}, built {info.built_at} with {info.tool}")
    print(f"platform    Python {info.python} on {info.platform} (running: Python {sys.version.split()[0]}, {sys.executable})")
    print(f"engine set  {info.target}: {info.backend}; stages {', '.join(s.name for s in manifest.stages)}"
          + ("; PLACEHOLDER weights in " + ", ".join(s.name for s in manifest.stages if s.placeholder_weights)
             if any(s.placeholder_weights for s in manifest.stages) else ""))
    print(f"config      {info.config.path} sha256 {info.config.sha256[:16]}..." + (f"; {info.cascade_config.path}" if info.cascade_config else ""))
    print(f"verified    config, manifest and {sum(1 + len(g.companions) for s in manifest.stages for g in s.graphs)} engine file(s) match their hashes")
    print(f"unpacked in {root}")
    installed = sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions())
    print("packed for  " + ", ".join(info.requirements))
    print("installed   " + ", ".join(installed))
    return 0


def cmd_health(args) -> int:
    """GET http://<metrics_host>:<metrics_port>/health of the running miner (for HEALTHCHECK):
    exit 0 when it answers 200, 1 otherwise. Reads the config only; hashes nothing."""
    import urllib.error
    import urllib.request

    root = bundle_root()
    cfg = bundled_config(root, read_bundle(root), None, None)
    if not cfg.metrics_port:
        print("metrics_port = 0 in the packed config: no health endpoint", file=sys.stderr)
        return 1
    host = "127.0.0.1" if cfg.metrics_host in ("0.0.0.0", "") else ("[::1]" if cfg.metrics_host == "::" else cfg.metrics_host)
    url = f"http://{host}:{cfg.metrics_port}/health"
    # Straight to the miner: a proxy in the environment must not answer for it.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=args.timeout) as resp:
            body = resp.read(4096).decode(errors="replace")
            print(body)
            return 0 if resp.status == 200 else 1
    except urllib.error.HTTPError as exc:
        print(f"{url}: {exc.code} {exc.read(2048).decode(errors='replace')}", file=sys.stderr)
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="miner.pex", description="A streetcascade miner with its engine set and config packed in.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def runtime_args(p):
        p.add_argument("--state-dir", default=None, help=f"writable folder for logs and the metagraph snapshot (default ${STATE_ENV}, else ./{DEFAULT_STATE})")
        p.add_argument("--wallet-path", default=None, help=f"bittensor wallets folder on this host, for every [[hotkeys]] wallet (default ${WALLET_ENV}, else the config's)")
        p.add_argument("--log-level", default="", help="override the config's log_level")
        p.add_argument("--log-json", action="store_true", help="one JSON object per log line")

    p = sub.add_parser("serve", help="serve the packed engine set with the packed miner config")
    runtime_args(p)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("doctor", help="check that this host can serve: engine, budget, keys, ports, chain, clock")
    runtime_args(p)
    p.add_argument("--ntp-server", default="pool.ntp.org", help="host[:port] to compare the clock with ('' = skip)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds per network probe")
    p.set_defaults(func=cmd_doctor)
    p = sub.add_parser("info", help="what the artifact carries (config, engine set, requirements), after checking every hash")
    p.add_argument("--json", action="store_true", help="as JSON, with the file every imported module came from")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("health", help="ask the running miner's /health (exit 0 when it answers 200)")
    p.add_argument("--timeout", type=float, default=3.0)
    p.set_defaults(func=cmd_health)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
