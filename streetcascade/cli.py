"""The `streetcascade` command line.

  streetcascade compile  --config configs/default.toml      build engines/<target>/ (ONNX Runtime)
  streetcascade classify --config configs/default.toml samples/   decide images or folders
  streetcascade info     --config configs/default.toml      show an engine set's manifest and memory plan
  streetcascade fit-head --config ... --data FOLDER --out heads/x.safetensors
  streetcascade eval     --config configs/default.toml --data FOLDER --out reports/x   validator reward + report page
  streetcascade tune     --config configs/default.toml --data FOLDER   exit thresholds + temperatures -> config
  streetcascade package  --engines engines/cpu-x86_64 --config miner.toml -o miner-cpu-x86_64.pex   one runnable file

Exit codes come from the error tree (streetcascade.errors): 0 ok, 2 config, 3 bad input,
4 compile/parity, 5 engine mismatch, 6 budget, 7 backend unavailable, 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import msgspec

from streetcascade import __version__
from streetcascade.errors import BadInput, ConfigError, StreetcascadeError, run_command
from streetcascade.settings import RuntimeConfig

log = logging.getLogger("streetcascade")



def engine_dir_from_config(config_path: str | Path) -> Path:
    """The engine set `streetcascade compile --config CONFIG` builds; ConfigError when it is not there."""
    from streetcascade.compile.targets import engine_set_name  # torch-free: the target registry only
    from streetcascade.config import load_config, resolve_relative
    from streetcascade.manifest import MANIFEST_NAME

    config = load_config(config_path)
    path = resolve_relative(config_path, config.engines_dir) / engine_set_name(config)
    if not (path / MANIFEST_NAME).exists():
        raise ConfigError(f"no engine set at {path}; build it with `streetcascade compile --config {config_path}`")
    return path


def engine_dir_from_args(args) -> Path:
    """--engines DIR, else the engine set of --config FILE."""
    if getattr(args, "engines", None):
        return Path(args.engines)
    if getattr(args, "config", None):
        return engine_dir_from_config(args.config)
    raise ConfigError("give --engines DIR or --config FILE")


def cmd_compile(args) -> int:
    from streetcascade.compile.pipeline import compile_cascade

    target = None
    if args.target:
        import msgspec

        from streetcascade.config import load_config

        config = load_config(args.config)
        target = msgspec.structs.replace(config.target, backend=args.target, device="cpu")
    dest = compile_cascade(args.config, out_dir=args.out, progress=not args.quiet, keep_raw=args.keep_raw, target=target)
    print(dest)
    return 0


# `compile-engines --target NAME`: registry backend, device, onnxruntime execution provider.
GPU_TARGETS = {
    "tensorrt": ("tensorrt", "cuda", None),
    "ort-cuda": ("onnxruntime", "cuda", "cuda"),
    "ort-tensorrt": ("onnxruntime", "cuda", "tensorrt"),
    "aoti": ("aoti", "cuda", None),
}


def cmd_compile_engines(args) -> int:
    import msgspec

    from streetcascade.compile.pipeline import compile_cascade
    from streetcascade.compile.targets import detect_gpu_target
    from streetcascade.config import load_config

    config = load_config(args.config)
    name = args.target if args.target != "auto" else detect_gpu_target()
    backend, device, provider = GPU_TARGETS[name]
    target = msgspec.structs.replace(config.target, backend=backend, device=device, execution_provider=provider or config.target.execution_provider)
    dest = compile_cascade(args.config, out_dir=args.out, progress=not args.quiet, keep_raw=args.keep_raw, target=target)
    print(dest)
    return 0


def parse_bytes(text: str) -> int:
    """"24GiB", "24 GiB", "16G", "512MiB", "25769803776" -> bytes (binary units)."""
    import re

    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise BadInput(f"cannot read {text!r} as a size (e.g. 24GiB, 512MiB, 25769803776)")
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[m.group(2).upper()]
    return int(float(m.group(1)) * scale)


def cmd_plan(args) -> int:
    import msgspec

    from streetcascade.config import load_config
    from streetcascade.errors import BudgetExceeded
    from streetcascade.runtime.plan import plan_from_config, plan_memory

    config = load_config(args.config) if args.config else None
    runtime = config.runtime if config else RuntimeConfig()
    changes = {}
    if args.budget:
        changes["budget_bytes"] = parse_bytes(args.budget)
    if args.slots:
        changes["slots"] = args.slots
    runtime = msgspec.structs.replace(runtime, **changes)
    if args.engines:
        from streetcascade.manifest import read_manifest

        plan = plan_memory(read_manifest(args.engines), runtime)
        where = args.engines
    else:
        plan = plan_from_config(config, runtime)
        where = args.config
    print(f"memory plan for {where} ({'measured at compile time' if args.engines else 'estimated from model sizes and precisions'}):")
    print(plan.table())
    if not plan.fits:
        print(f"error: does not fit the budget of {plan.budget_bytes / 2**30:.2f} GiB", file=sys.stderr)
        return BudgetExceeded.exit_code
    return 0


def _iter_inputs(paths: list[str]):
    from streetcascade.runtime.images import IMAGE_SUFFIXES

    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and child.suffix.lower() in IMAGE_SUFFIXES:
                    yield child
        else:
            yield path


def cmd_classify(args) -> int:
    from streetcascade.runtime import ImageLimits, decode_image

    config, engine_set = _load_for_config(args)
    deadline_ms = args.deadline_ms or (config.runtime.deadline_ms if config else None)
    limits = ImageLimits(max_pixels=args.max_pixels) if args.max_pixels else ImageLimits()
    placeholders = engine_set.placeholder_stages
    if placeholders:
        print(f"WARNING: stage(s) {', '.join(placeholders)} run PLACEHOLDER (random) weights: these probabilities are not roadwork detection", file=sys.stderr)
    results, failures = [], []
    with engine_set:
        for path in _iter_inputs(args.inputs):
            try:
                data = path.read_bytes()
                # Timed from the file's bytes: decode + resize + every stage, what a request costs.
                t0 = time.perf_counter()
                rgb = decode_image(data, limits, draft_size=engine_set.cascade.stages[0].input_size)
                decode_ms = (time.perf_counter() - t0) * 1000.0
                decision = engine_set.cascade.classify(rgb, deadline_ms=deadline_ms)
                end_to_end = (time.perf_counter() - t0) * 1000.0
            except OSError as exc:
                failures.append((str(path), f"cannot read: {exc.strerror or exc}"))
                continue
            except StreetcascadeError as exc:
                failures.append((str(path), str(exc)))
                continue
            timings = {**decision.timings_ms, "decode": decode_ms, "end_to_end": end_to_end}
            results.append((str(path), msgspec.structs.replace(decision, timings_ms=timings)))
    if args.json:
        for path, d in results:
            print(json.dumps({"path": path, "probability": round(d.probability, 6), "label": d.label, "stage": d.stage,
                              "fallback": d.fallback, "text": d.text, "timings_ms": {k: round(v, 3) for k, v in d.timings_ms.items()}}))
        for path, err in failures:
            print(json.dumps({"path": path, "error": err}))
    else:
        width = max([len(p) for p, _ in results] + [len(p) for p, _ in failures] + [4])
        print(f"{'image':<{width}}  {'p(roadwork)':>11}  {'label':>5}  {'stage':<8}  {'ms':>7}  text read   (ms: decode + resize + stages)")
        for path, d in results:
            label = "yes" if d.label else "no"
            text = (d.text[:60] + "...") if len(d.text) > 63 else d.text
            print(f"{path:<{width}}  {d.probability:>11.4f}  {label:>5}  {d.stage:<8}  {d.timings_ms['end_to_end']:>7.2f}  {text}")
        for path, err in failures:
            print(f"{path:<{width}}  ERROR: {err}")
        if results:
            import statistics

            ms = [d.timings_ms["end_to_end"] for _, d in results]
            decode = [d.timings_ms["decode"] for _, d in results]
            print(f"{len(results)} image(s) decided, median {statistics.median(ms):.2f} ms per image end to end "
                  f"(of which decode {statistics.median(decode):.2f} ms); {len(failures)} failed"
                  f" (engine set loaded in {engine_set.load_seconds:.2f} s)")
    if failures and not results:
        raise BadInput(f"no image could be classified ({len(failures)} failed)")
    return BadInput.exit_code if failures else 0


def cmd_info(args) -> int:
    from streetcascade.manifest import read_manifest
    from streetcascade.runtime.plan import plan_memory
    from streetcascade.settings import RuntimeConfig

    engine_dir = engine_dir_from_args(args)
    manifest = read_manifest(engine_dir)
    if args.json:
        import msgspec

        print(msgspec.json.format(msgspec.json.encode(manifest), indent=2).decode())
        return 0
    t = manifest.target
    print(f"engine set  {engine_dir}")
    print(f"target      {t.name}: {t.backend} on {t.device} ({t.arch}; {', '.join(t.cpu_features) or 'no ISA flags'})")
    if t.selection is not None:
        sel = t.selection
        timed = ", ".join(f"{k} {v:.2f} ms" for k, v in sel.median_ms.items())
        skipped = "; ".join(f"{k}: {v}" for k, v in sel.skipped.items())
        print(f"chosen      by target auto: {timed + f' median at batch {sel.batch} ({sel.stage})' if timed else 'the only candidate'}"
              + (f"; not candidates: {skipped}" if skipped else ""))
    print(f"built       {manifest.built_at} in {manifest.build_seconds:.1f} s with " + ", ".join(f"{k} {v}" for k, v in manifest.library_versions.items()))
    for s in manifest.stages:
        flag = "  PLACEHOLDER WEIGHTS" if s.placeholder_weights else ""
        t = s.thresholds
        print(f"stage       {s.name} ({s.kind}): {s.family} from {s.source} (sha256 {s.source_sha256[:12]}), exits p<{t.exit_low} / p>{t.exit_high}, "
              f"temperature {t.temperature:g}{flag}")
        for g in s.graphs:
            p, m = g.parity, g.memory
            on_disk = g.size_bytes + sum(c.size_bytes for c in g.companions)
            files = " + ".join([g.file, *(c.file for c in g.companions)])
            print(f"  graph     {g.role}: {files} {g.precision}, {on_disk / 2**20:.1f} MiB on disk, max batch {g.io.max_batch}")
            print(f"  memory    weights {m.weights_bytes / 2**20:.0f} MiB + activations {m.activations_bytes / 2**20:.0f} MiB on {m.device}, "
                  f"host buffers {m.host_buffers_bytes / 2**20:.2f} MiB per slot ({m.method})")
            if p.reference == "onnx-source-onnxruntime":  # tensor parity (OCR graphs): every output value
                print(f"  parity    max |d output| {p.max_abs_logit_error:.2e} vs the source graph (tolerance {p.tolerance:g}) over {p.n_images} inputs")
            elif "relative" in p.reference:  # features of any scale (a VLM's vision tower)
                print(f"  parity    max |d output| {p.max_abs_logit_error:.2e} = {p.max_abs_prob_error:.2e} of the largest value vs {p.reference.split(' ')[0]} "
                      f"(tolerance {p.tolerance:g}) over {p.n_images} inputs")
            else:
                print(f"  parity    max |dp| {p.max_abs_prob_error:.2e} (tolerance {p.tolerance:g}), max |dlogit| {p.max_abs_logit_error:.2e}, flips {p.decision_flips:.1%} over {p.n_images} images")
            if g.accuracy_gate is not None:
                a = g.accuracy_gate
                print(f"  gate      vs {a.reference} on {a.n_images} {a.split} {'challenges' if a.split == 'validation' else 'images'}: flips {a.flip_rate:.2%} (limit {a.max_flip_rate:.2%}), "
                      f"MCC {a.mcc_fp32:.3f} -> {a.mcc_quant:.3f}, accuracy {a.accuracy_fp32:.3f} -> {a.accuracy_quant:.3f}, max |dp| {a.max_abs_prob_error:.3f}"
                      + (f", kept FP32: {', '.join(a.kept_fp32)}" if a.kept_fp32 else ""))
            if g.latency is not None:
                lat = g.latency
                print(f"  latency   batch {lat.batch}: {lat.engine_p50_ms:.2f} ms p50 / {lat.engine_p99_ms:.2f} ms p99 vs {lat.reference} "
                      f"{lat.reference_p50_ms:.2f} / {lat.reference_p99_ms:.2f} ms: ratio {lat.ratio_p50:.2f} / {lat.ratio_p99:.2f} (at compile time)")
            if g.weight_quant is not None:
                print(f"  weights   {g.weight_quant.summary()}")
        if s.vlm is not None:
            v = s.vlm
            side = v.image_side or s.input_size
            print(f"  judge     {v.model}: {len(v.prompt_ids) - 1} prompt tokens + {v.vision_tokens} image tokens per {side}x{side} image "
                  f"(up to {v.max_tokens} in all); answers {', '.join(t + ('+' if y else '-') for t, y in zip(v.answer_tokens, v.answer_yes))}; "
                  f"{v.expected_ms:.0f} ms per image at compile time")
            if v.parity is not None:
                print(f"  parity    end to end vs {v.parity.reference}: max |dp(yes)| {v.parity.max_abs_prob_error:.2e} (tolerance {v.parity.tolerance:g}), "
                      f"max |d answer logit| {v.parity.max_abs_logit_error:.2e} over {v.parity.n_images} images")
        for note in s.notes:
            print(f"  note      {note}")
    plan = plan_memory(manifest, _config(args).runtime if args.config else RuntimeConfig())
    print(f"plan        {plan.describe()}" + ("" if plan.fits else "  DOES NOT FIT"))
    return 0


def cmd_fit_head(args) -> int:
    from streetcascade.compile.fit_head import fit_head_command

    fit_head_command(args.config, args.stage, args.data, args.out, labels_csv=args.labels_csv, batch=args.batch, l2=args.l2, progress=_progress(args))
    return 0


def _challenges(args, split: str):
    """Labelled data (--data/--parquet, else the config's [calibration] table) -> challenges."""
    from streetcascade.calibration.source import DataSpec, expand_parquet, load_challenges, open_samples

    cal = _config(args).calibration
    if args.data or args.parquet:
        spec = DataSpec(
            folder=Path(args.data) if args.data else None,
            labels_csv=Path(args.labels_csv) if args.labels_csv else None,
            parquet=expand_parquet(args.parquet or []),
            image_column=args.image_column,
            label_column=args.label_column,
            source_column=args.source_column or "",
        )
    elif cal is not None and cal.has_data():
        spec = DataSpec.from_config(cal, args.config)
    else:
        raise ConfigError("no labelled data: give --data FOLDER or --parquet FILE..., or a [calibration] table in --config")
    kwargs = {}
    if cal is not None:
        kwargs = {"split_seed": cal.split_seed, "fractions": cal.split_fractions}
    bad = []
    challenges = load_challenges(open_samples(spec, bad=bad), split, challenge_seed=args.seed, limit=args.limit, bad=bad, progress=_progress(args), **kwargs)
    if bad:
        print(f"{len(bad)} file(s) skipped (not images / unreadable); see the log (-v)", file=sys.stderr)
    if len(challenges) == 0:
        raise BadInput(f"no labelled images in the {split} split of the data")
    return challenges


def _config(args):
    from streetcascade.config import load_config

    return load_config(args.config)


def _progress(args):
    from streetcascade.progress import Progress

    return Progress(enabled=not getattr(args, "quiet", False))


def _load_for_config(args):
    """The engine set of --engines or --config. With --config: its [runtime] settings, and its
    exit thresholds and temperatures (e.g. written by `tune`) over the manifest's."""
    from streetcascade.config import stage_rules, stage_thresholds
    from streetcascade.runtime import load_engine_set

    config = _config(args) if args.config else None
    if config is None:
        return None, load_engine_set(engine_dir_from_args(args))
    return config, load_engine_set(engine_dir_from_args(args), config.runtime, stage_thresholds(config), rules=stage_rules(config))


def cmd_eval(args) -> int:
    from streetcascade.calibration.cascade_eval import format_eval, run_eval

    challenges = _challenges(args, args.split)
    config, engine_set = _load_for_config(args)
    deadline_ms = args.deadline_ms or (config.runtime.deadline_ms if config else None)
    if engine_set.placeholder_stages:
        print(f"WARNING: stage(s) {', '.join(engine_set.placeholder_stages)} run PLACEHOLDER (random) weights", file=sys.stderr)
    with engine_set:
        run = run_eval(engine_set, challenges, args.out, deadline_ms=deadline_ms, seed=args.seed, split=args.split,
                       hard_case_limit=args.hard_cases, fiftyone_name=args.fiftyone or None, progress=_progress(args))
    print(format_eval(run, args.out))
    return 0


def cmd_tune(args) -> int:
    import math

    from streetcascade.calibration.cascade_tune import run_tune
    from streetcascade.config import write_stage_thresholds

    challenges = _challenges(args, args.split)
    _, engine_set = _load_for_config(args)
    budget = args.latency_budget_ms if args.latency_budget_ms is not None else math.inf
    with engine_set:
        result = run_tune(engine_set, challenges, latency_budget_ms=budget, seed=args.seed, fit_temperatures=not args.no_temperature,
                          progress=_progress(args))
    print(f"tuned on {len(challenges)} challenges ({args.split} split), latency budget {budget:g} ms per image")
    print(f"reward      {result.reward_before:.4f} -> {result.reward_after:.4f} (validator formula, steady state)"
          + ("  (current setting kept: nothing better found)" if result.kept_current else ""))
    print(f"latency     {result.latency_before_ms:.2f} -> {result.latency_after_ms:.2f} ms mean per image"
          + ("" if result.within_budget else "  OVER BUDGET: no setting fits; fastest chosen"))
    for name, t in result.thresholds.items():
        print(f"stage       {name}: exit p<{t.exit_low:g} / p>{t.exit_high:g}, temperature {t.temperature:.4g}")
    kinds = {s.name: s.kind for s in engine_set.manifest.stages}
    for name, r in result.rules.items():
        if kinds.get(name) == "vlm":
            print(f"combine     {name}: log-odds + {r.judge:.3g} x the judge's log-odds {r.judge_bias:+.3g}")
        else:
            print(f"combine     {name}: log-odds +{r.hit:.3g} on a roadwork phrase, {r.text_without_hit:+.3g} on other text, {r.no_text:+.3g} on none")
    print("exits       " + "  ".join(f"{n}: {r:.1%}" for n, r in zip(result.thresholds, result.exit_rates)))
    if args.dry_run:
        print("dry run: config not changed")
    else:
        write_stage_thresholds(args.config, result.thresholds, result.rules)
        print(f"written to {args.config}")
    return 0


def cmd_package(args) -> int:
    from streetcascade.ship.build import PackageOptions, package

    opts = PackageOptions(
        engines=Path(args.engines), config=Path(args.config), out=Path(args.out), tool=args.tool,
        resolve="index" if args.wheelhouse else args.resolve, wheelhouse=Path(args.wheelhouse) if args.wheelhouse else None,
        index_urls=args.index_url or [], find_links=args.find_links or [], python_version=args.python_version, platform=args.platform,
        layout=args.layout,
    )
    result = package(opts, progress=None if args.quiet else _progress(args))
    print(result.path)
    return 0


def _data_args(p, default_split: str) -> None:
    p.add_argument("--config", required=True, help="cascade config (its engine set, thresholds, temperatures, [calibration] data)")
    p.add_argument("--engines", help="engine-set folder (default: the config's)")
    data = p.add_argument_group("labelled data (default: the config's [calibration] table)")
    data.add_argument("--data", help="image folder: roadwork/ + no_roadwork/ (optionally under real/ and synthetic/)")
    data.add_argument("--labels-csv", help="CSV with filename,label columns (relative to --data) instead of subfolders")
    data.add_argument("--parquet", nargs="+", help="parquet file(s) or globs with image and label columns")
    data.add_argument("--image-column", default="image")
    data.add_argument("--label-column", default="label")
    data.add_argument("--source-column", default="", help="column saying real/synthetic (optional)")
    p.add_argument("--split", default=default_split, choices=["calibration", "validation", "test", "all"],
                   help=f"content-hash split to use (default {default_split})")
    p.add_argument("--limit", type=int, default=None, help="at most this many challenges")
    p.add_argument("--seed", type=int, default=0, help="challenge (augmentation) and reward-shuffle seed")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines or bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streetcascade", description="Compiled cascade inference for NATIX StreetVision miners.")
    parser.add_argument("--version", action="version", version=f"streetcascade {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("compile", help="build an engine set (engines/<target>/) from a cascade config")
    p.add_argument("--config", required=True, help="cascade config (TOML), e.g. configs/default.toml")
    p.add_argument("--out", help="output folder (default: <engines_dir>/<target> from the config)")
    p.add_argument("--keep-raw", action="store_true", help="keep the unoptimised ONNX export next to the engine")
    p.add_argument("--target", choices=["auto", "onnxruntime", "openvino", "aoti"], default="",
                   help="CPU target, instead of the config's [target] backend; auto: build the first classifier stage with "
                   "each installed CPU target (onnxruntime, openvino), time them side by side, keep the fastest")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("compile-engines", help="build the engine set for this machine's GPU type (engines/sm<XY>-<gpu>/)",
                       description="Like compile, for a GPU target: TensorRT engines, ONNX Runtime on CUDA, or AOTInductor. "
                       "--target auto picks the best one this machine can build.")
    p.add_argument("--config", required=True, help="cascade config (TOML), e.g. configs/gpu.toml")
    p.add_argument("--target", choices=["auto", *GPU_TARGETS], default="auto")
    p.add_argument("--out", help="output folder (default: <engines_dir>/<target name>)")
    p.add_argument("--keep-raw", action="store_true", help="keep the intermediate ONNX graphs")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_compile_engines)

    p = sub.add_parser("plan", help="the memory plan of a cascade: from its config before building (no GPU needed), or of an engine set",
                       description="Adds up weights, activations / shared scratch, KV caches, pinned host buffers and the CUDA "
                       "context, and checks the total against the budget (exit code 6 when it does not fit).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="cascade config: estimate from model sizes and precisions")
    src.add_argument("--engines", help="an engine set: the figures measured at compile time")
    p.add_argument("--budget", default="", help="e.g. 24GiB (default: the config's [runtime] budget_bytes)")
    p.add_argument("--slots", type=int, default=0, help="requests in flight (default: the config's [runtime] slots)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("classify", help="decide images or folders of images with a compiled cascade")
    p.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="cascade config: uses its engine set, budget and deadline")
    src.add_argument("--engines", help="an engine-set folder (with manifest.json)")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    p.add_argument("--deadline-ms", type=float, default=None, help="per-image deadline for the cascade")
    p.add_argument("--max-pixels", type=int, default=None, help="refuse images with more pixels (default 64e6, 8000 x 8000)")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("info", help="show an engine set's manifest")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config")
    src.add_argument("--engines")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("fit-head", help="fit a DINOv3 stage's binary head (logistic regression) from a labelled image folder")
    p.add_argument("--config", required=True)
    p.add_argument("--stage", default="", help="stage name (default: the first dinov3 stage)")
    p.add_argument("--data", required=True, help="folder with roadwork/ and no_roadwork/ subfolders (or --labels-csv)")
    p.add_argument("--labels-csv", default=None, help="CSV with filename,label columns instead of subfolders")
    p.add_argument("--out", required=True, help="where to write the head (.safetensors)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--l2", type=float, default=1.0, help="L2 penalty of the logistic regression (default 1.0; lower fits harder)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines or bars")
    p.set_defaults(func=cmd_fit_head)

    p = sub.add_parser("eval", help="run the compiled cascade on labelled data under the validator mix; print the validators' reward, write a report")
    _data_args(p, "test")
    p.add_argument("--out", default="reports/eval", help="report folder: report.html, report.json, stages.json, hard_cases/")
    p.add_argument("--deadline-ms", type=float, default=None, help="per-challenge deadline (default: the config's)")
    p.add_argument("--hard-cases", type=int, default=500, help="export at most this many misclassified / low-margin images")
    p.add_argument("--fiftyone", default="", help="also load the hard cases into this FiftyOne dataset (when installed)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("tune", help="fit temperatures and exit thresholds for the validators' reward; write them into the config")
    _data_args(p, "validation")
    p.add_argument("--latency-budget-ms", type=float, default=None, help="mean latency budget per image (default: none)")
    p.add_argument("--no-temperature", action="store_true", help="keep the stages' temperatures")
    p.add_argument("--dry-run", action="store_true", help="print the result, leave the config as it is")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("package", help="one runnable file: the online side, one engine set and a miner config (docs/deploy.md)",
                       description="Builds a PEX zipapp (or shiv) holding the runtime, the miner and their dependencies for one "
                       "platform, the engine set and the miner config, checked by hash at every start. Run it with "
                       "`python3 miner.pex serve|doctor|info|health`.")
    p.add_argument("--engines", required=True, help="the engine-set folder, e.g. engines/cpu-x86_64")
    p.add_argument("--config", required=True, help="the miner config to pack (its [engine] engine is replaced by the packed set)")
    p.add_argument("-o", "--out", required=True, help="the artifact, e.g. miner-cpu-x86_64.pex")
    p.add_argument("--tool", choices=["pex", "shiv"], default="pex")
    p.add_argument("--resolve", choices=["env", "index"], default="env",
                   help="env: the distributions installed in this virtualenv (offline, this Python and platform); index: a package index")
    p.add_argument("--wheelhouse", default="", help="resolve only from this folder of wheels (offline; implies --resolve index)")
    p.add_argument("--index-url", action="append", help="package index for --resolve index (repeatable; default PyPI)")
    p.add_argument("--find-links", action="append", help="extra wheel folder or URL for --resolve index (repeatable)")
    p.add_argument("--python-version", default="", help="build for another Python, e.g. 3.12 (index/wheelhouse; with --platform)")
    p.add_argument("--platform", default="", help="e.g. manylinux2014_x86_64 (with --python-version)")
    p.add_argument("--layout", choices=["zipapp", "packed"], default="zipapp", help="packed: a folder instead of one file (engine sets past 4 GiB)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_package)

    try:  # the miner's subcommands (serve, register) when its module is present
        from streetcascade.miner.cli import add_subcommands
    except ImportError:
        pass
    else:
        add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
