"""AutoAWQ checkpoints read without AutoAWQ or torch: the packed 4-bit layers (`read_awq_checkpoint`),
their exact dequantized float weights (`AwqLinear.dequantize`, `dequantized_state_dict`), and a
float copy transformers loads as an ordinary model (`write_dequantized_checkpoint`,
`float_checkpoint`). compile/int4.py imports the codes into MatMulNBits graphs.

AutoAWQ's layouts (casper-hansen/AutoAWQ: awq/modules/linear/gemm.py, gemv.py,
awq/utils/packing_utils.py), W = nn.Linear.weight [out, in], g = group size:
    GEMM  qweight int32 [in, out/8]: nibble j (bits 4j..4j+3) of qweight[i, c] holds output
          c*8 + AWQ_ORDER[j], AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]; qzeros int32 [in/g, out/8]
          packed the same way; scales fp16 [in/g, out].
    GEMV  qweight int32 [out, in/8], nibble j of qweight[o, c] holds input c*8 + j; qzeros
          int32 [out, Z] and scales fp16 [out, 8Z] padded (Z = AutoAWQ's calculate_zeros_width).
    W[o, i] = (q[o, i] - z[o, i // g]) * s[o, i // g]      (dequantize_gemm)
AutoAWQ itself computes that product in fp16 (rounded); `AwqLinear.dequantize` gives the exact
float32 product (what MatMulNBits computes with float32 scales), which rounds to AutoAWQ's fp16
values bit for bit (tests/compile/test_int4_autoawq.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from streetcascade.errors import CompileError
from streetcascade.machine import cache_dir

log = logging.getLogger(__name__)

BITS = 4
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)
AWQ_LAYOUTS = ("gemm", "gemv")


def exact_hash(w: np.ndarray) -> str:
    """A 2-D float32 array's exact values and shape, hashed (how import_awq finds a weight)."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    return hashlib.sha256(w.tobytes()).hexdigest() + f":{w.shape[0]}x{w.shape[1]}"


_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
              "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


class SafetensorsFile:
    """A .safetensors file read without torch (bf16 tensors come back as float32): an 8-byte
    little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, the bytes.
    Tensors are views of a read-only memory map until copied."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                size = int.from_bytes(f.read(8), "little")
                if size <= 0 or size > 100 * 2**20:
                    raise ValueError(f"header length {size}")
                header = json.loads(f.read(size))
            self._data = np.memmap(self.path, np.uint8, mode="r", offset=8 + size) if self.path.stat().st_size > 8 + size else np.zeros(0, np.uint8)
        except (OSError, ValueError) as exc:
            raise CompileError(f"{self.path}: not a readable safetensors file ({exc})") from None
        header.pop("__metadata__", None)
        self.header: dict[str, dict] = header

    def names(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def dtype(self, name: str) -> str:
        return self.header[name]["dtype"]

    def get(self, name: str) -> np.ndarray:
        entry = self.header[name]
        start, end = entry["data_offsets"]
        raw = self._data[start:end]
        dtype = entry["dtype"]
        if dtype == "BF16":
            if raw.size % 2:
                raise CompileError(f"{self.path}: tensor {name!r} has {raw.size} bytes, not whole bf16 values")
            arr = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif dtype in _ST_DTYPES:
            itemsize = np.dtype(_ST_DTYPES[dtype]).itemsize
            if raw.size % itemsize:
                raise CompileError(f"{self.path}: tensor {name!r} has {raw.size} bytes, not whole {dtype} values")
            arr = raw.view(_ST_DTYPES[dtype])
        else:
            raise CompileError(f"{self.path}: tensor {name!r} has dtype {dtype}, which is not read here")
        shape = tuple(entry["shape"])
        if arr.size != int(np.prod(shape)):
            raise CompileError(f"{self.path}: tensor {name!r}: {arr.size} values for shape {list(shape)} (truncated or corrupt file)")
        return arr.reshape(shape)


def _open_tensors(directory: Path) -> dict[str, SafetensorsFile]:
    """Tensor name -> the file holding it, over every *.safetensors in the folder (sharded or not)."""
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise CompileError(f"{directory}: no *.safetensors files (an AutoAWQ checkpoint saved with safetensors is needed)")
    where: dict[str, SafetensorsFile] = {}
    for path in files:
        st = SafetensorsFile(path)
        for name in st.names():
            if name in where:
                raise CompileError(f"{directory}: tensor {name!r} is in both {where[name].path.name} and {path.name}")
            where[name] = st
    return where


@dataclass(frozen=True)
class AwqConfig:
    bits: int
    group_size: int  # -1: one group over the whole input (per output channel)
    layout: str  # "gemm" | "gemv"
    zero_point: bool
    modules_to_not_convert: tuple[str, ...] = ()
    source: str = ""  # the file it was read from


def read_awq_config(directory: str | Path) -> AwqConfig:
    """The checkpoint's AWQ settings: config.json's `quantization_config` (quant_method "awq", as
    AutoAWQ's save_quantized and transformers write it) or AutoAWQ's older quant_config.json."""
    directory = Path(directory)
    found: dict | None = None
    source = ""
    cfg_path = directory / "config.json"
    if cfg_path.exists():
        cfg = _read_json(cfg_path)
        qc = cfg.get("quantization_config") or (cfg.get("text_config") or {}).get("quantization_config")
        if isinstance(qc, dict) and str(qc.get("quant_method", "")).lower() == "awq":
            found, source = {"bits": qc.get("bits"), "group_size": qc.get("group_size"), "version": qc.get("version", "gemm"),
                             "zero_point": qc.get("zero_point", True), "modules": qc.get("modules_to_not_convert")}, "config.json quantization_config"
    old = directory / "quant_config.json"
    if found is None and old.exists():
        qc = _read_json(old)
        found, source = {"bits": qc.get("w_bit"), "group_size": qc.get("q_group_size"), "version": qc.get("version", "gemm"),
                         "zero_point": qc.get("zero_point", True), "modules": qc.get("modules_to_not_convert")}, "quant_config.json"
    if found is None:
        raise CompileError(f"{directory}: not an AutoAWQ checkpoint: no quantization_config with quant_method \"awq\" in config.json "
                           "and no quant_config.json")
    where = f"{directory / source.split()[0]}"
    try:
        bits, group = int(found["bits"]), int(found["group_size"])
    except (TypeError, ValueError):
        raise CompileError(f"{where}: AWQ bits {found['bits']!r} / group_size {found['group_size']!r} are not integers") from None
    if bits != BITS:
        raise CompileError(f"{where}: AWQ bits {bits}: only 4-bit AWQ checkpoints are imported")
    if group != -1 and group < 1:
        raise CompileError(f"{where}: AWQ group_size {group}")
    layout = str(found["version"]).lower()
    if layout not in AWQ_LAYOUTS:
        raise CompileError(f"{where}: AWQ version {found['version']!r}: the {'/'.join(AWQ_LAYOUTS).upper()} packing is read here "
                           "(re-save the checkpoint with version \"GEMM\")")
    if not found["zero_point"]:
        raise CompileError(f"{where}: AWQ zero_point = false is not supported (AutoAWQ packs zero points in every layout it saves)")
    return AwqConfig(bits, group, layout, True, tuple(found["modules"] or ()), source)


def is_awq_checkpoint(directory: str | Path) -> bool:
    """True when the folder holds an AutoAWQ checkpoint (by its config, not by guessing): an
    unreadable config.json is the family's loader's to report, not a sign of AWQ."""
    directory = Path(directory)
    if not directory.is_dir():
        return False
    if (directory / "quant_config.json").exists():
        return True
    try:
        cfg = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(cfg, dict):
        return False
    qc = cfg.get("quantization_config") or (cfg.get("text_config") or {}).get("quantization_config")
    return isinstance(qc, dict) and str(qc.get("quant_method", "")).lower() == "awq"


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CompileError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise CompileError(f"{path}: expected a JSON object")
    return value


def _gemv_zeros_width(in_features: int, group_size: int, pack: int = 8) -> int:
    """AutoAWQ's calculate_zeros_width (awq/modules/linear/gemv.py)."""
    multiplier = {32: 4, 64: 2}.get(group_size, 1 if group_size >= 128 else 0)
    if not multiplier:
        raise CompileError(f"AWQ GEMV layout with group_size {group_size}: AutoAWQ packs GEMV only for group sizes 32, 64 or >= 128")
    base = -(-(in_features // group_size) // pack)
    return -(-base // multiplier) * multiplier


def _nibbles(packed: np.ndarray) -> np.ndarray:
    """int32 [..., C] -> uint8 [..., C, 8]: nibble j = bits 4j..4j+3."""
    u = packed.view(np.uint32)
    return ((u[..., None] >> (4 * np.arange(8, dtype=np.uint32))) & 0xF).astype(np.uint8)


@dataclass(frozen=True, eq=False)
class AwqLinear:
    """One AutoAWQ-quantized Linear: its packed ints as the checkpoint stores them."""

    name: str  # module path, e.g. "model.layers.0.self_attn.q_proj"
    qweight: np.ndarray
    qzeros: np.ndarray
    scales: np.ndarray
    group_size: int  # resolved: a per-channel checkpoint's group is in_features
    layout: str  # "gemm" | "gemv"
    in_features: int
    out_features: int
    bits: int = BITS

    def codes(self) -> np.ndarray:
        """uint8 [out, in], 0..15."""
        n = _nibbles(self.qweight)
        if self.layout == "gemm":  # [in, out/8, 8] -> [in, out] in AutoAWQ's column order -> [out, in]
            return np.ascontiguousarray(n[:, :, AWQ_REVERSE_ORDER].reshape(self.in_features, self.out_features).T)
        return n.reshape(self.out_features, self.in_features)

    def zeros(self) -> np.ndarray:
        """uint8 [out, in/group]."""
        groups = self.in_features // self.group_size
        n = _nibbles(self.qzeros)
        if self.layout == "gemm":
            return np.ascontiguousarray(n[:, :, AWQ_REVERSE_ORDER].reshape(groups, self.out_features).T)
        return np.ascontiguousarray(n.reshape(self.out_features, -1)[:, :groups])

    def group_scales(self) -> np.ndarray:
        """float32 [out, in/group] (exact: from fp16)."""
        groups = self.in_features // self.group_size
        s = self.scales.astype(np.float32)
        return np.ascontiguousarray(s.T if self.layout == "gemm" else s[:, :groups])

    def dequantize(self) -> np.ndarray:
        """float32 [out, in], like nn.Linear.weight: (q - z) * s, exact in float32."""
        g = self.group_size
        q = self.codes().astype(np.float32).reshape(self.out_features, -1, g)
        z = self.zeros().astype(np.float32)[:, :, None]
        return ((q - z) * self.group_scales()[:, :, None]).reshape(self.out_features, self.in_features)

    @cached_property
    def weight_hash(self) -> str:
        """Hash of the exact dequantized weight (computed once: a stage's graphs all look it up)."""
        return exact_hash(self.dequantize())


def _check_shape(directory, name: str, what: str, found, expected) -> None:
    if tuple(found) != tuple(expected):
        raise CompileError(f"{directory}: AWQ layer {name}: {what} has shape {list(found)}, expected {list(expected)} "
                           "(corrupt checkpoint, or not AutoAWQ's packing)")


def read_awq_checkpoint(directory: str | Path) -> dict[str, AwqLinear]:
    """Every AutoAWQ-quantized Linear of the checkpoint (module path -> packed ints), shapes and
    dtypes checked against the layout in its config."""
    directory = Path(directory)
    config = read_awq_config(directory)
    tensors = _open_tensors(directory)
    layers: dict[str, AwqLinear] = {}
    prefixes = sorted({n.rsplit(".", 1)[0] for n in tensors if n.endswith((".qweight", ".qzeros", ".scales")) and "." in n})
    for prefix in prefixes:
        parts = {p: tensors.get(f"{prefix}.{p}") for p in ("qweight", "qzeros", "scales")}
        if parts["qweight"] is None:
            if parts["qzeros"] is not None:  # a plain `.scales` alone (some norms) is no AWQ layer
                raise CompileError(f"{directory}: AWQ layer {prefix}: qzeros without qweight")
            continue
        missing = [p for p, v in parts.items() if v is None]
        if missing:
            raise CompileError(f"{directory}: AWQ layer {prefix}: qweight without {' and '.join(missing)} (incomplete checkpoint)")
        for part, wanted in (("qweight", ("I32",)), ("qzeros", ("I32",)), ("scales", ("F16", "BF16", "F32"))):
            dt = parts[part].dtype(f"{prefix}.{part}")
            if dt not in wanted:
                raise CompileError(f"{directory}: AWQ layer {prefix}: {part} is {dt}, expected {' or '.join(wanted)}")
        qweight = parts["qweight"].get(f"{prefix}.qweight")
        qzeros = parts["qzeros"].get(f"{prefix}.qzeros")
        scales = parts["scales"].get(f"{prefix}.scales")
        if qweight.ndim != 2:
            raise CompileError(f"{directory}: AWQ layer {prefix}: qweight has shape {list(qweight.shape)}, expected 2 dimensions")
        if config.layout == "gemm":
            in_f, out_f = qweight.shape[0], qweight.shape[1] * 8
        else:
            out_f, in_f = qweight.shape[0], qweight.shape[1] * 8
        group = in_f if config.group_size == -1 else config.group_size
        if in_f % group:
            raise CompileError(f"{directory}: AWQ layer {prefix}: {in_f} inputs are not a multiple of group_size {group}")
        if config.layout == "gemm":
            _check_shape(directory, prefix, "qzeros", qzeros.shape, (in_f // group, out_f // 8))
            _check_shape(directory, prefix, "scales", scales.shape, (in_f // group, out_f))
        else:
            width = _gemv_zeros_width(in_f, group)
            _check_shape(directory, prefix, "qzeros", qzeros.shape, (out_f, width))
            _check_shape(directory, prefix, "scales", scales.shape, (out_f, width * 8))
        if not np.all(np.isfinite(scales)):
            raise CompileError(f"{directory}: AWQ layer {prefix}: scales hold non-finite values")
        layers[prefix] = AwqLinear(prefix, qweight, qzeros, scales, group, config.layout, in_f, out_f)
    if not layers:
        raise CompileError(f"{directory}: no AWQ layers (no *.qweight tensors) in {', '.join(sorted({t.path.name for t in tensors.values()}))}")
    return layers


def _dequantized_items(directory: Path, dtype=np.float32):
    """(name, float array) for the whole checkpoint, one tensor at a time (see
    `dequantized_state_dict`)."""
    layers = read_awq_checkpoint(directory)
    tensors = _open_tensors(directory)
    awq_parts = {f"{p}.{part}" for p in layers for part in ("qweight", "qzeros", "scales")}
    for prefix in layers:
        if f"{prefix}.weight" in tensors:
            raise CompileError(f"{directory}: {prefix} has both a float weight and AWQ qweight")
    for name, st in tensors.items():
        if name in awq_parts:
            continue
        value = st.get(name)
        if dtype is not None and np.issubdtype(value.dtype, np.floating):
            value = value.astype(dtype)
        yield name, np.array(value)  # a copy: no view of the memory map
    for prefix, layer in layers.items():
        yield f"{prefix}.weight", layer.dequantize()


def dequantized_state_dict(directory: str | Path, dtype=np.float32) -> dict[str, np.ndarray]:
    """The checkpoint as a float state dict: each AWQ layer's qweight/qzeros/scales become
    `<module>.weight` (its exact dequantized float32 weight); every other tensor (embeddings,
    norms, biases, an unquantized head or vision tower) passes through, floats cast to `dtype`
    (None: as stored; bf16 comes back as float32). `model.load_state_dict({k:
    torch.from_numpy(v)})` on a float model of the same config then loads it. All in memory:
    `write_dequantized_checkpoint` streams a large checkpoint to disk instead."""
    return dict(_dequantized_items(Path(directory), dtype))


SHARD_BYTES = 2 * 2**30


def write_dequantized_checkpoint(directory: str | Path, out_dir: str | Path, shard_bytes: int = SHARD_BYTES) -> Path:
    """A float32 copy of an AutoAWQ checkpoint that transformers' `from_pretrained` loads as an
    ordinary float model (config.json without its quantization_config, weights from
    `dequantized_state_dict` in safetensors shards of at most `shard_bytes` with the usual
    index, so memory stays near one shard; tokenizer and processor files copied): what a family
    exports, and what `import_awq` then matches the graph's weights against. Float32 is 8x the
    AWQ file on disk (a 7B model: ~30 GB)."""
    from safetensors.numpy import save_file

    directory, out_dir = Path(directory), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "dequantized_from": "autoawq"}
    shards: list[dict[str, np.ndarray]] = [{}]
    written: list[tuple[str, list[str]]] = []
    size, total = 0, 0

    def flush(final: bool) -> None:
        nonlocal size
        if shards[-1]:
            name = "model.safetensors" if final and not written else f"model-{len(written) + 1:05d}.safetensors"
            save_file(shards[-1], str(out_dir / name), metadata=meta)
            written.append((name, list(shards[-1])))
        shards[-1], size = {}, 0

    for name, value in _dequantized_items(directory):
        if size and size + value.nbytes > shard_bytes:
            flush(False)
        shards[-1][name] = value
        size += value.nbytes
        total += value.nbytes
    flush(True)
    if len(written) > 1 or written[0][0] != "model.safetensors":
        index = {"metadata": {"total_size": total}, "weight_map": {t: f for f, names in written for t in names}}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    skip = {"config.json", "quant_config.json", "model.safetensors.index.json"}
    for path in directory.iterdir():
        if path.is_file() and path.suffix != ".safetensors" and path.name not in skip and path.suffix not in (".bin", ".pt", ".pth"):
            shutil.copy2(path, out_dir / path.name)
    cfg_path = directory / "config.json"
    if cfg_path.exists():
        cfg = _read_json(cfg_path)
        cfg.pop("quantization_config", None)
        if isinstance(cfg.get("text_config"), dict):
            cfg["text_config"].pop("quantization_config", None)
        # The dequantized weights are float32: a "float16" torch_dtype would round them off the AWQ grid.
        for key in ("torch_dtype", "dtype"):
            if key in cfg:
                cfg[key] = "float32"
        (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    return out_dir


def float_checkpoint(directory: str | Path) -> Path:
    """The folder to load a checkpoint's float model from: the folder itself, or for an AutoAWQ
    checkpoint its dequantized float32 copy (`write_dequantized_checkpoint`), made once under
    ${STREETCASCADE_CACHE:-~/.cache/streetcascade}/awq-float/ (keyed by the files' names, sizes
    and times). transformers would otherwise need AutoAWQ's kernels to open it, and the graph
    must carry the exact dequantized weights for `import_awq` to find them."""
    directory = Path(directory)
    if not is_awq_checkpoint(directory):
        return directory
    dest = cache_dir() / "awq-float" / checkpoint_fingerprint(directory)
    if (dest / "config.json").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        log.info("dequantizing the AutoAWQ checkpoint %s into %s (float32, for export)", directory, dest)
        write_dequantized_checkpoint(directory, tmp)
        try:
            os.replace(tmp, dest)
        except OSError:
            if not (dest / "config.json").exists():  # not another compile that finished first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def checkpoint_fingerprint(directory: Path) -> str:
    """The folder and its files' names, sizes and modification times (not their contents: a
    checkpoint is many GB)."""
    h = hashlib.sha256(str(directory.resolve()).encode())
    for p in sorted(directory.iterdir()):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]
