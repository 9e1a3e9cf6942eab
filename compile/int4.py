"""4-bit weight-only quantization of exported ONNX graphs (`precision = "int4"`), for any graph
whose MatMuls have constant weights: a VLM's language-model prefill, its vision tower, a ViT,
Florence-2's decoder. Activations stay float; only the weights shrink (~7x).

Two ways to 4-bit weights, one graph format (ONNX Runtime's `com.microsoft.MatMulNBits`, which
the CPU and CUDA providers run and OpenVINO's ONNX reader turns into u4 constants):

- `quantize_matmul_nbits`: round to nearest per block of K (ONNX Runtime's own
  `MatMulNBitsQuantizer`), no data needed;
- `import_awq`: the ints of an AutoAWQ checkpoint (`read_awq_checkpoint`) repacked into
  MatMulNBits without re-quantizing. The graph is exported from the float model that
  `dequantized_state_dict` gives; each MatMul whose constant weight equals an AWQ layer's
  dequantized weight (found by a hash of the exact float32 values, so the exporter's initializer
  names do not matter) is replaced by a MatMulNBits that dequantizes to exactly that weight.

MatMulNBits (4 bits), read from onnxruntime's quantizer and contrib-op docs and checked here
against its CPU kernel (tests/compile/test_int4.py):
    B            uint8 [N, K/block, block/2]   two codes a byte, the lower K index in the low nibble
    scales       float [N, K/block]
    zero_points  uint8 [N, ceil(K/block / 2)]  packed the same way along the blocks; absent = 8
    weight[n, k] = (code - zero_point) * scale,   Y = A @ weight.T (+ bias)
`accuracy_level` 4 lets the CPU kernel quantize A to int8 per block (faster, ~0.3% relative
error on a layer's output); 0 keeps A float (exact against the dequantized weight).

Reading AutoAWQ checkpoints (layouts, exact dequantization, the float copy a family loads) is
compile/awq.py; its public names are re-exported here.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from streetcascade.config import INT4_BLOCK_SIZES
from streetcascade.errors import CompileError
from streetcascade.manifest import WeightQuant

from .awq import (  # noqa: F401  (re-exported: the AWQ half of the int4 interface)
    AwqConfig,
    AwqLinear,
    SafetensorsFile,
    checkpoint_fingerprint,
    dequantized_state_dict,
    exact_hash,
    float_checkpoint,
    is_awq_checkpoint,
    read_awq_checkpoint,
    read_awq_config,
    write_dequantized_checkpoint,
)

if TYPE_CHECKING:  # onnx is imported inside the functions that need it
    import onnx

log = logging.getLogger(__name__)

BITS = 4
BLOCK_SIZES = INT4_BLOCK_SIZES  # MatMulNBits: a power of two, at least 16
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
MS_DOMAIN = "com.microsoft"
# The report's inputs the graph cannot tell (how the codes were made), kept in the model's metadata.
REPORT_KEY = "streetcascade.int4"


# ------------------------------------------------------------------------------ settings checks


def check_settings(block_size: int, bits: int = BITS, accuracy_level: int = 4) -> None:
    """Refuse what MatMulNBits cannot run here, naming the value."""
    if bits != BITS:
        raise CompileError(f"int4: bits {bits} is not supported: MatMulNBits weights are built with bits = {BITS}")
    if block_size not in BLOCK_SIZES:
        raise CompileError(f"int4: block_size {block_size} is not supported: use a power of two from 16 to 256 ({', '.join(map(str, BLOCK_SIZES))})")
    if accuracy_level not in ACCURACY_LEVELS:
        raise CompileError(f"int4: accuracy_level {accuracy_level} is not one of {', '.join(map(str, ACCURACY_LEVELS))}")


def keep_float_names(patterns: Sequence[str]) -> Callable[["onnx.NodeProto"], bool] | None:
    """A `keep_float` predicate from node-name patterns (fnmatch, e.g. "*lm_head*"); None for none."""
    if not patterns:
        return None
    return lambda node: any(fnmatch.fnmatchcase(node.name, p) for p in patterns)


# ------------------------------------------------------------------------------- graph helpers


def _name_nodes(model) -> None:
    from .quantize import name_nodes

    name_nodes(model)


def _initializers(model) -> dict:
    return {i.name: i for i in model.graph.initializer}


def _to_array(tensor) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor)


def gemm_to_matmul(model) -> int:
    """Rewrite `Gemm(A, B const, C)` (alpha = beta = 1, A not transposed) as MatMul + Add, so the
    4-bit passes see every Linear the same way (torch.onnx exports a Linear on a 2-D input as
    Gemm with B = weight [out, in], on 3-D as MatMul with weight.T [in, out] + Add). In place;
    returns the number rewritten."""
    from onnx import helper, numpy_helper

    inits = _initializers(model)
    new_nodes, done = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.domain not in ("", "ai.onnx") or len(node.input) < 2 or node.input[1] not in inits
                or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            new_nodes.append(node)
            continue
        weight = inits[node.input[1]]
        w = _to_array(weight)
        if attrs.get("transB", 0):
            w = np.ascontiguousarray(w.T)
            name = f"{node.input[1]}_kn"
            if name not in inits:
                t = numpy_helper.from_array(w, name)
                model.graph.initializer.append(t)
                inits[name] = t
        else:
            name = node.input[1]
        has_bias = len(node.input) > 2 and node.input[2]
        base = node.name or f"gemm_{done}"
        mm_out = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        new_nodes.append(helper.make_node("MatMul", [node.input[0], name], [mm_out], name=f"{base}_MatMul"))
        if has_bias:
            new_nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=f"{base}_Add"))
        done += 1
    if done:
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)
        _drop_unused_initializers(model)
    return done


def _drop_unused_initializers(model) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)


def _dedupe_initializers(model) -> None:
    """ONNX Runtime's quantizer writes the packed weight once per MatMul reading it: a weight
    shared by two MatMuls would appear twice under one name (identical contents)."""
    seen, dupes = set(), []
    for init in model.graph.initializer:
        if init.name in seen:
            dupes.append(init)
        seen.add(init.name)
    for init in dupes:
        model.graph.initializer.remove(init)


def float_matmuls(model) -> list:
    """MatMul nodes whose second input is a 2-D float initializer (the weights 4-bit can take)."""
    inits = _initializers(model)
    out = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and len(node.input) == 2 and node.input[1] in inits:
            t = inits[node.input[1]]
            if len(t.dims) == 2 and t.data_type in (1, 10, 16):  # FLOAT, FLOAT16, BFLOAT16
                out.append(node)
    return out


def nbits_nodes(model) -> list:
    return [n for n in model.graph.node if n.op_type == "MatMulNBits" and n.domain == MS_DOMAIN]


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def dequantize_matmul_nbits(model, node) -> np.ndarray:
    """The float32 weight [N, K] a 4-bit MatMulNBits node computes with (test and check helper)."""
    inits = _initializers(model)
    k, n, block = int(_attr(node, "K")), int(_attr(node, "N")), int(_attr(node, "block_size"))
    if int(_attr(node, "bits", 4)) != 4:
        raise CompileError(f"{node.name}: bits {_attr(node, 'bits')}; only 4-bit MatMulNBits are read here")
    codes = _unpack_low_first(_to_array(inits[node.input[1]]).reshape(n, -1))
    blocks = -(-k // block)
    scales = _to_array(inits[node.input[2]]).astype(np.float32).reshape(n, blocks)
    if len(node.input) > 3 and node.input[3]:
        zp = _unpack_low_first(_to_array(inits[node.input[3]]).reshape(n, -1))[:, :blocks]
    else:
        zp = np.full((n, blocks), 8, np.uint8)
    codes = codes.reshape(n, blocks, block).astype(np.float32)
    w = (codes - zp[:, :, None].astype(np.float32)) * scales[:, :, None]
    return w.reshape(n, blocks * block)[:, :k]


# ------------------------------------------------------------------------------------- reports


def _set_report_meta(model, **values) -> None:
    meta = {p.key: p for p in model.metadata_props}
    current = json.loads(meta[REPORT_KEY].value) if REPORT_KEY in meta else {}
    current.update(values)
    if REPORT_KEY in meta:
        meta[REPORT_KEY].value = json.dumps(current, sort_keys=True)
    else:
        p = model.metadata_props.add()
        p.key, p.value = REPORT_KEY, json.dumps(current, sort_keys=True)


def int4_report(model) -> WeightQuant | None:
    """What the graph holds in 4 bits (None when no MatMulNBits): counted from the graph itself,
    with how the codes were made (round to nearest / AWQ) from the metadata the passes left."""
    nodes = nbits_nodes(model)
    if not nodes:
        return None
    inits = _initializers(model)
    info = int4_report_meta(model)
    before = after = 0
    for node in nodes:
        before += int(_attr(node, "K")) * int(_attr(node, "N")) * 4
        after += sum(_nbytes(inits[name]) for name in node.input[1:] if name in inits)
    blocks = Counter(int(_attr(n, "block_size")) for n in nodes)
    levels = Counter(int(_attr(n, "accuracy_level", 0)) for n in nodes)
    awq = int(info.get("awq_layers", 0))
    method = "awq" if awq == len(nodes) else ("awq+rtn" if awq else "rtn")
    return WeightQuant(
        method=method, bits=BITS, block_size=blocks.most_common(1)[0][0],
        symmetric=all(len(n.input) < 4 or not n.input[3] for n in nodes),
        accuracy_level=levels.most_common(1)[0][0], converted=len(nodes), awq_layers=awq,
        kept_float=[n.name for n in float_matmuls(model)], bytes_before=before, bytes_after=after,
        embeddings=int(info.get("embeddings", 0)),
    )


def _nbytes(tensor) -> int:
    if tensor.raw_data:
        return len(tensor.raw_data)
    return int(_to_array(tensor).nbytes)


def describe(report: WeightQuant | None) -> str:
    return "no 4-bit weights" if report is None else report.summary()


# -------------------------------------------------------------------- round to nearest (ORT)


def quantize_matmul_nbits(model: "onnx.ModelProto", *, block_size: int = 128, symmetric: bool = True, accuracy_level: int = 4,
                          keep_float: Callable[["onnx.NodeProto"], bool] | None = None, bits: int = BITS,
                          inplace: bool = False) -> "onnx.ModelProto":
    """Every MatMul with a constant 2-D weight (and every Gemm, rewritten as MatMul + Add first)
    -> MatMulNBits with 4-bit weights, round to nearest per block of `block_size` values along K,
    by ONNX Runtime's own quantizer. `keep_float(node)` True leaves a node float (embeddings are
    Gathers and stay float anyway; the LM head is a MatMul: keep it with a name pattern).
    `inplace` saves a copy of a large model. MatMulNBits already there (an AWQ import) are left as
    they are. What was converted: `int4_report(result)` (also logged)."""
    check_settings(block_size, bits, accuracy_level)
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if not inplace:
        model = _copy(model)
    _name_nodes(model)
    gemm_to_matmul(model)
    candidates = float_matmuls(model)
    kept = [n.name for n in candidates if keep_float is not None and keep_float(n)]
    inits = _initializers(model)
    odd = [n.name for n in candidates if inits[n.input[1]].data_type != onnx.TensorProto.FLOAT and n.name not in kept]
    if odd:  # the quantizer would write float scales next to 16-bit activations
        raise CompileError(f"int4: {len(odd)} MatMul weight(s) are not float32 (e.g. {odd[0]}): quantize the float32 export")
    todo = [n.name for n in candidates if n.name not in set(kept)]
    if not todo:
        raise CompileError(f"int4: no MatMul with a constant float weight to quantize ({len(candidates)} found, {len(kept)} kept float)")
    # The quantizer logs a line per node at INFO on its own handler: thousands for an LLM.
    ort_log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = ort_log.level
    ort_log.setLevel(logging.WARNING)
    try:
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=symmetric,
                                         accuracy_level=accuracy_level or None, nodes_to_exclude=kept,
                                         op_types_to_quantize=("MatMul",))
        quantizer.process()
    except Exception as exc:
        raise CompileError(f"int4: ONNX Runtime's MatMulNBits quantizer failed: {type(exc).__name__}: {str(exc)[:300]}") from exc
    finally:
        ort_log.setLevel(level)
    out = quantizer.model.model
    _dedupe_initializers(out)
    report = int4_report(out)
    log.info("int4 (round to nearest): %s", describe(report))
    return out


def _copy(model):
    import onnx

    clone = onnx.ModelProto()
    clone.CopyFrom(model)
    return clone


# ---------------------------------------------------------------------------------- AWQ import


def _nbits_block(group_size: int, k: int) -> int:
    """The MatMulNBits block for an AWQ group: the largest power of two from 16 to 256 that
    divides the group (each block then lies inside one group, so its scale is the group's)."""
    for block in sorted(BLOCK_SIZES, reverse=True):
        if group_size % block == 0 and k % block == 0:
            return block
    raise CompileError(f"AWQ group size {group_size} (K {k}) has no power-of-two divisor from 16 to 256: MatMulNBits cannot hold it")


def _pack_low_first(values: np.ndarray) -> np.ndarray:
    """uint8 codes [..., L] -> bytes [..., ceil(L/2)], even index in the low nibble."""
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros(values.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)


def _unpack_low_first(packed: np.ndarray) -> np.ndarray:
    """The inverse of _pack_low_first: bytes [..., L] -> uint8 codes [..., 2L]."""
    codes = np.empty(packed.shape[:-1] + (packed.shape[-1] * 2,), np.uint8)
    codes[..., 0::2], codes[..., 1::2] = packed & 0x0F, packed >> 4
    return codes


def awq_to_matmul_nbits(layer: AwqLinear) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(B, scales, zero_points, block) of a MatMulNBits computing exactly layer.dequantize()."""
    n, k = layer.out_features, layer.in_features
    block = _nbits_block(layer.group_size, k)
    repeat = layer.group_size // block
    blocks = k // block
    packed = _pack_low_first(layer.codes()).reshape(n, blocks, block // 2)
    scales = np.repeat(layer.group_scales(), repeat, axis=1)
    zeros = _pack_low_first(np.repeat(layer.zeros(), repeat, axis=1))
    return np.ascontiguousarray(packed), np.ascontiguousarray(scales), np.ascontiguousarray(zeros), block


def import_awq(model: "onnx.ModelProto", awq: dict[str, AwqLinear], *, accuracy_level: int = 4, inplace: bool = False,
               require_match: bool = True) -> "onnx.ModelProto":
    """Replace each MatMul (or Gemm: rewritten as MatMul + Add first, the bias kept) whose
    constant weight equals an AWQ layer's dequantized weight by a MatMulNBits holding that
    layer's own codes, scales and zero points (no re-quantization), checked to dequantize to
    exactly the same float32 weight. Matching is by the weight's exact values, so initializer
    names do not matter. AWQ layers with no MatMul in this graph are logged; none at all is an
    error unless `require_match` is False (a graph of the model the checkpoint left float, e.g. a
    vision tower). `int4_report(result)` says what was imported."""
    check_settings(128, BITS, accuracy_level)
    if not awq:
        raise CompileError("import_awq: no AWQ layers given")
    from onnx import helper, numpy_helper

    if not inplace:
        model = _copy(model)
    _name_nodes(model)
    gemm_to_matmul(model)
    by_hash: dict[str, list[str]] = {}
    shapes = set()
    for name, layer in awq.items():
        by_hash.setdefault(layer.weight_hash, []).append(name)
        shapes.add((layer.in_features, layer.out_features))
    inits = _initializers(model)
    matched: dict[str, str] = {}  # awq layer -> node
    replaced: dict[str, object] = {}  # node name -> new node
    wrong_dtype = []
    for node in float_matmuls(model):
        t = inits[node.input[1]]
        if tuple(t.dims) not in shapes:
            continue
        if t.data_type != 1:
            wrong_dtype.append(node.name)
            continue
        w_t = _to_array(t).T  # [N, K], nn.Linear's orientation
        names = by_hash.get(exact_hash(w_t))
        if not names:
            continue
        layer_name = next((n for n in names if n not in matched), names[0])
        layer = awq[layer_name]
        if not np.array_equal(layer.dequantize(), w_t):  # a hash collision would be a miracle; be sure anyway
            continue
        b, scales, zeros, block = awq_to_matmul_nbits(layer)
        base = f"{node.name}_awq"
        new_inits = [numpy_helper.from_array(b, f"{base}.B"), numpy_helper.from_array(scales, f"{base}.scales"),
                     numpy_helper.from_array(zeros, f"{base}.zero_points")]
        kwargs = {"accuracy_level": accuracy_level} if accuracy_level else {}
        new = helper.make_node("MatMulNBits", [node.input[0], *(i.name for i in new_inits)], list(node.output), name=f"{node.name}_Q4",
                               domain=MS_DOMAIN, K=layer.in_features, N=layer.out_features, bits=BITS, block_size=block, **kwargs)
        model.graph.initializer.extend(new_inits)
        for i in new_inits:
            inits[i.name] = i
        check = dequantize_matmul_nbits(model, new)
        if not np.array_equal(check, w_t):
            raise CompileError(f"import_awq: {layer_name}: the repacked 4-bit weight differs from AWQ's (max |d| "
                               f"{np.abs(check - w_t).max():.3g}); a packing bug, please report it")
        matched[layer_name] = node.name
        replaced[node.name] = new
    unmatched = [n for n in awq if n not in matched]
    if not matched:
        hint = f"; MatMul(s) of matching shape are not float32 (e.g. {wrong_dtype[0]}): import into the float32 export" if wrong_dtype else ""
        message = (f"import_awq: none of the {len(awq)} AWQ layers matched a MatMul weight of this graph: the checkpoint does not "
                   f"belong to this model (or the graph was not exported from `dequantized_state_dict`){hint}; unmatched: "
                   f"{', '.join(unmatched[:8])}{' ...' if len(unmatched) > 8 else ''}")
        if require_match:
            raise CompileError(message)
        log.info("%s", message)
        return model
    nodes = [replaced.get(n.name, n) for n in model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _drop_unused_initializers(model)
    _ensure_ms_opset(model)
    previous = int4_report_meta(model).get("awq_layers", 0)
    _set_report_meta(model, awq_layers=previous + len(matched), awq_unmatched=unmatched, awq_matched=sorted(matched))
    if unmatched:
        log.warning("import_awq: %d of %d AWQ layers have no MatMul in this graph: %s", len(unmatched), len(awq),
                    ", ".join(unmatched[:8]) + (" ..." if len(unmatched) > 8 else ""))
    log.info("int4 (AWQ import): %s", describe(int4_report(model)))
    return model


def int4_report_meta(model) -> dict:
    meta = {p.key: p.value for p in model.metadata_props}
    return json.loads(meta.get(REPORT_KEY, "{}"))


def awq_unmatched(model) -> list[str]:
    """AWQ layers `import_awq` found no MatMul for in this graph."""
    return list(int4_report_meta(model).get("awq_unmatched", []))


def awq_matched(model) -> list[str]:
    """AWQ layers `import_awq` put into this graph."""
    return list(int4_report_meta(model).get("awq_matched", []))


def _ensure_ms_opset(model) -> None:
    from onnx import helper

    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


# ------------------------------------------------------------------------- embedding tables


EMBEDDING_MIN_ROWS = 256  # a token (or position) embedding table: smaller constant tables stay float


def embedding_gathers(model) -> list:
    """Gathers along axis 0 over a constant float32 2-D table of at least EMBEDDING_MIN_ROWS rows
    (token embeddings; a language model's largest single weight)."""
    import onnx

    inits = _initializers(model)
    out = []
    for node in model.graph.node:
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or node.input[0] not in inits:
            continue
        table = inits[node.input[0]]
        if (len(table.dims) == 2 and table.dims[0] >= EMBEDDING_MIN_ROWS and table.data_type == onnx.TensorProto.FLOAT
                and int(_attr(node, "axis", 0)) == 0):
            out.append(node)
    return out


def quantize_embedding_table(table: np.ndarray, block_size: int, symmetric: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """[rows, D] float -> (codes uint8 [rows, D/2], two a byte, low nibble first; scales float32
    [rows, ceil(D/block)]; zero points uint8 [rows, ceil(blocks/2)] packed the same way, or None
    for symmetric, where the zero point is 8). Round to nearest per block of `block_size` along D."""
    rows, d = table.shape
    if d % 2:
        raise CompileError(f"int4: an embedding of width {d} cannot be packed two values a byte")
    blocks = -(-d // block_size)
    padded = np.zeros((rows, blocks * block_size), np.float32)
    padded[:, :d] = table
    x = padded.reshape(rows, blocks, block_size)
    if symmetric:
        amax = np.abs(x).max(axis=2)
        scales = (amax / 7.0).astype(np.float32)
        zero = np.full((rows, blocks), 8, np.int32)
    else:
        lo, hi = np.minimum(x.min(axis=2), 0.0), np.maximum(x.max(axis=2), 0.0)
        scales = ((hi - lo) / 15.0).astype(np.float32)
        zero = np.clip(np.round(-lo / np.where(scales == 0, 1.0, scales)), 0, 15).astype(np.int32)
    safe = np.where(scales == 0, 1.0, scales)[:, :, None]
    codes = np.clip(np.round(x / safe) + zero[:, :, None], 0, 15).astype(np.uint8).reshape(rows, -1)[:, :d]
    packed = _pack_low_first(codes)
    if symmetric:
        return packed, scales, None
    return packed, scales, _pack_low_first(zero.astype(np.uint8))


def dequantize_embedding_table(packed: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, block_size: int) -> np.ndarray:
    """The float table GatherBlockQuantized reads from the codes (the check of the packing)."""
    rows, half = packed.shape
    codes = _unpack_low_first(packed).astype(np.int32)
    blocks = scales.shape[1]
    if zero_points is None:
        zero = np.full((rows, blocks), 8, np.int32)
    else:
        zero = _unpack_low_first(zero_points).astype(np.int32)[:, :blocks]
    k = np.arange(half * 2) // block_size
    return ((codes - zero[:, k]) * scales[:, k]).astype(np.float32)


def quantize_embeddings(model, *, block_size: int = 128, symmetric: bool = True) -> int:
    """Every embedding Gather (`embedding_gathers`) -> ONNX Runtime's GatherBlockQuantized with
    4-bit codes in uint8 (two a byte; `bits` = 4), round to nearest per block along the row. The
    table is the largest weight a language model keeps float (151,936 x 2,048 in Qwen-VL: 1.2 GB
    in FP32), so without this a "4-bit" VLM is 4-bit in its MatMuls only. uint8 codes keep the
    graph at its opset (ONNX Runtime's own Gather quantizer writes int4 tensors, which force opset
    21 and break reductions that take `axes` as an attribute). In place; returns how many."""
    from onnx import helper, numpy_helper

    check_settings(block_size)
    inits = _initializers(model)
    done = 0
    for node in embedding_gathers(model):
        table = _to_array(inits[node.input[0]])
        packed, scales, zp = quantize_embedding_table(table, block_size, symmetric)
        base = node.input[0]
        names = [f"{base}_q4", f"{base}_scales"] + ([f"{base}_zp"] if zp is not None else [])
        for name, value in zip(names, [packed, scales] + ([zp] if zp is not None else [])):
            model.graph.initializer.append(numpy_helper.from_array(value, name))
        inputs = [names[0], node.input[1], names[1]] + names[2:]
        new = helper.make_node("GatherBlockQuantized", inputs, list(node.output), name=node.name or f"{base}_gather_q4", domain=MS_DOMAIN,
                               gather_axis=0, quantize_axis=1, block_size=block_size, bits=4)
        index = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        model.graph.node.insert(index, new)
        done += 1
    if done:
        _ensure_ms_opset(model)
        _drop_unused_initializers(model)
        _set_report_meta(model, embeddings=done)
    return done


# ----------------------------------------------------------------------------------- file I/O


# Past this a graph keeps its weights in a file beside it (protobuf refuses messages over 2 GiB).
EXTERNAL_DATA_BYTES = 1_800_000_000


def save_model(model, path: str | Path) -> Path:
    """Save, with the weights in `weights_file(path)` past protobuf's 2 GiB limit."""
    import onnx

    from .export import save_with_weights_file

    path = Path(path)
    if model.ByteSize() > EXTERNAL_DATA_BYTES:
        save_with_weights_file(model, path)
    else:
        onnx.save_model(model, str(path))
    return path


# ------------------------------------------------------------------ compile: one stage's graphs


def awq_checkpoint_of(stage, config_path: Path) -> Path | None:
    """The stage's source folder when it is an AutoAWQ checkpoint (local, or a hub id already
    downloaded by the family), else None."""
    from .models.base import fetch_hub_snapshot, resolve_source

    source = resolve_source(stage.source, config_path)
    if source.kind == "random":
        return None
    directory = Path(fetch_hub_snapshot(source.value) if source.kind == "hub" else source.value)
    return directory if is_awq_checkpoint(directory) else None


_AWQ_CACHE: dict[str, dict[str, AwqLinear]] = {}


def _awq_layers(directory: Path) -> dict[str, AwqLinear]:
    """read_awq_checkpoint once per compile (a stage's graphs share it, and its weight hashes)."""
    key = checkpoint_fingerprint(directory)
    if key not in _AWQ_CACHE:
        _AWQ_CACHE.clear()
        _AWQ_CACHE[key] = read_awq_checkpoint(directory)
    return _AWQ_CACHE[key]


@dataclass
class Int4Graph:
    path: Path  # the ONNX graph with MatMulNBits (or the float graph, when nothing was converted)
    report: WeightQuant | None
    awq_matched: list[str]  # AWQ layers this graph holds


def build_int4_onnx(job, dst: Path, awq_dir: Path | None, embeddings: bool = False) -> Int4Graph:
    """One graph of a `precision = "int4"` stage as an ONNX graph with MatMulNBits: the AutoAWQ
    source's own ints where its layers are found (and round to nearest for the rest when
    `awq_rest = "rtn"`), else round to nearest everywhere; `[stages.int4]` settings.
    `awq_dir`: the stage's AutoAWQ checkpoint (awq_checkpoint_of), or None.
    `embeddings`: token-embedding Gathers to GatherBlockQuantized too (ONNX Runtime targets)."""
    import onnx

    stage, settings = job.stage, job.stage.int4_settings
    role = f"{job.graph.decl.role} graph" if getattr(job, "graph", None) is not None else job.raw.name
    model = onnx.load(str(job.raw))
    keep = keep_float_names(settings.keep_float)
    matched: list[str] = []
    if awq_dir is not None:
        layers = _awq_layers(awq_dir)
        job.progress.step(f"{stage.name}: {role}: importing 4-bit weights from the AutoAWQ checkpoint ({len(layers)} layers, no re-quantization)")
        model = import_awq(model, layers, accuracy_level=settings.accuracy_level, inplace=True, require_match=False)
        matched = awq_matched(model)
        rest = [n for n in float_matmuls(model) if keep is None or not keep(n)]
        if settings.awq_rest == "rtn" and rest:
            model = quantize_matmul_nbits(model, block_size=settings.block_size, symmetric=settings.symmetric,
                                          accuracy_level=settings.accuracy_level, keep_float=keep, inplace=True)
    else:
        job.progress.step(f"{stage.name}: {role}: 4-bit weights, round to nearest (block {settings.block_size}, "
                          f"{'symmetric' if settings.symmetric else 'zero points'}, accuracy_level {settings.accuracy_level})")
        model = quantize_matmul_nbits(model, block_size=settings.block_size, symmetric=settings.symmetric,
                                      accuracy_level=settings.accuracy_level, keep_float=keep, inplace=True)
    if embeddings:
        quantize_embeddings(model, block_size=settings.block_size, symmetric=settings.symmetric)
    report = int4_report(model)
    if report is None:
        return Int4Graph(job.raw, None, [])
    job.progress.step(f"{stage.name}: {role}: {describe(report)}")
    save_model(model, dst)
    return Int4Graph(dst, report, matched)


def check_awq_stage(stage, config_path: Path, matched: set[str]) -> list[str]:
    """After every graph of an int4 stage is built: an AutoAWQ source none of whose layers was
    found in any graph does not belong to the model (error); layers found nowhere are listed
    (a note for the manifest)."""
    if stage.precision != "int4":
        return []
    awq_dir = awq_checkpoint_of(stage, config_path)
    if awq_dir is None:
        return []
    layers = _awq_layers(awq_dir)
    missing = [n for n in layers if n not in matched]
    if not matched:
        raise CompileError(f"stage {stage.name}: none of the {len(layers)} layers of the AutoAWQ checkpoint {awq_dir} matched a MatMul weight "
                           f"in the stage's graphs: the checkpoint does not belong to this model; unmatched: "
                           f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if missing:
        return [f"int4: {len(missing)} of {len(layers)} AutoAWQ layers are in no graph of this stage (left out): "
                f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}"]
    return [f"int4: all {len(layers)} AutoAWQ layers imported with their own 4-bit codes (no re-quantization)"]
