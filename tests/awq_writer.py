"""Write AutoAWQ checkpoints for tests: the packing loops of AutoAWQ's WQLinear_GEMM.from_linear
and WQLinear_GEMV.from_linear (casper-hansen/AutoAWQ, awq/modules/linear/gemm.py, gemv.py)
redone in numpy, so a checkpoint in AutoAWQ's exact layout can be made without AutoAWQ (which
needs a calibration run and is not a dependency). The reader under test (compile/int4.py) is
written independently from the unpacking side (awq/utils/packing_utils.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GEMM_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # order_map in WQLinear_GEMM.from_linear


@dataclass
class RandomAwqLayer:
    """The ints AutoAWQ's quantizer would hand to from_linear, in nn.Linear's orientation."""

    codes: np.ndarray  # int [out, in], 0..15
    zeros: np.ndarray  # int [out, in/g], 0..15
    scales: np.ndarray  # float16 [out, in/g]

    def dequantized(self) -> np.ndarray:
        g = self.codes.shape[1] // self.zeros.shape[1]
        return ((self.codes - np.repeat(self.zeros, g, axis=1)).astype(np.float32)
                * np.repeat(self.scales.astype(np.float32), g, axis=1))


def random_layer(rng: np.random.Generator, out_f: int, in_f: int, group: int, scale: float = 0.01) -> RandomAwqLayer:
    return RandomAwqLayer(
        codes=rng.integers(0, 16, (out_f, in_f)),
        zeros=rng.integers(0, 16, (out_f, in_f // group)),
        scales=(rng.uniform(0.3, 1.0, (out_f, in_f // group)) * scale).astype(np.float16),
    )


def _or_shift(columns: list[np.ndarray]) -> np.ndarray:
    acc = np.zeros(columns[0].shape, np.uint32)
    for i, col in enumerate(columns):
        acc |= col.astype(np.uint32) << np.uint32(i * 4)
    return acc.view(np.int32)


def pack_gemm(layer: RandomAwqLayer) -> dict[str, np.ndarray]:
    intweight = layer.codes.T  # [in, out], as from_linear's `intweight.t()`
    zeros = layer.zeros.T  # [in/g, out], as the quantizer's `zeros.t()`
    pack = 8
    qweight = np.stack([_or_shift([intweight[:, c * pack + GEMM_ORDER[i]] for i in range(pack)]) for c in range(intweight.shape[1] // pack)], axis=1)
    qzeros = np.stack([_or_shift([zeros[:, c * pack + GEMM_ORDER[i]] for i in range(pack)]) for c in range(zeros.shape[1] // pack)], axis=1)
    return {"qweight": qweight, "qzeros": qzeros, "scales": np.ascontiguousarray(layer.scales.T)}


def _zeros_width(in_f: int, group: int, pack: int = 8) -> int:
    mult = {32: 4, 64: 2}.get(group, 1)
    base = -(-(in_f // group) // pack)
    return -(-base // mult) * mult


def pack_gemv(layer: RandomAwqLayer) -> dict[str, np.ndarray]:
    out_f, in_f = layer.codes.shape
    group = in_f // layer.zeros.shape[1]
    width = _zeros_width(in_f, group)
    qweight = np.stack([_or_shift([layer.codes[:, c * 8 + i] for i in range(8)]) for c in range(in_f // 8)], axis=1)
    zcols = []
    for c in range(width):
        cols = [layer.zeros[:, c * 8 + i] if c * 8 + i < layer.zeros.shape[1] else np.zeros(out_f, np.int64) for i in range(8)]
        zcols.append(_or_shift(cols))
    scales = np.zeros((out_f, width * 8), np.float16)
    scales[:, : layer.scales.shape[1]] = layer.scales
    return {"qweight": qweight, "qzeros": np.stack(zcols, axis=1), "scales": scales}


def write_awq_checkpoint(float_dir: Path, out: Path, *, group: int = 128, version: str = "gemm", seed: int = 0,
                         skip: tuple[str, ...] = ("lm_head",), config_style: str = "transformers", inside: str = ".layers.") -> dict[str, RandomAwqLayer]:
    """An AutoAWQ checkpoint for the float checkpoint in `float_dir`: every 2-D `*.weight` of a
    Linear inside the transformer blocks (module path containing `inside`) replaced by random
    AWQ ints (packed in `version`'s layout), everything else stored in fp16 as AutoAWQ saves it;
    the quantization config in config.json (`config_style="transformers"`) or AutoAWQ's older
    quant_config.json; other files (a preprocessor config) copied. Returns the layers."""
    import shutil

    from safetensors.numpy import load_file, save_file

    rng = np.random.default_rng(seed)
    state = load_file(str(float_dir / "model.safetensors"))
    out.mkdir(parents=True, exist_ok=True)
    saved, layers = {}, {}
    for name, value in state.items():
        module = name[: -len(".weight")] if name.endswith(".weight") else ""
        if module and value.ndim == 2 and inside in module and not any(s in module for s in skip):
            out_f, in_f = value.shape
            layer = random_layer(rng, out_f, in_f, in_f if group == -1 else group)
            layers[module] = layer
            packed = pack_gemm(layer) if version == "gemm" else pack_gemv(layer)
            for part, arr in packed.items():
                saved[f"{module}.{part}"] = np.ascontiguousarray(arr)
        else:
            saved[name] = value.astype(np.float16) if np.issubdtype(value.dtype, np.floating) else value
    save_file(saved, str(out / "model.safetensors"), metadata={"format": "pt"})
    for path in float_dir.iterdir():
        if path.is_file() and path.suffix != ".safetensors" and path.name != "config.json":
            shutil.copy2(path, out / path.name)
    cfg = json.loads((float_dir / "config.json").read_text())
    cfg["torch_dtype"] = "float16"
    quant = {"quant_method": "awq", "zero_point": True, "group_size": group, "bits": 4, "version": version, "modules_to_not_convert": None}
    if config_style == "transformers":
        cfg["quantization_config"] = quant
    else:
        (out / "quant_config.json").write_text(json.dumps({"zero_point": True, "q_group_size": group, "w_bit": 4, "version": version.upper()}))
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return layers
