"""The image front end, side by side in one run: JPEG bytes -> 224 x 224 RGB uint8 written into
a preallocated [N, 224, 224, 3] batch (the engine's input layout), per path. (Issue 20 measured a
native front end, libjpeg-turbo + Pillow-exact resize fused into the batch, against these rows
and removed it: docs/benchmarks.md, "Native image front end".)

  python path     runtime/images.py today: decode_image(draft_size=224) (PIL, limits) + resize_to
  PIL draft       Image.draft (DCT scaling 1/2, 1/4, 1/8) + Image.resize(BILINEAR)
  simplejpeg      decode_jpeg(min_height/min_width: DCT scaling M/8; straight into the batch slot
                  when no resize is needed) + Image.resize(BILINEAR): Pillow's resize; pixels differ from
                  the python path only where M/8 picks another decode size than Pillow's draft
  PyTurboJPEG     decode(scaling_factor: smallest M/8 at least 224) + Image.resize(BILINEAR)
  simplejpeg+cv2  as simplejpeg, but cv2.resize(INTER_AREA): the fastest library pair, other pixels

Single image: one thread decodes the set image after image. Batch: the set on 2 threads (a
ThreadPoolExecutor).

    pip install -e '.[bench]'       (simplejpeg, PyTurboJPEG 1.x; PyTurboJPEG also needs Debian's libturbojpeg0)
    python -m bench.frontend [--runs 30] [--sets validator,samples,photo]

Inputs are made from samples/*.jpg: "validator" = centre square crop resized to 224 x 224 saved
at PIL's default quality 75 (as the validators send); "samples" = the 320 x 240 files as they
are; "photo" = two samples upscaled to 4000 x 3000 with sensor-like noise, quality 90 (~1.8 MB,
like a phone photo). A library that is not installed is skipped with a note, never faked.
"""

from __future__ import annotations

import argparse
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from streetcascade.timing import interleaved, summary

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
SIZE = 224


def make_sets(names: list[str]) -> dict[str, list[bytes]]:
    from PIL import Image

    originals = [Image.open(p).convert("RGB") for p in sorted(SAMPLES.glob("*.jpg"))]
    sets: dict[str, list[bytes]] = {}
    for name in names:
        blobs = []
        if name == "validator":
            for img in originals:
                side = min(img.size)
                left, top = (img.width - side) // 2, (img.height - side) // 2
                square = img.crop((left, top, left + side, top + side)).resize((SIZE, SIZE), Image.BILINEAR)
                buf = io.BytesIO()
                square.save(buf, "JPEG")  # quality 75, 4:2:0: PIL's defaults
                blobs.append(buf.getvalue())
        elif name == "samples":
            blobs = [p.read_bytes() for p in sorted(SAMPLES.glob("*.jpg"))]
        elif name == "photo":
            rng = np.random.default_rng(0)
            for img in originals[:2]:
                big = np.asarray(img.resize((4000, 3000), Image.BICUBIC), dtype=np.int16)
                big = np.clip(big + rng.normal(0, 4, big.shape), 0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(big).save(buf, "JPEG", quality=90)
                blobs.append(buf.getvalue())
        else:
            raise SystemExit(f"unknown set {name!r} (validator, samples, photo)")
        sets[name] = blobs
    return sets


def make_paths() -> tuple[dict, list[str]]:
    """name -> fn(data, out) writing one 224 x 224 RGB image into `out`; and notes on skipped paths."""
    from PIL import Image

    from streetcascade.runtime.images import decode_image, resize_to

    notes = []

    def pil_resize(rgb: np.ndarray, out: np.ndarray) -> None:
        if rgb.shape[0] == SIZE and rgb.shape[1] == SIZE:
            out[...] = rgb
        else:
            out[...] = np.asarray(Image.fromarray(rgb).resize((SIZE, SIZE), Image.BILINEAR))

    def python_path(data, out):
        out[...] = resize_to(decode_image(data, draft_size=SIZE), SIZE)

    def pil_draft(data, out):
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (SIZE, SIZE))
        img = img.convert("RGB")
        if img.size != (SIZE, SIZE):
            img = img.resize((SIZE, SIZE), Image.BILINEAR)
        out[...] = np.asarray(img)

    paths = {"python path (runtime today)": python_path, "PIL draft": pil_draft}

    try:
        import simplejpeg

        def simplejpeg_pil(data, out):
            h, w, _, _ = simplejpeg.decode_jpeg_header(data)
            if (w, h) == (SIZE, SIZE):
                simplejpeg.decode_jpeg(data, buffer=out)  # the common case: decode straight into the slot
                return
            pil_resize(simplejpeg.decode_jpeg(data, min_height=SIZE, min_width=SIZE), out)

        paths["simplejpeg"] = simplejpeg_pil
    except ImportError:
        notes.append("simplejpeg not installed: `pip install simplejpeg`")
        simplejpeg = None

    try:
        import turbojpeg

        tj = turbojpeg.TurboJPEG()
        factors = sorted(tj.scaling_factors, key=lambda f: f[0] / f[1])

        def pyturbojpeg(data, out):
            w, h, _, _ = tj.decode_header(data)
            for num, den in factors:
                if num <= den and -(-w * num // den) >= SIZE and -(-h * num // den) >= SIZE:
                    break
            else:
                num, den = 1, 1
            rgb = tj.decode(data, pixel_format=turbojpeg.TJPF_RGB, scaling_factor=(num, den))
            pil_resize(rgb, out)

        paths["PyTurboJPEG"] = pyturbojpeg
    except (ImportError, OSError, RuntimeError) as exc:  # the module, or libturbojpeg.so, is missing
        notes.append(f"PyTurboJPEG unavailable ({type(exc).__name__}: {str(exc).splitlines()[0][:100]}): "
                     "`pip install 'PyTurboJPEG<2'` + Debian `libturbojpeg0` (PyTurboJPEG 2.x needs libjpeg-turbo 3)")

    try:
        import cv2

        if simplejpeg is not None:
            def simplejpeg_cv2(data, out):
                rgb = simplejpeg.decode_jpeg(data, min_height=SIZE, min_width=SIZE)
                if rgb.shape[:2] == (SIZE, SIZE):
                    out[...] = rgb
                else:
                    cv2.resize(rgb, (SIZE, SIZE), dst=out, interpolation=cv2.INTER_AREA)

            paths["simplejpeg+cv2 (other pixels)"] = simplejpeg_cv2
    except ImportError:
        notes.append("opencv not installed: no simplejpeg+cv2 row")

    return paths, notes


# The "x best library" column's candidates: the library paths that write the Python path's pixels
# (simplejpeg+cv2 writes other pixels and is left out).
LIBRARY_PATHS = ("PIL draft", "simplejpeg", "PyTurboJPEG")


def run(set_names=("validator", "samples", "photo"), runs: int = 30, threads: int = 2, out=print) -> list[dict]:
    sets = make_sets(list(set_names))
    paths, notes = make_paths()
    pool = ThreadPoolExecutor(max_workers=threads)
    rows = []
    for set_name, blobs in sets.items():
        n = len(blobs)
        batch = {name: np.zeros((n, SIZE, SIZE, 3), np.uint8) for name in paths}
        reference = batch["python path (runtime today)"]
        single = {}
        for name, fn in paths.items():
            def one_by_one(fn=fn, buf=batch[name]):
                for i, data in enumerate(blobs):
                    fn(data, buf[i])

            single[name] = one_by_one
        threaded = {}
        for name, fn in paths.items():
            def on_threads(fn=fn, buf=batch[name]):
                list(pool.map(lambda i: fn(blobs[i], buf[i]), range(n)))

            threaded[name] = on_threads
        for mode, fns in (("single", single), (f"batch ({threads} threads)", threaded)):
            per_run = max(3, runs // (4 if set_name == "photo" else 1))
            times = interleaved(fns, runs=per_run, warmup=2, rounds=3)
            for name, ms in times.items():
                med, p99 = summary(ms / n)
                diff = np.abs(batch[name].astype(np.int16) - reference.astype(np.int16))
                rows.append({"set": set_name, "mode": mode, "path": name, "images": n, "median_ms": med, "p99_ms": p99,
                             "max_diff": int(diff.max()), "mean_diff": float(diff.mean())})
    pool.shutdown()
    _print(rows, notes, sets, runs, out)
    return rows


def _best_library(rows: list[dict], set_name: str, mode: str) -> dict | None:
    cands = [r for r in rows if r["set"] == set_name and r["mode"] == mode and r["path"] in LIBRARY_PATHS]
    return min(cands, key=lambda r: r["median_ms"]) if cands else None


def _print(rows, notes, sets, runs, out) -> None:
    cpu = os.cpu_count()
    out(f"JPEG -> 224x224 RGB into the batch buffer, ms per image (median of ~{runs} runs per path, interleaved), {cpu} CPU(s):")
    for name, blobs in sets.items():
        from PIL import Image

        sizes = sorted({Image.open(io.BytesIO(b)).size for b in blobs})
        out(f"  set {name}: {len(blobs)} JPEG(s), {', '.join(f'{w}x{h}' for w, h in sizes)}, {np.mean([len(b) for b in blobs]) / 1024:.0f} KiB mean")
    out("| set | mode | path | ms/image median | p99 | x python path | x best library | max / mean |diff| vs python path |")
    out("|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = next(x for x in rows if x["set"] == r["set"] and x["mode"] == r["mode"] and x["path"].startswith("python path"))
        best = _best_library(rows, r["set"], r["mode"])
        vs_best = f"{best['median_ms'] / r['median_ms']:.2f}" if best else "-"
        out(f"| {r['set']} | {r['mode']} | {r['path']} | {r['median_ms']:.3f} | {r['p99_ms']:.3f} | "
            f"{base['median_ms'] / r['median_ms']:.2f} | {vs_best} | {r['max_diff']} / {r['mean_diff']:.3f} |")
    for note in notes:
        out(f"note: {note}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--sets", default="validator,samples,photo")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    run(tuple(args.sets.split(",")), args.runs, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
