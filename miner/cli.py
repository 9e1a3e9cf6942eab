"""The operator's commands.

    streetcascade serve --config miner.toml            # all hotkeys in miner.toml, one loaded cascade
    streetcascade register --config miner.toml         # announce each hotkey's IP:port on chain
    streetcascade model-card --config miner.toml       # model_card.json for the Hugging Face repo
    streetcascade natix-register --config miner.toml   # NATIX's registration (--dry-run prints it)
    streetcascade doctor --config miner.toml           # every check, each with a fix
    streetcascade ray-deploy --config miner.toml       # the engine set as a Ray Serve application

Each also takes `--env-file miner.env` (the reference miner's names) and `--network finney|test`.

`add_subcommands(subparsers)` adds them to the main argparse CLI; each sets `func(args) -> int`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from streetcascade.errors import ConfigError, StreetcascadeError

from .config import MinerConfig, cascade_overrides, load_miner_config
from .presets import NETWORKS

log = logging.getLogger("streetcascade.miner")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (+ exc). Never includes key material:
    nothing in the miner logs more than SS58 addresses."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str = "INFO", as_json: bool = False, log_file: str = "") -> None:
    """Log to stderr, and also to `log_file` when given (rotated at 50 MB, 5 kept)."""
    formatter = JsonFormatter() if as_json else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        from logging.handlers import RotatingFileHandler
        from pathlib import Path

        try:
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            handlers.append(RotatingFileHandler(log_file, maxBytes=50 * 2**20, backupCount=5, encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"log_file {log_file}: cannot write it ({exc.strerror or exc})") from None
    for handler in handlers:
        handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in root.handlers:
        if isinstance(old, logging.FileHandler):  # ours from an earlier call: release the file
            old.close()
    root.handlers[:] = handlers
    try:
        root.setLevel(level.upper())
    except ValueError:
        raise ConfigError(f"log_level {level!r}: use DEBUG, INFO, WARNING or ERROR") from None


def load_miner_engine_set(cfg: MinerConfig, warmup: bool = True):
    """[engine] engine loaded with this file's [runtime], and the exit thresholds, temperatures
    and combination rules of [engine] cascade_config when one is named (serve and doctor)."""
    from streetcascade.runtime.load import load_engine_set

    thresholds, rules = cascade_overrides(cfg)
    return load_engine_set(cfg.engine.engine, cfg.runtime, thresholds, warmup=warmup, rules=rules)


def build_cascade(cfg: MinerConfig):
    """(cascade, closer) from [engine]: a Ray Serve application (ray_address), a real engine set, or the fake instant model."""
    eng = cfg.engine
    if eng.ray_address:  # the stages run as Ray Serve deployments; the cascade logic stays here
        from streetcascade.runtime.ray_plan import ray_module

        remote = ray_module("ray_stage").connect_cascade(eng.ray_address, cfg.ray, cfg.runtime)
        return remote.cascade, remote.close
    if eng.engine == "fake":
        from streetcascade.runtime import Cascade, ClassifierStage
        from streetcascade.runtime.backends.fake import FakeEngine

        log.warning("engine = \"fake\": answering with a deterministic test model, NOT a detector")
        stage = ClassifierStage("stage1", FakeEngine(224, eng.fake_latency_ms), 224, prior_ms=max(eng.fake_latency_ms, 0.1))
        return Cascade([stage], safety_margin_ms=cfg.runtime.safety_margin_ms), (lambda: None)
    engine_set = load_miner_engine_set(cfg)
    for name in engine_set.placeholder_stages:
        log.warning("stage %s has placeholder weights: do not mine with this engine set", name)
    return engine_set.cascade, engine_set.close


def build_view(cfg: MinerConfig):
    from .metagraph import FixedMetagraph, MetagraphView, Neuron

    chain = cfg.chain
    if chain.metagraph == "static":
        source = FixedMetagraph([Neuron(n.hotkey, n.uid if n.uid >= 0 else i, n.stake, n.validator_permit) for i, n in enumerate(chain.static_neurons)], chain.netuid)
    else:
        from .chain import ChainMetagraph

        source = ChainMetagraph(chain.netuid, chain.network, chain.chain_endpoint)
    return MetagraphView(source, chain.refresh_s, chain.snapshot_path)


def build_server(cfg: MinerConfig, cascade, hotkeys: list[str]):
    from .server import AxonSpec, MinerServer, MinerState

    state = MinerState(cascade, build_view(cfg), cfg.policy, cfg.limits, slots=cfg.runtime.slots)
    axons = [AxonSpec(hk, h.port) for hk, h in zip(hotkeys, cfg.hotkeys)]
    return MinerServer(
        state,
        axons,
        host=cfg.host,
        metrics_host=cfg.metrics_host,
        metrics_port=cfg.metrics_port or None,
        graceful_shutdown_s=cfg.graceful_shutdown_s,
        edge=cfg.edge,
    )


def add_config_args(p: argparse.ArgumentParser, engine: bool = True) -> None:
    p.add_argument("--config", default=None, help="miner.toml (see configs/miner.example.toml)")
    p.add_argument("--env-file", default=None, help="the reference miner's miner.env (NETUID, WALLET_NAME, MINER_AXON_PORT, ...), applied over --config")
    p.add_argument("--network", choices=sorted(NETWORKS), default=None, help="preset: finney = netuid 72, test = netuid 323 (over both files)")
    if engine:
        p.add_argument("--engine", default=None, help="engine-set folder (overrides [engine] engine)")
    p.add_argument("--log-level", default="", help="override log_level (DEBUG, INFO, WARNING)")


def config_from_args(args: argparse.Namespace) -> MinerConfig:
    if args.config is None and args.env_file is None:
        raise ConfigError("give --config miner.toml, --env-file miner.env, or both")
    return load_miner_config(args.config, args.env_file, args.network, getattr(args, "engine", None))


def _run(args: argparse.Namespace, body) -> int:
    """Load the config, set up logging, run `body(cfg)`; our errors become one line + exit code."""
    try:
        setup_logging(args.log_level or "WARNING", getattr(args, "log_json", False))
        cfg = config_from_args(args)
        setup_logging(args.log_level or cfg.log_level, getattr(args, "log_json", False) or cfg.log_json, cfg.log_file)
        return body(cfg)
    except StreetcascadeError as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def _hotkey_entry(cfg: MinerConfig, port: int):
    if not port:
        return cfg.hotkeys[0]
    for h in cfg.hotkeys:
        if h.port == port:
            return h
    raise ConfigError(f"no [[hotkeys]] entry on port {port}; ports: {[h.port for h in cfg.hotkeys]}")


def serve_config(cfg: MinerConfig) -> int:
    """Load the hotkeys and the cascade, then serve until SIGTERM/SIGINT (`serve`, and the
    one-file artifact's `serve`)."""
    from .keys import load_hotkey

    hotkeys = [load_hotkey(h).ss58_address for h in cfg.hotkeys]
    for hk, h in zip(hotkeys, cfg.hotkeys):
        log.info("hotkey %s -> port %d (netuid %d on %s)", hk, h.port, cfg.chain.netuid, cfg.chain.chain_endpoint or cfg.chain.network)
    t0 = time.perf_counter()
    cascade, close = build_cascade(cfg)
    log.info("cascade ready in %.2f s: stages %s", time.perf_counter() - t0, [s.name for s in cascade.stages])
    try:
        server = build_server(cfg, cascade, hotkeys)
        try:
            import uvloop

            uvloop.run(server.serve())
        except ImportError:  # pragma: no cover
            import asyncio

            asyncio.run(server.serve())
    finally:
        close()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    return _run(args, serve_config)


def cmd_register(args: argparse.Namespace) -> int:
    def body(cfg: MinerConfig) -> int:
        from .register import register_all

        return register_all(cfg, dry_run=args.dry_run, only_port=args.port)

    return _run(args, body)


def cmd_model_card(args: argparse.Namespace) -> int:
    def body(cfg: MinerConfig) -> int:
        from .keys import load_hotkey
        from .model_card import build_card, check_card, describe_engine_set, read_card, write_card

        hotkey = load_hotkey(_hotkey_entry(cfg, args.port)).ss58_address
        if args.validate:
            problems = check_card(read_card(args.validate), hotkey)
            for p in problems:
                print(f"invalid: {p}")
            print(f"{args.validate}: {'valid' if not problems else f'{len(problems)} problem(s)'} for hotkey {hotkey}")
            return 1 if problems else 0
        name, description, architecture, placeholder = describe_engine_set(cfg.engine.engine)
        if placeholder:
            log.warning("the engine set has placeholder (random) weights: this card describes a model that cannot mine")
        card = build_card(
            args.name or cfg.natix.model_name or name,
            args.description or cfg.natix.description or description,
            args.version or cfg.natix.model_version,
            hotkey,
            architecture=architecture,
        )
        write_card(args.out, card)
        print(f"wrote {args.out} for hotkey {hotkey}; upload it to the root of your Hugging Face model repo"
              + (f" ({cfg.natix.model_repo})" if cfg.natix.model_repo else ""))
        return 0

    return _run(args, body)


def cmd_natix_register(args: argparse.Namespace) -> int:
    def body(cfg: MinerConfig) -> int:
        from . import natix
        from .keys import load_hotkey

        entry = _hotkey_entry(cfg, args.port)
        keypair = load_hotkey(entry)
        repo = args.model_repo or cfg.natix.model_repo
        if not repo:
            raise ConfigError("no model repo: pass --model-repo user/model or set [natix] model_repo (MODEL_URL)")
        url = args.url or cfg.natix.registration_url
        uid = args.uid
        if uid is None:
            from .chain import neuron_on_chain

            neuron = neuron_on_chain(keypair.ss58_address, cfg.chain.netuid, cfg.chain.network, cfg.chain.chain_endpoint)
            if neuron is None:
                raise ConfigError(f"hotkey {keypair.ss58_address} is not registered on netuid {cfg.chain.netuid}: register it first (btcli subnet register)")
            uid = neuron.uid
        request = natix.build_request(keypair, uid, repo, url)
        if args.dry_run:
            print(request.as_text())
            print(f"\n(dry run: nothing sent; the signature is the hotkey's sr25519 signature of {request.body['message']!r}, hex)")
            return 0
        answer = natix.send(request)
        print(f"{request.url}: {answer.get('detail', answer)}")
        if args.wait > 0:
            final = natix.wait_for_status(url, uid, args.wait, on_status=lambda s: print(f"status: {s or '?'}"))
            print(f"registration status: {final.get('status', final)}")
        return 0

    return _run(args, body)


def cmd_doctor(args: argparse.Namespace) -> int:
    def body(cfg: MinerConfig) -> int:
        from .doctor import FAIL, format_checks, run_doctor

        checks = run_doctor(cfg, ntp_server=args.ntp_server, timeout_s=args.timeout)
        print(format_checks(checks))
        return 1 if any(c.status == FAIL for c in checks) else 0

    return _run(args, body)


def cmd_ray_deploy(args: argparse.Namespace) -> int:
    def body(cfg: MinerConfig) -> int:
        from streetcascade.runtime.ray_plan import describe_replicas, ray_module

        from . import ray_deploy

        where = args.config or args.env_file
        address = args.address or cfg.engine.ray_address
        if args.delete:
            if not address:
                raise ConfigError("--delete needs --address or [engine] ray_address")
            ray_module("ray_app").delete(cfg.ray.app_name, address, cfg.ray.connect_timeout_s)
            print(f"deleted Ray Serve application {cfg.ray.app_name!r}")
            return 0
        print(describe_replicas(ray_deploy.plan(cfg, where)))
        if args.dry_run:
            return 0
        if not address:
            raise ConfigError("no Ray cluster: pass --address (\"auto\", HOST:6379, ray://HOST:10001) or set [engine] ray_address")
        t0 = time.perf_counter()
        info = ray_deploy.deploy(cfg, address, where)
        print(f"Ray Serve application {cfg.ray.app_name!r} ready in {time.perf_counter() - t0:.1f} s at {address}: engine set "
              f"{info['engine_dir']} ({info['target']}), stages " + ", ".join(f"{s['name']} ({s['deployment']})" for s in info["stages"]))
        if not cfg.engine.ray_address:
            print(f"point the miner at it: [engine] ray_address = \"{address}\"")
        return 0

    return _run(args, body)


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve the cascade to validators on every hotkey in miner.toml",
        description="Serve ImageSynapse/ExtendedImageSynapse (bittensor 9.x wire format) for each "
        "[[hotkeys]] entry on its port, all from one loaded cascade; Prometheus /metrics and /health "
        "on metrics_port. SIGTERM/SIGINT finish in-flight requests, then exit.",
    )
    add_config_args(p)
    p.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    p.set_defaults(func=cmd_serve)

    r = subparsers.add_parser(
        "register",
        help="announce each hotkey's external IP:port on chain (bittensor SDK serve_axon)",
        description="For each [[hotkeys]] entry with a wallet, send the serve_axon extrinsic so validators "
        "find the axon. Needs the chain extra (bittensor 9.12.x) and a registered hotkey.",
    )
    add_config_args(r, engine=False)
    r.add_argument("--port", type=int, default=0, help="only the hotkey on this port")
    r.add_argument("--dry-run", action="store_true", help="print what would be announced; touch no chain")
    r.set_defaults(func=cmd_register)

    m = subparsers.add_parser(
        "model-card",
        help="write (or --validate) the model_card.json NATIX asks for, from the engine set and the hotkey",
        description="Writes model_card.json (model_name, description, version X.Y.Z, submitted_by = the hotkey's "
        "SS58 address, submission_time = now) for the Hugging Face repo NATIX registers. Names default to the "
        "engine set's manifest, then [natix] in miner.toml, then these flags.",
    )
    add_config_args(m)
    m.add_argument("--port", type=int, default=0, help="the hotkey on this port (default: the first)")
    m.add_argument("--out", default="model_card.json")
    m.add_argument("--name", default="", help="model_name (unique on the subnet)")
    m.add_argument("--description", default="")
    m.add_argument("--version", default="", help="X.Y.Z (default [natix] model_version)")
    m.add_argument("--validate", default="", metavar="FILE", help="check an existing model_card.json instead of writing one")
    m.set_defaults(func=cmd_model_card)

    n = subparsers.add_parser(
        "natix-register",
        help="register the miner with NATIX's application server (the subnet's register.sh)",
        description="Signs the current Unix time with the hotkey and POSTs uid, hotkey, signature and model repo "
        "to <url>/participants/register, then polls the registration status. --dry-run prints the request.",
    )
    add_config_args(n, engine=False)
    n.add_argument("--port", type=int, default=0, help="the hotkey on this port (default: the first)")
    n.add_argument("--uid", type=int, default=None, help="the hotkey's uid (default: looked up on chain)")
    n.add_argument("--model-repo", default="", help="Hugging Face repo with model_card.json (default [natix] model_repo / MODEL_URL)")
    n.add_argument("--url", default="", help="application server (default [natix] registration_url)")
    n.add_argument("--wait", type=float, default=180.0, help="poll the status for up to this many seconds (0 = don't)")
    n.add_argument("--dry-run", action="store_true", help="print the exact request; send nothing")
    n.set_defaults(func=cmd_natix_register)

    d = subparsers.add_parser(
        "doctor",
        help="check that this miner can serve: engine, budget, keys, ports, chain, clock, limits",
        description="Runs every check and prints each with a fix; exit status 1 if any failed.",
    )
    add_config_args(d)
    d.add_argument("--ntp-server", default="pool.ntp.org", help="host[:port] to compare the clock with ('' = skip)")
    d.add_argument("--timeout", type=float, default=3.0, help="seconds per network probe")
    d.set_defaults(func=cmd_doctor)

    y = subparsers.add_parser(
        "ray-deploy",
        help="deploy the engine set as a Ray Serve application (each stage a deployment) for serve's [engine] ray_address",
        description="Plans each stage's replicas from [ray] (CPUs, GPU fraction, memory per replica against its share of "
        "the [runtime] budget; refuses what does not fit), then deploys or updates the application on the Ray cluster "
        "and waits until every replica has loaded its stage. Needs the ray extra. See docs/ray.md.",
    )
    add_config_args(y)
    y.add_argument("--address", default="", help="the Ray cluster (default [engine] ray_address): auto, HOST:6379, ray://HOST:10001")
    y.add_argument("--dry-run", action="store_true", help="print the plan; touch no cluster")
    y.add_argument("--delete", action="store_true", help="remove the application from the cluster")
    y.set_defaults(func=cmd_ray_deploy)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streetcascade-miner")
    sub = parser.add_subparsers(dest="command", required=True)
    add_subcommands(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
