"""FP16 as a property of the ONNX graph, the way TensorRT 11 takes precision (strongly typed
networks, no FP16 builder flag) and the way ONNX Runtime's CUDA provider runs it.

Everything becomes float16 except what loses accuracy there, which stays float32 with casts
around it: LayerNormalization (its variance overflows FP16), Softmax and the reductions and
powers of decomposed normalisations, the rotary-embedding trigonometry, and the classification
head (every node after the last normalisation, so the logit is computed in FP32). Inputs and
outputs keep their types (uint8 pixels in, float32 logit out).
"""

from __future__ import annotations

import logging
from pathlib import Path

from streetcascade.errors import CompileError

log = logging.getLogger(__name__)

# Ops kept in FP32 (besides onnxruntime's default block list of ops without FP16 kernels).
KEEP_FP32_OPS = (
    "LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
    "Softmax", "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Reciprocal", "Div",
    "Sin", "Cos", "Range", "Erf",
)
NORM_OPS = ("LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization", "ReduceMean")


def head_nodes(graph) -> list[str]:
    """Names of the nodes after the last normalisation in topological order: the head."""
    last = -1
    for i, node in enumerate(graph.node):
        if node.op_type in NORM_OPS:
            last = i
    if last < 0:
        return []
    return [n.name for n in graph.node[last + 1 :] if n.name]


def convert_fp16(src: Path, dst: Path, keep_ops: tuple[str, ...] = KEEP_FP32_OPS, keep_head: bool = True) -> Path:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    # Unnamed nodes cannot be listed in a block list: give every node a stable name first.
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    blocked_nodes = head_nodes(model.graph) if keep_head else []
    try:
        converted = convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(keep_ops)),
            node_block_list=blocked_nodes,
        )
    except Exception as exc:
        raise CompileError(f"FP16 conversion of {src.name} failed: {exc}") from exc
    onnx.save(converted, str(dst))
    n16 = sum(1 for init in converted.graph.initializer if init.data_type == onnx.TensorProto.FLOAT16)
    log.info("%s: FP16 graph with %d float16 initializers; %d head node(s) kept FP32", dst.name, n16, len(blocked_nodes))
    return dst
