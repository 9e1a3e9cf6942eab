"""torch -> ONNX for stage-1 classifiers: uint8 NHWC in, one logit per image out, a
dynamic batch axis, everything else fixed at export."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from streetcascade.errors import CompileError
from streetcascade.runtime.backends.base import TensorSpec

log = logging.getLogger(__name__)

INPUT_NAME = "pixels"
OUTPUT_NAME = "logit"
OPSET = 17  # LayerNormalization is a single FP32-friendly op from 17 on


def classifier_specs(input_size: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    return (
        [TensorSpec(INPUT_NAME, ["batch", input_size, input_size, 3], "uint8")],
        [TensorSpec(OUTPUT_NAME, ["batch"], "float32")],
    )


def export_classifier(module: torch.nn.Module, path: Path, input_size: int) -> Path:
    # The TorchScript exporter restores the wrapper's training flag on every submodule
    # afterwards: make sure that flag is eval, or the shared HF model ends up in training mode.
    module.eval()
    dummy = torch.zeros(2, input_size, input_size, 3, dtype=torch.uint8)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about python ints; shapes are fixed by design
            torch.onnx.export(
                module,
                (dummy,),
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
    except Exception as exc:
        raise CompileError(f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    _check_no_control_flow(path)
    return path


def _check_no_control_flow(path: Path) -> None:
    """A fixed-resolution classifier must not contain If/Loop (e.g. an un-baked rotary tile):
    TensorRT and ORT's symbolic shape inference both trip on them."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    bad = sorted({n.op_type for n in model.graph.node if n.op_type in ("If", "Loop", "Scan")})
    if bad:
        raise CompileError(f"{path.name}: exported graph contains control flow ({', '.join(bad)}); the family must bake shape-dependent parts")
