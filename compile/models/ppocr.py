"""Family "ppocr": PP-OCR text detection + recognition, on the ONNX models the `rapidocr`
package ships (real weights that work offline), compiled into the engine set like any graph:
optimised for the target, hashed, parity-checked, recorded in the manifest. The runtime stage
(runtime/ocr_stage.py) reads sign text with them and turns it into roadwork evidence.

`source`:
- "rapidocr": the models of an installed rapidocr package (found without importing it), else of
  its wheel in the cache (${STREETCASCADE_CACHE:-~/.cache/streetcascade}/); if neither exists,
  the pinned wheel is downloaded there once with pip (`--no-deps`: only the model files are
  used, none of rapidocr's code or dependencies);
- a folder with one `*det*.onnx` and one `*rec*.onnx` (any PP-OCR ONNX export), or a rapidocr wheel.

The graphs already are ONNX: "export" copies them. Parity is tensor parity: the target's
engine against the original graph run by ONNX Runtime, on example inputs at the sizes the stage
feeds (tolerance 1e-4 on every output value).
"""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from streetcascade.config import StageConfig, resolve_relative
from streetcascade.machine import cache_dir
from streetcascade.errors import CompileError
from streetcascade.manifest import GraphIO, TensorSpec

from .base import ExportableGraph, ExportableModel, GraphDecl, ModelFamily

RAPIDOCR_PIN = "rapidocr==3.10.0"
DET_SIDE = 736  # the detector's shorter side (runtime/ppocr.py DetSettings)
REC_WIDTH = 960  # widest recognizer input (48 x 20: long sign lines)


def _from_wheel(wheel: Path, dest: Path) -> tuple[Path, Path]:
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.startswith("rapidocr/models/") and n.endswith(".onnx")]
        det = [n for n in names if "_det_" in n]
        rec = [n for n in names if "_rec_" in n]
        if not det or not rec:
            raise CompileError(f"{wheel.name}: no detection/recognition ONNX models inside")
        dest.mkdir(parents=True, exist_ok=True)
        out = []
        for name in (det[0], rec[0]):
            target = dest / Path(name).name
            if not target.exists():
                target.write_bytes(z.read(name))
            out.append(target)
    return out[0], out[1]


def _in_folder(folder: Path) -> tuple[Path, Path]:
    det = sorted(folder.glob("*det*.onnx"))
    rec = sorted(folder.glob("*rec*.onnx"))
    if len(det) != 1 or len(rec) != 1:
        raise CompileError(f"{folder}: need exactly one *det*.onnx and one *rec*.onnx, found {[p.name for p in det + rec]}")
    return det[0], rec[0]


def locate_models(source: str, config_path: Path, progress=None) -> tuple[Path, Path]:
    """(detector, recognizer) ONNX paths for `source` (see the module docstring)."""
    if source != "rapidocr":
        path = resolve_relative(config_path, source)
        if path.is_dir():
            return _in_folder(path)
        if path.suffix == ".whl" and path.exists():
            return _from_wheel(path, cache_dir() / "ppocr-models" / path.stem)
        raise CompileError(f"ppocr source {source!r}: not a folder with *det*/*rec* ONNX models, a rapidocr wheel, or \"rapidocr\"")
    spec = importlib.util.find_spec("rapidocr")
    if spec is not None and spec.origin:
        models = Path(spec.origin).parent / "models"
        if models.is_dir():
            det = sorted(models.glob("*_det_*.onnx"))
            rec = sorted(models.glob("*_rec_*.onnx"))
            if det and rec:
                return det[0], rec[0]
    wheels = sorted(cache_dir().glob("rapidocr-*.whl"))
    if not wheels:
        if progress is not None:
            progress.step(f"ppocr: fetching the PP-OCR models ({RAPIDOCR_PIN}, ~27 MB, once) into {cache_dir()}")
        cache_dir().mkdir(parents=True, exist_ok=True)
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", RAPIDOCR_PIN, "-d", str(cache_dir())],
                           capture_output=True, text=True)
        wheels = sorted(cache_dir().glob("rapidocr-*.whl"))
        if r.returncode != 0 or not wheels:
            raise CompileError(f"ppocr: no rapidocr models here and `pip download {RAPIDOCR_PIN}` failed: {r.stderr.strip()[-300:]}; "
                               "install rapidocr, or point `source` at a folder with PP-OCR det/rec ONNX models")
    return _from_wheel(wheels[-1], cache_dir() / "ppocr-models" / wheels[-1].stem)


def _onnx_io(path: Path) -> tuple[str, str, int]:
    """(input name, output name, recognizer classes or 0) read from the graph."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    out_dims = [d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim]
    return m.graph.input[0].name, m.graph.output[0].name, (out_dims[-1] if len(out_dims) == 3 else 0)


def detector_io(input_name: str, output_name: str) -> GraphIO:
    return GraphIO(
        inputs=[TensorSpec(input_name, ["batch", 3, "height", "width"], "float32")],
        outputs=[TensorSpec(output_name, ["batch", 1, "height", "width"], "float32")],
        max_batch=1,
        axis_sizes={"height": DET_SIDE, "width": DET_SIDE * 4 // 3 // 32 * 32},
    )


# PP-OCRv6's recognizer scores 18,710 classes (its character set + blank + space): the host
# buffer estimate of the output uses it; the graph's own count is whatever the model has.
REC_CLASSES = 18710


def recognizer_io(input_name: str, output_name: str, max_batch: int) -> GraphIO:
    return GraphIO(
        inputs=[TensorSpec(input_name, ["batch", 3, 48, "width"], "float32")],
        outputs=[TensorSpec(output_name, ["batch", "steps", "classes"], "float32")],
        max_batch=max_batch,
        axis_sizes={"width": REC_WIDTH, "steps": REC_WIDTH // 8, "classes": REC_CLASSES},
    )


def _reference(path: Path, io: GraphIO):
    """The original graph run by ONNX Runtime (through the runtime's backend), unoptimised."""
    import msgspec

    from streetcascade.runtime.backends import get_backend
    from streetcascade.settings import RuntimeConfig

    backend = get_backend("onnxruntime")
    engine = backend.load(str(path), io, msgspec.structs.replace(backend.options_for(RuntimeConfig(), "cpu"), optimize=False))
    slot = engine.slot()

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return slot.infer(feeds)

    run.engine = engine
    return run


def source_graph(decl: GraphDecl, path: Path, rng: np.random.Generator) -> ExportableGraph:
    """A ready ONNX graph as the pipeline takes it: copied as the "export", parity-checked
    against itself run by ONNX Runtime on random inputs at two widths (and batch 2 if allowed)."""
    spec = decl.io.inputs[0]
    feeds = []
    for batch, width in ((1, 320), (min(2, decl.io.max_batch), 480)):
        shape = [batch, 3, 320 if "height" in spec.shape else 48, width]
        feeds.append({spec.name: rng.uniform(-1, 1, shape).astype(np.float32)})
    return ExportableGraph(decl, None, _reference(path, decl.io), onnx_source=path, parity_feeds=feeds)


def detector_graph(declared: GraphDecl, path: Path, rng: np.random.Generator) -> ExportableGraph:
    """PP-OCR's text detector from `path`, its IO names read from the file (ppocr's stage and
    florence2's text-presence gate)."""
    det_in, det_out, _ = _onnx_io(path)
    return source_graph(replace(declared, io=detector_io(det_in, det_out)), path, rng)


class PpOcrFamily(ModelFamily):
    name = "ppocr"
    kind = "ocr"

    def graphs(self, stage: StageConfig) -> list[GraphDecl]:
        # Names and class count come from the files: declared here with rapidocr's (the runtime
        # takes whatever the manifest says).
        return [
            GraphDecl("detector", detector_io("x", "fetch_name_0"), opset=11, parity="tensor",
                      preprocessing="RGB resized to a shorter side of 736 (multiple of 32), (x / 255 - 0.5) / 0.5, NCHW"),
            GraphDecl("recognizer", recognizer_io("x", "fetch_name_0", stage.max_batch), opset=11, parity="tensor",
                      preprocessing="text boxes cut out, 48 px high, (x / 255 - 0.5) / 0.5, NCHW, padded to the widest"),
        ]

    def load(self, stage: StageConfig, config_path: Path, progress=None) -> ExportableModel:
        det, rec = locate_models(stage.source, config_path, progress)
        rec_in, rec_out, classes = _onnx_io(rec)
        if not classes:
            raise CompileError(f"{rec.name}: the recognizer's output has no fixed class axis")
        decls = self.graphs(stage)
        digest = hashlib.sha256()
        for path in (det, rec):
            digest.update(path.read_bytes())
        rng = np.random.default_rng(stage.seed)
        rec_decl = replace(decls[1], io=recognizer_io(rec_in, rec_out, stage.max_batch))
        graphs = [detector_graph(decls[0], det, rng), source_graph(rec_decl, rec, rng)]
        return ExportableModel(graphs, digest.hexdigest(), placeholder=False,
                               notes=[f"PP-OCR models: {det.name}, {rec.name} (from {stage.source})"])

    def write_test_checkpoint(self, directory: Path, seed: int = 0) -> Path:
        """Two tiny random ONNX graphs with PP-OCR's IO shapes and a `character` table."""
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        directory.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        w_det = numpy_helper.from_array(rng.normal(0, 0.3, (1, 3, 3, 3)).astype(np.float32), "w")
        det = helper.make_graph(
            [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Sigmoid", ["c"], ["fetch_name_0"])],
            "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
            [helper.make_tensor_value_info("fetch_name_0", TensorProto.FLOAT, ["n", 1, "h", "w"])], [w_det])
        chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        classes = len(chars) + 2
        w_rec = numpy_helper.from_array(rng.normal(0, 0.3, (classes, 3, 48, 8)).astype(np.float32), "w")
        rec = helper.make_graph(
            [helper.make_node("Conv", ["x", "w"], ["c"], strides=[48, 8]),  # n, classes, 1, width/8
             helper.make_node("Squeeze", ["c", "axis"], ["s"]),
             helper.make_node("Transpose", ["s"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Softmax", ["t"], ["fetch_name_0"], axis=-1)],
            "rec", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 48, "w"])],
            [helper.make_tensor_value_info("fetch_name_0", TensorProto.FLOAT, ["n", "t", classes])],
            [w_rec, numpy_helper.from_array(np.array([2], np.int64), "axis")])
        for graph, name in ((det, "tiny_det_.onnx"), (rec, "tiny_rec_.onnx")):
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
            model.ir_version = 8
            if graph is rec:
                helper.set_model_props(model, {"character": "\n".join(chars)})
            onnx.save(model, str(directory / name))
        return directory


FAMILY = PpOcrFamily()
