"""Stage 1 on a GPU: streetcascade's GPU targets beside what a user gets from PyTorch alone,
side by side in one run, each measured two ways:

- end to end: a uint8 host image (numpy) -> host probability; every call copies the image into
  the variant's pinned buffer, copies it to the device, runs, copies the logit back and applies
  the sigmoid (streetcascade's targets: through the runtime, `stage.score`);
- GPU-only: CUDA events around back-to-back model calls or graph replays, no copies. For a
  graphed variant this is the kernels' time; for an ungraphed one it is bounded below by the
  CPU's launch rate (that is the point of graphs at batch 1).
Work is counted from the model's config (bench/cpu_limits.py `model_gops`: linear layers,
attention matmuls, patch embedding), so GPU-only time reads as TFLOP/s and as a fraction of a
bf16 GEMM (8192^3) timed in the same run.

Peers: eager fp16; eager fp16 + CUDA graph (the few lines a user writes: static input, capture,
replay); torch.compile default and mode="reduce-overhead" (Inductor's CUDA graph trees); with
--max-autotune, torch.compile mode="max-autotune" (minutes of compile); streetcascade aoti fp16
(AOTInductor package, CUDA graph per batch; --aoti-autotune adds the max-autotune build); and
TensorRT / ONNX Runtime CUDA when installed.

    python -m bench.gpu [--models vits16,vitl16] [--batch 1,8] [--runs 200] [--json out.json] [--markdown out.md]
    python -m bench.gpu --budget-s vits16=150,vitl16=200     # per-model build budget: steps that would not fit are skipped, said why
    python -m bench.gpu --dry-run                           # the plan: peers, work per image, budgets (no GPU needed)
    python -m bench.gpu --device cpu --models tiny --batch 1 --runs 5   # plumbing check on a CPU

Random weights of the real shapes (DINOv3 ViT-S/16 and ViT-L/16 at 224, + a head). Variants are
timed in interleaved rounds. Each model's table is printed (and the JSON rewritten) as soon as
it is measured, so a time limit that cuts the run short still leaves the finished models.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streetcascade.runtime.classifier import sigmoid
from streetcascade.timing import interleaved, summary

MODELS = {
    "vits16": ("random:vits16", "DINOv3 ViT-S/16 + head"),
    "vitl16": ("random:vitl16", "DINOv3 ViT-L/16 + head"),
    "tiny": ("random:tiny", "DINOv3 tiny (test size)"),
}
# Seconds each model may spend building its variants (compiles); the measuring after is short.
DEFAULT_BUDGET_S = {"vits16": 150.0, "vitl16": 200.0, "tiny": 300.0}
# First guesses of build seconds on a fast GPU box, per step kind (torch.compile of ViT-L took
# most of the earlier check's 270 s together with max-autotune and AOTI); once the run has
# measured a step, later guesses use what it measured.
BUILD_GUESS_S = {
    "compile": {"vits16": 45.0, "vitl16": 70.0, "tiny": 30.0},
    "aoti": {"vits16": 60.0, "vitl16": 90.0, "tiny": 60.0},
    "max-autotune": {"vits16": 240.0, "vitl16": 400.0, "tiny": 120.0},
    "tensorrt": {"vits16": 90.0, "vitl16": 180.0, "tiny": 60.0},
    "ort-cuda": {"vits16": 30.0, "vitl16": 60.0, "tiny": 30.0},
}
GEMM_SIZE = 8192
PARITY_WARN = 5e-2  # |probability - eager's| above this is printed as a warning


@dataclass(frozen=True)
class Peer:
    """One row kind of the table: how it is built (`kind`) and whether it needs a CUDA device."""

    name: str
    kind: str  # eager | eager-graph | compile | aoti | tensorrt | ort-cuda
    mode: str = ""  # torch.compile mode
    target: dict = field(default_factory=dict)  # streetcascade target table
    cuda_only: bool = False
    guess: str = ""  # key of BUILD_GUESS_S ("" = cheap)


def peer_list(device: str, max_autotune: bool = False, aoti_autotune: bool = False, installed: tuple[str, ...] = ()) -> tuple[list[Peer], list[str]]:
    """(peers to build, in order, the cheap and the decisive first; reasons for peers left out).
    `installed`: the optional GPU libraries present ("tensorrt", "ort-cuda")."""
    cuda = device == "cuda"
    precision = "fp16" if cuda else "fp32"
    candidates = [
        Peer(f"eager {precision}", "eager"),
        Peer(f"eager {precision} + CUDA graph", "eager-graph", cuda_only=True),
        Peer(f"streetcascade aoti {precision}", "aoti", target={"backend": "aoti", "device": device}, guess="aoti"),
        Peer("torch.compile default", "compile", mode="default", guess="compile"),
        Peer("torch.compile reduce-overhead", "compile", mode="reduce-overhead", cuda_only=True, guess="compile"),
    ]
    skipped = []
    if aoti_autotune:
        candidates.append(Peer(f"streetcascade aoti {precision} autotune", "aoti", target={"backend": "aoti", "device": device, "autotune": True},
                               guess="max-autotune"))
    if max_autotune:
        candidates.append(Peer("torch.compile max-autotune", "compile", mode="max-autotune", guess="max-autotune"))
    else:
        skipped.append("torch.compile max-autotune: opt-in (--max-autotune; minutes of compile)")
    if "tensorrt" in installed:
        candidates.append(Peer("streetcascade tensorrt fp16", "tensorrt", target={"backend": "tensorrt", "device": "cuda"}, cuda_only=True, guess="tensorrt"))
    elif cuda:
        skipped.append("streetcascade tensorrt: TensorRT is not installed here")
    if "ort-cuda" in installed:
        candidates.append(Peer("streetcascade ort-cuda fp16", "ort-cuda", target={"backend": "onnxruntime", "device": "cuda", "execution_provider": "cuda"},
                               cuda_only=True, guess="ort-cuda"))
    elif cuda:
        skipped.append("streetcascade ort-cuda: onnxruntime here has no CUDA provider (onnxruntime-gpu)")
    peers = []
    for peer in candidates:
        if peer.cuda_only and not cuda:
            skipped.append(f"{peer.name}: needs CUDA")
        else:
            peers.append(peer)
    return peers, skipped


def installed_gpu_libraries() -> tuple[str, ...]:
    found = []
    try:
        import tensorrt  # noqa: F401

        found.append("tensorrt")
    except ImportError:
        pass
    try:
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            found.append("ort-cuda")
    except ImportError:
        pass
    return tuple(found)


def gops_per_image(key: str) -> float:
    from bench.cpu_limits import model_gops

    return model_gops(key)["total"]


class Budget:
    """A model's build budget: a step runs only if its guessed duration fits in what is left."""

    def __init__(self, seconds: float, out=print):
        self.seconds, self.out = seconds, out
        self.t0 = time.perf_counter()
        self.measured: dict[str, float] = {}

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)

    def guess(self, kind: str, model: str) -> float:
        return self.measured.get(kind, BUILD_GUESS_S.get(kind, {}).get(model, 60.0)) if kind else 0.0

    def allows(self, peer: Peer, model: str) -> bool:
        need = self.guess(peer.guess, model)
        if need > self.left():
            self.out(f"  skipped {peer.name}: needs ~{need:.0f} s to build, {max(self.left(), 0):.0f} s left of {model}'s {self.seconds:.0f} s budget")
            return False
        return True

    def record(self, kind: str, seconds: float) -> None:
        if kind:
            self.measured[kind] = seconds


def _module(source: str, workdir: Path):
    from streetcascade.compile.models import get_family
    from streetcascade.config import StageConfig

    stage = StageConfig(name="bench", family="dinov3", source=source, max_batch=8)
    return get_family("dinov3").load(stage, workdir / "bench.toml").graphs[0].module.eval()


class TorchVariant:
    """PyTorch itself: eager (optionally captured in a CUDA graph by hand) or torch.compile."""

    def __init__(self, module, device: str, half: bool, mode: str = "", graph: bool = False):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        model = module.to(self.device)
        self.model = model.half() if half else model
        if mode:
            self.model = torch.compile(self.model, mode=None if mode == "default" else mode)
        self.graph = graph
        self.buffers: dict[int, dict] = {}

    def _buffers(self, batch: int):
        torch = self.torch
        b = self.buffers.get(batch)
        if b is None:
            shape = (batch, 224, 224, 3)
            pinned = self.device.type == "cuda"
            b = self.buffers[batch] = {"host": torch.empty(shape, dtype=torch.uint8, pin_memory=pinned),
                                       "dev": torch.empty(shape, dtype=torch.uint8, device=self.device)}
            if self.graph:  # the user's five lines: warm up on a side stream, capture, keep the static output
                with torch.inference_mode():
                    side = torch.cuda.Stream()
                    side.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(side):
                        for _ in range(2):
                            self.model(b["dev"])
                    torch.cuda.current_stream().wait_stream(side)
                    b["graph"] = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(b["graph"]):
                        b["out"] = self.model(b["dev"])
        return b

    def _forward(self, b):
        if self.graph:
            b["graph"].replay()
            return b["out"]
        return self.model(b["dev"])

    def run(self, x: np.ndarray) -> np.ndarray:
        b = self._buffers(len(x))
        b["host"].numpy()[...] = x
        with self.torch.inference_mode():
            b["dev"].copy_(b["host"], non_blocking=True)
            logit = self._forward(b).float().cpu().numpy()
        return sigmoid(logit.reshape(-1))

    def device_ms(self, batch: int, runs: int) -> float | None:
        if self.device.type != "cuda":
            return None
        b = self._buffers(batch)
        with self.torch.inference_mode():
            return cuda_event_ms(self.torch, lambda: self._forward(b), runs)

    def graphed(self) -> bool | None:
        return self.graph or None

    def close(self) -> None:
        self.buffers = {}


class TargetVariant:
    """A streetcascade GPU target, compiled here and run through the runtime (`stage.score`)."""

    def __init__(self, source: str, target: dict, workdir: Path, max_batch: int):
        import tomli_w

        from streetcascade.compile.pipeline import compile_cascade
        from streetcascade.runtime import load_engine_set

        name = "-".join(str(v) for v in target.values())
        cfg = workdir / f"{name}.toml"
        cfg.write_text(tomli_w.dumps({"engines_dir": str(workdir / "engines" / name), "target": target,
                                      "stages": [{"name": "stage1", "family": "dinov3", "source": source, "max_batch": max_batch,
                                                  "precision": "fp16" if target["device"] == "cuda" else "fp32"}]}))
        self.engine_set = load_engine_set(compile_cascade(cfg, progress=False))
        self.stage = self.engine_set.cascade.stages[0]
        self.engine = self.engine_set.engines[0]
        self._timing_slot = None

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.stage.score(list(x))

    def device_ms(self, batch: int, runs: int) -> float | None:
        """aoti: events around the slot's own graph replays (a slot of its own, warmed and
        captured like the serving slots). Other targets: not measured apart."""
        if not getattr(self.engine, "graphs_enabled", False):
            return None
        import torch

        if self._timing_slot is None:
            self._timing_slot = self.engine.slot()
        slot = self._timing_slot
        if not callable(getattr(slot, "replay", None)):  # ONNX Runtime keeps its graphs to itself
            return None
        from streetcascade.runtime.backends.aoti import WARMUP_RUNS

        x = {"pixels": np.zeros((batch, 224, 224, 3), np.uint8)}
        for _ in range(WARMUP_RUNS + 1):  # the warm-up runs, then the capture
            slot.infer(x)
        if not slot.replay(batch):
            return None
        return cuda_event_ms(torch, lambda: slot.replay(batch), runs, stream=slot.stream)

    def graphed(self) -> bool | None:
        stats = getattr(self.engine, "stats", None)
        return None if stats is None else stats["graph_launches"] > 0

    def close(self) -> None:
        if self._timing_slot is not None:
            self._timing_slot.close()
        self.engine_set.close()


def cuda_event_ms(torch, fn, runs: int, warmup: int = 5, stream=None) -> float:
    """Milliseconds per call of `fn`, back to back, between two CUDA events on `stream`."""
    stream = stream or torch.cuda.current_stream()
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        for _ in range(runs):
            fn()
        end.record(stream)
    end.synchronize()
    return start.elapsed_time(end) / runs


def gemm_tflops(device: str, n: int = GEMM_SIZE, runs: int = 20) -> float | None:
    """bf16 n x n x n GEMM throughput, TFLOP/s (the ceiling the model's rate is read against)."""
    import torch

    if device != "cuda":
        return None
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = cuda_event_ms(torch, lambda: torch.mm(a, b), runs, warmup=3)
    return 2.0 * n**3 / (ms * 1e-3) / 1e12


def build_variant(peer: Peer, source: str, device: str, workdir: Path, max_batch: int):
    if peer.kind in ("eager", "eager-graph", "compile"):
        return TorchVariant(_module(source, workdir), device, device == "cuda", peer.mode if peer.kind == "compile" else "", peer.kind == "eager-graph")
    return TargetVariant(source, peer.target, workdir, max_batch)


def result_rows(model: str, batch: int, times: dict, device_ms: dict, parity: dict, graphed: dict, gops: float, gemm: float | None,
                device: str) -> list[dict]:
    """One row per variant: medians, ratios against eager and eager + graph, GPU-only rate."""
    names = list(times)
    eager = summary(times[names[0]])[0]
    graph_name = next((n for n in names if n.endswith("+ CUDA graph")), None)
    eager_graph = summary(times[graph_name])[0] if graph_name else None
    rows = []
    for name, ms in times.items():
        med, p99 = summary(ms)
        gpu = device_ms.get(name)
        tflops = gops * batch / (gpu * 1e-3) / 1e3 if gpu else None
        rows.append({"model": model, "batch": batch, "variant": name, "median_ms": med, "p99_ms": p99, "gpu_ms": gpu, "tflops": tflops,
                     "gemm_fraction": tflops / gemm if tflops and gemm else None, "vs_eager": eager / med,
                     "vs_eager_graph": eager_graph / med if eager_graph else None, "max_abs_dp": parity.get(name, 0.0),
                     "graph": graphed.get(name), "device": device})
    return rows


def _fmt(v, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def table(rows: list[dict]) -> list[str]:
    lines = ["| model | batch | variant | e2e median ms | e2e p99 ms | GPU-only ms | TFLOP/s | % bf16 GEMM | x eager | x eager+graph | graph |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        graph = {True: "yes", False: "no", None: "—"}[r["graph"]]
        frac = None if r["gemm_fraction"] is None else 100 * r["gemm_fraction"]
        lines.append(f"| {r['model']} | {r['batch']} | {r['variant']} | {r['median_ms']:.3f} | {r['p99_ms']:.3f} | {_fmt(r['gpu_ms'], '.3f')} | "
                     f"{_fmt(r['tflops'], '.1f')} | {_fmt(frac, '.1f')} | {r['vs_eager']:.2f} | {_fmt(r['vs_eager_graph'], '.2f')} | {graph} |")
    return lines


def bar_lines(rows: list[dict]) -> list[str]:
    """The issue's two bars, read off the rows (when both sides were measured)."""
    out = []
    by = {(r["model"], r["batch"], r["variant"]): r for r in rows}
    aoti = "streetcascade aoti fp16"
    r = by.get(("vits16", 1, aoti))
    if r and r["vs_eager_graph"]:
        out.append(f"bar: ViT-S/16 batch 1 end to end, aoti fp16 vs eager fp16 + CUDA graph: {r['vs_eager_graph']:.2f}x (bar >= 1.4x): "
                   f"{'met' if r['vs_eager_graph'] >= 1.4 else 'NOT met'}")
    r = by.get(("vitl16", 8, aoti))
    if r and r["gemm_fraction"]:
        out.append(f"bar: ViT-L/16 batch 8 GPU-only, aoti fp16: {100 * r['gemm_fraction']:.1f}% of the same-run bf16 GEMM (bar >= 35%): "
                   f"{'met' if r['gemm_fraction'] >= 0.35 else 'NOT met'}")
    return out


def measure_model(key: str, batches: list[int], runs: int, device: str, peers: list[Peer], budget: Budget, gemm: float | None, out,
                  device_name: str) -> list[dict]:
    import sys

    source, human = MODELS[key]
    gops = gops_per_image(key)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        variants, t0 = {}, time.perf_counter()
        try:
            for peer in peers:
                if not budget.allows(peer, key):
                    continue
                t = time.perf_counter()
                try:
                    variant = build_variant(peer, source, device, Path(tmp), max(batches))
                    warm = np.zeros((1, 224, 224, 3), np.uint8)
                    for batch in batches:  # torch.compile compiles on first call: count it as building
                        variant.run(np.repeat(warm, batch, axis=0))
                    variants[peer.name] = variant
                except Exception as exc:  # noqa: BLE001 - report and measure the rest
                    out(f"  {peer.name}: could not build ({type(exc).__name__}: {str(exc)[:300]})")
                budget.record(peer.guess, time.perf_counter() - t)
            out(f"{human} ({gops:.1f} GOP/image): built {len(variants)} variants in {time.perf_counter() - t0:.0f} s")
            sys.stdout.flush()
            for batch in batches:
                x = np.random.default_rng(0).integers(0, 255, (batch, 224, 224, 3), dtype=np.uint8)
                ref = next(iter(variants.values())).run(x)
                parity = {}
                for name, variant in variants.items():
                    parity[name] = float(np.abs(variant.run(x) - ref).max())
                    if parity[name] > PARITY_WARN:
                        out(f"  WARNING {name}: max |dp| {parity[name]:.3g} vs eager at batch {batch}")
                times = interleaved({n: (lambda v=v: v.run(x)) for n, v in variants.items()}, runs=runs, warmup=10, rounds=4)
                device_ms = {}
                for name, variant in variants.items():
                    try:
                        device_ms[name] = variant.device_ms(batch, max(20, runs // 4))
                    except Exception as exc:  # noqa: BLE001
                        out(f"  {name}: GPU-only time not measured ({type(exc).__name__}: {str(exc)[:200]})")
                graphed = {n: v.graphed() for n, v in variants.items()}
                rows += result_rows(key, batch, times, device_ms, parity, graphed, gops, gemm, device_name)
        finally:
            for variant in variants.values():
                variant.close()
    return rows


def run_gpu_bench(models, batches, runs=200, device="cuda", out=print, json_path: str = "", markdown_path: str = "", budgets: dict | None = None,
                  max_autotune: bool = False, aoti_autotune: bool = False) -> list[dict]:
    import torch

    device_name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    peers, skipped = peer_list(device, max_autotune, aoti_autotune, installed_gpu_libraries() if device == "cuda" else ())
    gemm = gemm_tflops(device)
    header = [f"device: {device_name}; torch {torch.__version__}; CUDA {torch.version.cuda}; {dt.date.today().isoformat()}",
              f"bf16 GEMM {GEMM_SIZE}^3 in this run: {_fmt(gemm, '.0f')} TFLOP/s; end to end = uint8 host image -> host probability; random weights"]
    header += [f"not measured: {why}" for why in skipped]
    for line in header:
        out(line)
    rows: list[dict] = []
    for key in models:
        budget = Budget((budgets or {}).get(key, DEFAULT_BUDGET_S.get(key, 150.0)), out)
        rows += measure_model(key, batches, runs, device, peers, budget, gemm, out, device_name)
        lines = table([r for r in rows if r["model"] == key])
        for line in lines:
            out(line)
        for line in bar_lines(rows):
            out(line)
        if json_path:
            Path(json_path).write_text(json.dumps({"header": header, "gemm_bf16_tflops": gemm, "rows": rows}, indent=2))
        if markdown_path:
            Path(markdown_path).write_text("\n".join([*header, "", *table(rows), "", *bar_lines(rows)]) + "\n")
    return rows


def dry_run(models, batches, device, budgets, max_autotune, aoti_autotune, out=print) -> list[Peer]:
    """The plan, without building or timing anything."""
    peers, skipped = peer_list(device, max_autotune, aoti_autotune, installed_gpu_libraries() if device == "cuda" else ())
    out(f"dry run: device {device}; peers: {', '.join(p.name for p in peers)}")
    for why in skipped:
        out(f"  not measured: {why}")
    for key in models:
        budget = (budgets or {}).get(key, DEFAULT_BUDGET_S.get(key, 150.0))
        guesses = sum(BUILD_GUESS_S.get(p.guess, {}).get(key, 60.0) for p in peers if p.guess)
        out(f"  {key}: {gops_per_image(key):.2f} GOP/image, batches {batches}; build budget {budget:.0f} s, first guesses add up to {guesses:.0f} s")
    return peers


def parse_budgets(text: str) -> dict[str, float]:
    """"vits16=150,vitl16=200" -> {"vits16": 150.0, "vitl16": 200.0}."""
    budgets = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in MODELS:
            raise argparse.ArgumentTypeError(f"--budget-s: {part!r}: use MODEL=SECONDS with MODEL in {', '.join(MODELS)}")
        try:
            budgets[key] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--budget-s: {part!r}: {value!r} is not a number of seconds") from None
    return budgets


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vits16,vitl16")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--budget-s", type=parse_budgets, default={}, help="per-model build budgets, e.g. vits16=150,vitl16=200")
    ap.add_argument("--max-autotune", action="store_true", help="add torch.compile mode=max-autotune (minutes of compile)")
    ap.add_argument("--aoti-autotune", action="store_true", help="add the aoti target built with Inductor max-autotune")
    ap.add_argument("--json", default="")
    ap.add_argument("--markdown", default="", help="also write the tables to this file")
    ap.add_argument("--dry-run", action="store_true", help="print the plan (peers, work per image, budgets) and exit")
    args = ap.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        ap.error(f"--models: unknown {', '.join(unknown)} (known: {', '.join(MODELS)})")
    try:
        args.batch = [int(b) for b in args.batch.split(",")]
    except ValueError:
        ap.error(f"--batch: {args.batch!r}: comma-separated batch sizes, e.g. 1,8")
    if any(not 1 <= b <= 64 for b in args.batch):
        ap.error("--batch: sizes from 1 to 64")
    if args.runs < 4:
        ap.error("--runs: at least 4")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        dry_run(args.models, args.batch, args.device, args.budget_s, args.max_autotune, args.aoti_autotune)
        return 0
    run_gpu_bench(args.models, args.batch, args.runs, args.device, json_path=args.json, markdown_path=args.markdown, budgets=args.budget_s,
                  max_autotune=args.max_autotune, aoti_autotune=args.aoti_autotune)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
