"""The VLM judge on a real model shape (random weights): one 448x448 image + the judge's prompt,
ONNX Runtime on this CPU, one run.

Built as `streetcascade compile` builds it: the FP32 engine set compiled from `random:<preset>`
(a Qwen3-VL-2B-shaped model by default, the language model cut to --preset's -lmN layers when
the full model would not fit in this machine's memory next to other work), then the INT8
(dynamic) and INT4 (MatMulNBits + 4-bit embeddings) prefill graphs built by the onnxruntime
target from the same exported graph, an INT8 vision graph, and the vision graph exported again
with its attention as ONNX Runtime's MultiHeadAttention (`attention = "fused"`) where the family
allows it.

Reports, side by side:
- prefill: FP32 / INT8 / INT4 ms on the same inputs (interleaved rounds), file size, peak RSS of a
  fresh process that loads the graph and runs it once, p(yes) difference vs FP32;
- the vision graph: FP32 / FP32 with fused attention / INT8 ms, and where the FP32 graph's time
  goes (ONNX Runtime's profiler, by operator type);
- the whole stage (vision + prefill graphs): file size and peak RSS of a fresh process that loads
  both and judges the image once, per precision pair;
- the judge end to end (image -> numpy preparation -> vision -> prefill -> p(yes)) with each
  precision vs transformers' `generate(max_new_tokens=1)` on the same model (same weights) and
  the same image and prompt (its image processor + generate), interleaved in one process, and
  the p(yes) each gives.
Timings on a shared machine: only the ratios within one run mean anything.

    python -m bench.vlm [--family qwen3-vl] [--preset qwen3-vl-2b-lm4] [--size 448] [--runs 6] [--rounds 3] [--block 128]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from streetcascade.machine import peak_rss_bytes
from streetcascade.runtime.classifier import sigmoid
from streetcascade.timing import interleaved

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "street-barrier.jpg"


def square_image(size: int) -> np.ndarray:
    """A sample street photo, resized to size x size (the image the judge is asked about)."""
    from streetcascade.runtime.images import decode_image, resize_to

    return resize_to(decode_image(SAMPLE.read_bytes()), size)


def build_variant(dest: Path, role: str, precision: str, io, stage, config, config_path: Path) -> Path:
    """The engine the onnxruntime target builds for `precision` from the exported FP32 graph."""
    from streetcascade.compile.pipeline import at_precision
    from streetcascade.compile.targets import BuildJob, get_target

    raw = dest / f"{stage.name}.{role}.raw.onnx"
    out = dest / f"{stage.name}.{role}.{precision}.onnx"
    if not out.exists():
        get_target("onnxruntime").build(BuildJob(at_precision(stage, precision), config, config_path, io, raw, out))
    return out


def file_bytes(path: Path) -> int:
    """The graph file and its external weights file, if it has one."""
    from streetcascade.compile.export import weights_file

    data = weights_file(path)
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def _phase(name: str, in_process: bool = False, **kwargs) -> dict:
    """One phase in a fresh process (its memory goes back when it ends: the compile holds the
    PyTorch model and its export; the timing phases hold engines and, for generate, the model).
    `in_process`: here instead (the tests' tiny model; peak RSS then means nothing)."""
    if in_process:
        return globals()[f"phase_{name}"](**kwargs)
    code = f"import json, sys; from bench.vlm import phase_{name}; print('RESULT ' + json.dumps(phase_{name}(**{kwargs!r})))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, text=True, stdout=subprocess.PIPE, timeout=7200)
    if done.returncode != 0:
        raise RuntimeError(f"bench phase {name} failed (exit {done.returncode})")
    line = next(line for line in done.stdout.splitlines()[::-1] if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def _setup(root: Path):
    from streetcascade.config import load_config
    from streetcascade.manifest import read_manifest

    cfg = root / "vlm.toml"
    config = load_config(cfg)
    entry = read_manifest(root / "engines" / "cpu").stages[0]
    return cfg, config, entry, {g.role: g.io for g in entry.graphs}


def phase_build(root: str, family: str, preset: str, size: int, block: int) -> dict:
    """Compile the FP32 engine set (as `streetcascade compile` does, raw graphs kept), then the
    INT8 and INT4 prefill and the INT8 vision graph from the same exported graphs."""
    import msgspec
    import tomli_w

    from streetcascade.compile.pipeline import compile_cascade
    from streetcascade.config import Int4Config

    root = Path(root)
    dest = root / "engines" / "cpu"
    cfg = root / "vlm.toml"
    t0 = time.perf_counter()
    if not (dest / "manifest.json").exists():
        stage = {"name": "judge", "family": family, "source": f"random:{preset}", "input_size": size, "max_batch": 1}
        cfg.write_text(tomli_w.dumps({"engines_dir": str(root / "engines"), "parity_images": str(ROOT / "samples"),
                                      "target": {"backend": "onnxruntime", "device": "cpu"}, "stages": [stage]}))
        compile_cascade(cfg, out_dir=dest, progress=True, keep_raw=True)
    compile_s = time.perf_counter() - t0
    cfg, config, entry, io = _setup(root)
    stage = config.stages[0]
    stage4 = msgspec.structs.replace(stage, precision="int4", int4=Int4Config(block_size=block))
    build_variant(dest, "prefill", "int8-dynamic", io["prefill"], stage, config, cfg)
    build_variant(dest, "prefill", "int4", io["prefill"], stage4, config, cfg)
    build_variant(dest, "vision", "int8-dynamic", io["vision"], stage, config, cfg)
    build_fused_vision(dest, family, io["vision"], stage, config, cfg)
    return {"compile_s": compile_s}


def build_fused_vision(dest: Path, family: str, io, stage, config, config_path: Path) -> Path | None:
    """The vision graph exported again with `attention = "fused"` (same seeded weights) and built
    by the onnxruntime target at FP32: judge.vision.fp32-mha.onnx; None where the family's vision
    attention is masked (Qwen2.5-VL's windows)."""
    import msgspec

    from streetcascade.compile.export import export_graph
    from streetcascade.compile.models import get_family
    from streetcascade.compile.targets import BuildJob, get_target

    out = dest / f"{stage.name}.vision.{FUSED}.onnx"
    if out.exists() or not get_family(family).vision_attention_fusable:
        return out if out.exists() else None
    fused = msgspec.structs.replace(stage, attention="fused")
    raw = dest / f"{stage.name}.vision-mha.raw.onnx"
    export_graph(get_family(family).load(fused, config_path).graphs[0], raw, fused_attention=True)
    get_target("onnxruntime").build(BuildJob(fused, config, config_path, io, raw, out))
    return out


def _load(root: Path, keys, io):
    from streetcascade.runtime.backends import get_backend
    from streetcascade.settings import RuntimeConfig

    backend = get_backend("onnxruntime")
    options = backend.options_for(RuntimeConfig(), "cpu")
    return {key: backend.load(str(root / "engines" / "cpu" / f"judge.{key[0]}.{key[1]}.onnx"), io[key[0]], options) for key in keys}


FUSED = "fp32-mha"  # the vision graph with fused attention


def vision_variants(root: Path) -> tuple[str, ...]:
    return tuple(v for v in ("fp32", FUSED, "int8-dynamic") if (root / "engines" / "cpu" / f"judge.vision.{v}.onnx").exists())


def phase_prefill(root: str, size: int, runs: int, rounds: int) -> dict:
    """FP32 / INT8 / INT4 prefill on the same inputs (the FP32 vision graph's output for the
    image), interleaved; the vision graph's variants likewise; where the FP32 vision graph's
    time goes, by operator type."""
    from streetcascade.runtime.vlm_stage import VlmJudge

    root = Path(root)
    _, _, entry, io = _setup(root)
    precisions = ("fp32", "int8-dynamic", "int4")
    engines = _load(root, [("prefill", p) for p in precisions] + [("vision", v) for v in vision_variants(root)], io)
    try:
        image = square_image(size)
        judge = VlmJudge({"vision": engines[("vision", "fp32")], "prefill": engines[("prefill", "fp32")]}, entry.vlm)
        feeds = judge.prefill_feeds([judge.encode(image)])
        np.savez(root / "feeds.npz", **feeds)
        slots = {p: engines[("prefill", p)].slot() for p in precisions}
        outputs = {p: s.infer(feeds) for p, s in slots.items()}
        vslots = {p: engines[("vision", p)].slot() for p in vision_variants(root)}
        vfeeds = judge.prep.vision_feeds(*judge.prep.patches(image))
        prefill_ms = interleaved({p: (lambda s=s: s.infer(feeds)) for p, s in slots.items()}, runs=runs, warmup=1, rounds=rounds)
        vision_ms = interleaved({p: (lambda s=s: s.infer(vfeeds)) for p, s in vslots.items()}, runs=runs, warmup=1, rounds=rounds)
        for s in [*slots.values(), *vslots.values()]:
            s.close()
    finally:
        for engine in engines.values():
            engine.close()
    return {"tokens": int(feeds["input_ids"].shape[1]), "image_tokens": int(feeds["image_embeds"].shape[1]),
            "prefill_ms": {p: float(np.median(v)) for p, v in prefill_ms.items()}, "vision_ms": {p: float(np.median(v)) for p, v in vision_ms.items()},
            "vision_ops": vision_profile(root / "engines" / "cpu" / "judge.vision.fp32.onnx", vfeeds),
            "p_yes": {p: float(sigmoid(o["yes_logodds"])[0]) for p, o in outputs.items()},
            "dlogit": {p: float(np.abs(o["answer_logits"] - outputs["fp32"]["answer_logits"]).max()) for p, o in outputs.items()}}


def vision_profile(path: Path, feeds: dict) -> dict[str, float]:
    """Share of the graph's kernel time per operator type, from ONNX Runtime's profiler on one
    run (after a warm-up), the session set up as the runtime sets it up."""
    import collections
    import json as jsonlib

    import onnxruntime as ort

    from streetcascade.runtime.backends.onnxruntime import OrtOptions, session_options

    so = session_options(OrtOptions())
    so.enable_profiling = True
    so.profile_file_prefix = str(path.parent / "vision-profile")
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    session.run(None, feeds)
    session.run(None, feeds)
    events = jsonlib.loads(Path(session.end_profiling()).read_text())
    by_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            by_op[e["args"].get("op_name", "?")] += e["dur"]
    total = sum(by_op.values()) or 1
    return {op: d / total for op, d in by_op.most_common(6)}


JUDGES = {"fp32 (vision fp32, prefill fp32)": ("fp32", "fp32"), "fp32, vision attention fused": (FUSED, "fp32"),
          "int4 (vision fp32, prefill int4)": ("fp32", "int4"), "int8 + int4 (vision int8, prefill int4)": ("int8-dynamic", "int4")}
GENERATE = "transformers generate(max_new_tokens=1)"


def phase_judge(root: str, family: str, size: int, runs: int, rounds: int) -> dict:
    """The judge end to end (image -> p(yes)) with each precision, and transformers' processor +
    generate(max_new_tokens=1) on the same weights, image and prompt: interleaved in one process."""
    from streetcascade.compile.models import get_family
    from streetcascade.runtime.vlm_stage import VlmJudge

    root = Path(root)
    cfg, config, entry, io = _setup(root)
    judges_here = {name: vp for name, vp in JUDGES.items() if vp[0] in vision_variants(root)}
    keys = sorted({("vision", v) for v, _ in judges_here.values()} | {("prefill", p) for _, p in judges_here.values()})
    engines = _load(root, keys, io)
    try:
        image = square_image(size)
        judges = {name: VlmJudge({"vision": engines[("vision", v)], "prefill": engines[("prefill", p)]}, entry.vlm) for name, (v, p) in judges_here.items()}
        model = get_family(family).open(config.stages[0], cfg, weights=True).model  # the same seeded weights
        generate = _transformers_generate(get_family(family), model, entry.vlm, image)
        calls = {name: (lambda j=j: j.run([image])) for name, j in judges.items()}
        calls[GENERATE] = generate
        ms = interleaved(calls, runs=runs, warmup=1, rounds=rounds)
        p = {name: float(sigmoid(j.run([image])["yes_logodds"])[0]) for name, j in judges.items()}
        p[GENERATE] = float(generate())
        p["transformers forward"] = float(sigmoid(get_family(family).transformers_judge(model, entry.vlm, [image])["yes_logodds"])[0])
    finally:
        for engine in engines.values():
            engine.close()
    return {"judge_ms": {k: float(np.median(v)) for k, v in ms.items()}, "p_yes": p}


def phase_stage_rss(root: str, size: int, vision: str, prefill: str) -> int:
    """Peak RSS of this fresh process after loading the whole stage (vision + prefill graphs) and
    judging the image once."""
    from streetcascade.runtime.vlm_stage import VlmJudge

    root = Path(root)
    _, _, entry, io = _setup(root)
    engines = _load(root, [("vision", vision), ("prefill", prefill)], io)
    try:
        VlmJudge({"vision": engines[("vision", vision)], "prefill": engines[("prefill", prefill)]}, entry.vlm).run([square_image(size)])
    finally:
        for engine in engines.values():
            engine.close()
    return peak_rss_bytes()


STAGES = {"fp32": ("fp32", "fp32"), "int4 prefill, fp32 vision": ("fp32", "int4"), "int4 prefill, int8 vision": ("int8-dynamic", "int4")}


def phase_rss(root: str, precision: str) -> int:
    """Peak RSS of this fresh process after loading one prefill graph and running it once."""
    from streetcascade.runtime.backends import get_backend
    from streetcascade.settings import RuntimeConfig

    root = Path(root)
    backend = get_backend("onnxruntime")  # the baseline imports ONNX Runtime too
    if precision:
        _, _, _, io = _setup(root)
        feeds = dict(np.load(root / "feeds.npz"))
        path = root / "engines" / "cpu" / f"judge.prefill.{precision}.onnx"
        with backend.load(str(path), io["prefill"], backend.options_for(RuntimeConfig(), "cpu")) as engine, engine.slot() as slot:
            slot.infer(feeds)
    return peak_rss_bytes()


def run(family: str = "qwen3-vl", preset: str = "qwen3-vl-2b-lm4", size: int = 448, runs: int = 6, rounds: int = 3, block: int = 128,
        out=print, workdir: str | None = None, in_process: bool = False) -> dict:
    tmp_holder = None if workdir else tempfile.TemporaryDirectory()
    root = Path(workdir or tmp_holder.name)
    root.mkdir(parents=True, exist_ok=True)
    try:
        built = _phase("build", in_process, root=str(root), family=family, preset=preset, size=size, block=block)
        out("prefill: FP32 / INT8 / INT4 side by side ...")
        pre = _phase("prefill", in_process, root=str(root), size=size, runs=runs, rounds=rounds)
        out("the judge end to end vs transformers generate(max_new_tokens=1) ...")
        judge = _phase("judge", in_process, root=str(root), family=family, size=size, runs=max(2, runs // 2), rounds=rounds)
        base_rss = _phase("rss", in_process, root=str(root), precision="")
        rss = {p: _phase("rss", in_process, root=str(root), precision=p) for p in ("fp32", "int8-dynamic", "int4")}
        dest = root / "engines" / "cpu"
        sizes = {p: file_bytes(dest / f"judge.prefill.{p}.onnx") for p in ("fp32", "int8-dynamic", "int4")}
        vision_bytes = {p: file_bytes(dest / f"judge.vision.{p}.onnx") for p in vision_variants(root)}
        stage_rss = {name: _phase("stage_rss", in_process, root=str(root), size=size, vision=v, prefill=p) for name, (v, p) in STAGES.items()}
        _, _, entry, _ = _setup(root)
    finally:
        if tmp_holder is not None:
            tmp_holder.cleanup()
    spec = entry.vlm
    out(f"{family} `random:{preset}` ({model_shape_line(entry)}); one {size}x{size} image ({pre['image_tokens']} image tokens) + the "
        f"judge's prompt = {pre['tokens']} tokens; ONNX Runtime CPU; medians of {runs} runs in {rounds} interleaved rounds (judges: "
        f"{max(2, runs // 2)}); FP32 compile {built['compile_s']:.0f} s; peak RSS of a fresh process that loads the graph and runs it once "
        f"(without a graph: {base_rss / 2**20:.0f} MiB)")
    out("| prefill | ms | x FP32 speed | file MiB | x smaller | peak RSS MiB | p(yes) | max |d answer logit| vs FP32 |")
    out("|---|---|---|---|---|---|---|---|")
    f32 = pre["prefill_ms"]["fp32"]
    for p in ("fp32", "int8-dynamic", "int4"):
        out(f"| {p} | {pre['prefill_ms'][p]:.0f} | {f32 / pre['prefill_ms'][p]:.2f}x | {sizes[p] / 2**20:.0f} | {sizes['fp32'] / sizes[p]:.2f}x | "
            f"{rss[p] / 2**20:.0f} | {pre['p_yes'][p]:.4f} | {pre['dlogit'][p]:.3f} |")
    vms = pre["vision_ms"]
    out("vision graph: " + ", ".join(f"{v} {vms[v]:.0f} ms ({vms['fp32'] / vms[v]:.2f}x FP32 speed; {vision_bytes[v] / 2**20:.0f} MiB)" for v in vms))
    out("FP32 vision graph's kernel time by operator (ONNX Runtime profiler): "
        + ", ".join(f"{op} {share:.0%}" for op, share in pre["vision_ops"].items()))
    out("| whole stage (vision + prefill) | file MiB | x smaller than FP32 | peak RSS MiB (load + judge one image) |")
    out("|---|---|---|---|")
    stage_bytes = {name: vision_bytes[v] + sizes[p] for name, (v, p) in STAGES.items()}
    for name in STAGES:
        out(f"| {name} | {stage_bytes[name] / 2**20:.0f} | {stage_bytes['fp32'] / stage_bytes[name]:.2f}x | {stage_rss[name] / 2**20:.0f} |")
    gen = judge["judge_ms"][GENERATE]
    out("| image -> p(yes) | ms | x faster than generate | p(yes) |")
    out("|---|---|---|---|")
    for name in judge["judge_ms"]:
        out(f"| {name} | {judge['judge_ms'][name]:.0f} | {gen / judge['judge_ms'][name]:.2f}x | {judge['p_yes'][name]:.4f} |")
    out(f"(transformers' own forward: p(yes) {judge['p_yes']['transformers forward']:.4f}; {spec.vision_tokens} image tokens per "
        f"{size}x{size} image)")
    return {"prefill": pre, "judge": judge, "rss": rss, "file_bytes": sizes, "vision_bytes": vision_bytes, "base_rss": base_rss,
            "stage_bytes": stage_bytes, "stage_rss": stage_rss}


def model_shape_line(entry) -> str:
    for note in entry.notes:
        if "decoder layers" in note:
            return note.split(":", 1)[1].split(";")[0].strip()
    return ""


def _transformers_generate(family, model, spec, image: np.ndarray):
    """transformers on the image: its image processor, the compiled prompt with the image's
    tokens (the family's `transformers_inputs`), `generate(max_new_tokens=1)` (greedy); returns
    p(yes) from the first token's scores. The processor runs inside each timed call, as the
    judge's own preparation does."""
    import torch

    yes = torch.tensor(spec.answer_yes)

    def call() -> float:
        with torch.no_grad():
            out = model.generate(**family.transformers_inputs(model, spec, image), max_new_tokens=1, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True)
        answers = torch.log_softmax(out.scores[0][0, spec.answer_ids].double(), -1)
        return float(answers[yes].exp().sum())

    return call


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="qwen3-vl", choices=["qwen3-vl", "qwen2.5-vl", "smolvlm"])
    ap.add_argument("--preset", default="qwen3-vl-2b-lm4", help="random:<preset> of the family (tiny, qwen3-vl-2b, qwen2.5-vl-3b, smolvlm-256m, ...; "
                                                                  "-lmN: N decoder layers)")
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--block", type=int, default=128, help="INT4 block size")
    ap.add_argument("--workdir", default=None, help="keep the engines here (and reuse a compiled FP32 set found there)")
    args = ap.parse_args(argv)
    run(args.family, args.preset, args.size, args.runs, args.rounds, args.block, workdir=args.workdir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
