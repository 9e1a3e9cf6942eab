"""torch -> ONNX for one declared graph: names, dtypes, opset and dynamic axes all come from
the family's `GraphDecl` (string dims are named dynamic axes); everything else is fixed at
export. No If/Loop/Scan may remain: TensorRT and ORT's symbolic shape inference trip on them."""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import torch

from streetcascade.errors import CompileError
from streetcascade.manifest import TensorSpec

from .models.base import ExportableGraph

log = logging.getLogger(__name__)

EXAMPLE_BATCH = 2  # not 1: a size-1 example lets the tracer specialise the batch axis away


def _example(spec: TensorSpec) -> torch.Tensor:
    shape = [EXAMPLE_BATCH if isinstance(d, str) else d for d in spec.shape]
    return torch.zeros(shape, dtype=getattr(torch, spec.dtype))


def _dynamic_axes(specs: list[TensorSpec]) -> dict[str, dict[int, str]]:
    return {s.name: {i: d for i, d in enumerate(s.shape) if isinstance(d, str)} for s in specs if any(isinstance(d, str) for d in s.shape)}


def export_graph(graph: ExportableGraph, path: Path, fused_attention: bool = False) -> Path:
    """`fused_attention`: every scaled_dot_product_attention as ONNX Runtime's MultiHeadAttention
    (compile/fused_attention.py); refused when the model has none."""
    decl = graph.decl
    if graph.onnx_source is not None:  # already ONNX (e.g. PP-OCR's models): copy it as the "export"
        import shutil

        shutil.copyfile(graph.onnx_source, path)
        _check_no_control_flow(path)
        return path
    # The TorchScript exporter restores the wrapper's training flag on every submodule
    # afterwards: make sure that flag is eval, or the shared HF model ends up in training mode.
    module = graph.module.eval()
    if fused_attention:
        from .fused_attention import fused_attention_export

        fusing = fused_attention_export(module, decl.opset)
    else:
        fusing = contextlib.nullcontext()
    before = set(path.parent.iterdir())
    try:
        with warnings.catch_warnings(), fusing:
            warnings.simplefilter("ignore")  # TracerWarnings about python ints; shapes are fixed by design
            example = (tuple(torch.from_numpy(graph.example[s.name]) for s in decl.io.inputs) if graph.example is not None
                       else tuple(_example(s) for s in decl.io.inputs))
            torch.onnx.export(
                module,
                example,
                str(path),
                dynamo=False,
                opset_version=decl.opset,
                input_names=[s.name for s in decl.io.inputs],
                output_names=[s.name for s in decl.io.outputs],
                dynamic_axes=_dynamic_axes(decl.io.inputs + decl.io.outputs),
                do_constant_folding=True,
            )
    except CompileError:
        raise
    except Exception as exc:
        raise CompileError(f"ONNX export of the {decl.role} graph failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    gather_external_data(path, [p for p in path.parent.iterdir() if p not in before and p != path])
    _check_no_control_flow(path)
    if fused_attention:
        from .fused_attention import type_fused_outputs

        if not type_fused_outputs(path):
            raise CompileError(f"attention = \"fused\": the {decl.role} graph has no scaled_dot_product_attention to fuse "
                               "(a convolutional model, or attention not computed by SDPA)")
    if graph.metadata:
        _set_metadata(path, graph.metadata)
    return path


def weights_file(path: Path) -> Path:
    """Where a graph past protobuf's 2 GiB limit keeps its weights: `<graph file>.data` beside it."""
    return path.with_name(path.name + ".data")


def has_external_data(path: Path) -> bool:
    """True when the graph's initializers live in a file beside it."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    return any(uses_external_data(t) for t in model.graph.initializer)


def save_with_weights_file(model, path: Path) -> Path:
    """Save a graph with its weights in `weights_file(path)`, the one name the targets, the
    manifest's companions and the backends expect (the graph file records that name)."""
    import onnx

    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=weights_file(path).name,
                    size_threshold=1024)
    return path


def copy_graph(src: Path, dst: Path) -> Path:
    """`src` as the engine file `dst`. A graph with its weights beside it is saved again rather
    than copied: its file names `weights_file(src)`, an intermediate the compile removes."""
    import shutil

    if not has_external_data(src):
        shutil.copyfile(src, dst)
        return dst
    import onnx

    return save_with_weights_file(onnx.load(str(src)), dst)


def gather_external_data(path: Path, written: list[Path]) -> None:
    """The TorchScript exporter writes a model past 2 GiB with one file per weight beside it
    (named after the weights): collect them into `weights_file(path)` and remove them."""
    if not written:
        return
    import onnx

    log.info("%s is past protobuf's 2 GiB: its %d weight files go into %s", path.name, len(written), weights_file(path).name)
    model = onnx.load(str(path))  # reads the weight files
    save_with_weights_file(model, path)
    del model
    for stray in written:
        if stray != weights_file(path):
            stray.unlink(missing_ok=True)


def _set_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Key/values the runtime reads back through `Engine.metadata()` (kept by ORT's optimiser).
    Weights in an external file stay there (only the graph file is rewritten)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **metadata})
    onnx.save(model, str(path))


def _check_no_control_flow(path: Path) -> None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    bad = sorted({n.op_type for n in model.graph.node if n.op_type in ("If", "Loop", "Scan")})
    if bad:
        raise CompileError(f"{path.name}: exported graph contains control flow ({', '.join(bad)}); the family must bake shape-dependent parts")
