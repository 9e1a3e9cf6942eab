"""`attention = "fused"` (a stage option, ONNX Runtime target only): every
`scaled_dot_product_attention` of the model exported as ONNX Runtime's
`com.microsoft.MultiHeadAttention` contrib op instead of MatMul / Softmax / MatMul.

The model's own code runs up to the attention (DINOv3 applies its rotary embedding to q and k
before it), so only the attention itself is replaced; parity against PyTorch is checked like any
export. Measured on the development VM (docs/benchmarks.md, "Fused attention for ONNX Runtime"):
no gain at 201 tokens, so it is off by default; `python -m bench.fused_attention` measures it on
the CPU that will serve.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from streetcascade.errors import CompileError

SDPA = "aten::scaled_dot_product_attention"
FUSED_OP = "MultiHeadAttention"


def mha_symbolic(num_heads: int, head_size: int):
    """TorchScript-exporter symbolic: [B, N, S, H] q/k/v -> MultiHeadAttention on [B, S, N*H]."""
    import torch
    from torch.onnx import symbolic_helper as sh

    def sdpa(g, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if not sh._is_none(attn_mask) or sh._maybe_get_const(is_causal, "b"):
            raise CompileError("attention = \"fused\": this model's attention is masked or causal, which is not fused here")

        def pack(x):
            x = g.op("Transpose", x, perm_i=[0, 2, 1, 3])
            return g.op("Reshape", x, g.op("Constant", value_t=torch.tensor([0, -1, num_heads * head_size], dtype=torch.int64)))

        attrs = {"num_heads_i": num_heads}
        if not sh._is_none(scale):
            attrs["scale_f"] = float(sh._maybe_get_const(scale, "f"))
        out = g.op(f"com.microsoft::{FUSED_OP}", pack(query), pack(key), pack(value), **attrs)
        out = g.op("Reshape", out, g.op("Constant", value_t=torch.tensor([0, -1, num_heads, head_size], dtype=torch.int64)))
        return g.op("Transpose", out, perm_i=[0, 2, 1, 3])

    return sdpa


def attention_shape(module) -> tuple[int, int]:
    """(heads, head size) from the first Hugging Face config inside `module` (num_attention_heads,
    or num_heads as Qwen-VL's vision configs call it)."""
    heads = lambda c: getattr(c, "num_attention_heads", None) or getattr(c, "num_heads", None)  # noqa: E731
    config = next((m.config for m in module.modules() if hasattr(m, "config") and heads(m.config)), None)
    if config is None:
        raise CompileError("attention = \"fused\": the model has no transformer config (num_attention_heads); it has no attention to fuse")
    return heads(config), config.hidden_size // heads(config)


@contextmanager
def fused_attention_export(module, opset: int):
    """While active, the TorchScript exporter writes SDPA as MultiHeadAttention."""
    from torch.onnx import register_custom_op_symbolic, unregister_custom_op_symbolic

    register_custom_op_symbolic(SDPA, mha_symbolic(*attention_shape(module)), opset)
    try:
        yield
    finally:
        unregister_custom_op_symbolic(SDPA, opset)


def count_fused(path: Path) -> int:
    import onnx

    return sum(n.op_type == FUSED_OP for n in onnx.load(str(path), load_external_data=False).graph.node)


def drop_untyped_value_info(model) -> bool:
    """Remove value_info entries without a type (contrib-op outputs: they carry nothing, and
    ONNX Runtime refuses to load a graph with them). True when any was removed."""
    keep = [v for v in model.graph.value_info if v.type.tensor_type.elem_type != 0]
    if len(keep) == len(model.graph.value_info):
        return False
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
    return True


def type_fused_outputs(path: Path) -> int:
    """Give every MultiHeadAttention output a float type in the graph's value_info: ONNX shape
    inference does not type contrib ops, and ONNX Runtime's static-INT8 calibrator refuses a
    graph output without one ("Invalid tensor data type 0"). Returns the number of fused ops."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    fused = [n for n in model.graph.node if n.op_type == FUSED_OP]
    drop_untyped_value_info(model)
    typed = {v.name for v in model.graph.value_info}
    for node in fused:
        for name in node.output:
            if name and name not in typed:
                model.graph.value_info.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    onnx.save(model, str(path))
    return len(fused)
