"""`streetcascade serve` and `streetcascade register`.

    streetcascade serve --config miner.toml      # all hotkeys in miner.toml, one loaded cascade
    streetcascade register --config miner.toml   # announce each hotkey's IP:port on chain

`add_subcommands(subparsers)` adds both to the main argparse CLI; each sets `func(args) -> int`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from streetcascade.errors import StreetcascadeError

from .config import MinerConfig, load_miner_config

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


def setup_logging(level: str = "INFO", as_json: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def build_cascade(cfg: MinerConfig):
    """(cascade, closer) from [engine]: a real engine set, or the fake instant model."""
    eng = cfg.engine
    if eng.engine == "fake":
        from streetcascade.runtime import Cascade, ClassifierStage
        from streetcascade.runtime.backends.fake import FakeEngine

        log.warning("engine = \"fake\": answering with a deterministic test model, NOT a detector")
        stage = ClassifierStage("stage1", FakeEngine(224, eng.fake_latency_ms), 224, prior_ms=max(eng.fake_latency_ms, 0.1))
        return Cascade([stage], safety_margin_ms=cfg.runtime.safety_margin_ms), (lambda: None)
    from streetcascade.runtime.load import load_engine_set

    thresholds = None
    if eng.cascade_config:
        from streetcascade.config import load_config, stage_thresholds

        thresholds = stage_thresholds(load_config(eng.cascade_config))
    engine_set = load_engine_set(eng.engine, cfg.runtime, thresholds)
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


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        cfg = load_miner_config(args.config)
        setup_logging(args.log_level or cfg.log_level, args.log_json or cfg.log_json)
        from .keys import load_hotkey

        hotkeys = [load_hotkey(h).ss58_address for h in cfg.hotkeys]
        for hk, h in zip(hotkeys, cfg.hotkeys):
            log.info("hotkey %s -> port %d", hk, h.port)
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
    except StreetcascadeError as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def cmd_register(args: argparse.Namespace) -> int:
    try:
        cfg = load_miner_config(args.config)
        setup_logging(args.log_level or cfg.log_level)
        from .register import register_all

        return register_all(cfg, dry_run=args.dry_run, only_port=args.port)
    except StreetcascadeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve the cascade to validators on every hotkey in miner.toml",
        description="Serve ImageSynapse/ExtendedImageSynapse (bittensor 9.x wire format) for each "
        "[[hotkeys]] entry on its port, all from one loaded cascade; Prometheus /metrics and /health "
        "on metrics_port. SIGTERM/SIGINT finish in-flight requests, then exit.",
    )
    p.add_argument("--config", required=True, help="miner.toml (see configs/miner.example.toml)")
    p.add_argument("--log-level", default="", help="override log_level (DEBUG, INFO, WARNING)")
    p.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    p.set_defaults(func=cmd_serve)

    r = subparsers.add_parser(
        "register",
        help="announce each hotkey's external IP:port on chain (bittensor SDK serve_axon)",
        description="For each [[hotkeys]] entry with a wallet, call the SDK's serve_axon so validators "
        "find the axon. Needs the miner extra (bittensor 9.12.x) and a funded, registered hotkey.",
    )
    r.add_argument("--config", required=True)
    r.add_argument("--port", type=int, default=0, help="only the hotkey on this port")
    r.add_argument("--dry-run", action="store_true", help="print what would be announced; touch no chain")
    r.add_argument("--log-level", default="")
    r.set_defaults(func=cmd_register)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streetcascade-miner")
    sub = parser.add_subparsers(dest="command", required=True)
    add_subcommands(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
