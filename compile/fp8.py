"""FP8 (e4m3) linear layers for stage 1 on GPUs with FP8 tensor cores (SM 8.9+: Ada, Hopper,
Blackwell), in a form `torch.export` keeps and AOTInductor compiles: one `torch._scaled_mm`
per linear layer, with the activation's scale computed in the graph.

The recipe (the usual dynamic FP8 inference recipe):
- weights quantized once, at build time, with one scale per output channel ("rowwise") on
  SM 9.0+, one per tensor ("tensorwise") on SM 8.9: PyTorch's row-wise scaled matmul needs
  Hopper's kernels, Ada's cuBLASLt path takes tensor-wise scales;
- activations quantized at run time from their own absolute maximum, per token (rowwise) or
  per tensor: no calibration set. The validation split gates the result (flips vs FP32, the
  same gate as INT8: compile/accuracy_gate.py);
- only the transformer blocks' linear layers (attention projections, MLP) and only where both
  sizes are multiples of 16 (FP8 GEMM kernels need it). The patch embedding, norms, softmax,
  residual adds and the head stay bf16 (rowwise FP8 GEMMs return bf16).

Why not torchao's float8 configs: torchao is not on the lent GPU machine (no package index
there), each release is built against one PyTorch, and its tensor subclasses must be unwrapped
before export. This uses one op that PyTorch 2.11 and 2.13 both export and lower, and that
PyTorch also runs on the CPU, so the module's structure and numerics are tested here.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from streetcascade.errors import CompileError

FP8_MAX = 448.0  # largest finite float8_e4m3fn
MIN_SM = (8, 9)
GRANULARITIES = ("rowwise", "tensorwise")


def sm_tuple(sm: str) -> tuple[int, int]:
    major, _, minor = str(sm).partition(".")
    return int(major), int(minor or 0)


def has_fp8(sm: str) -> bool:
    return sm_tuple(sm) >= MIN_SM


def granularity_for(sm: str) -> str:
    """Row-wise scales where PyTorch has the kernels (SM 9.0+), tensor-wise on SM 8.9."""
    if not has_fp8(sm):
        raise CompileError(f"SM {sm} has no FP8 tensor cores (need SM {MIN_SM[0]}.{MIN_SM[1]}+)")
    return "rowwise" if sm_tuple(sm) >= (9, 0) else "tensorwise"


def _scale(amax: torch.Tensor) -> torch.Tensor:
    return amax.float().clamp(min=1e-12) / FP8_MAX


def _quantize(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


class Float8Linear(nn.Module):
    """y = x W^T + b with W and x in float8_e4m3fn, scaled, accumulated in fp32, out in bf16."""

    def __init__(self, linear: nn.Linear, granularity: str):
        super().__init__()
        if granularity not in GRANULARITIES:
            raise CompileError(f"fp8 granularity {granularity!r}: use one of {', '.join(GRANULARITIES)}")
        self.granularity = granularity
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        amax = w.abs().amax(dim=1, keepdim=True) if granularity == "rowwise" else w.abs().amax()
        scale = _scale(amax)
        self.register_buffer("weight_fp8", _quantize(w, scale).contiguous())  # [out, in]
        # _scaled_mm takes the weight's scales as [1, out] (rowwise) or a scalar (tensorwise).
        self.register_buffer("weight_scale", scale.reshape(1, -1).contiguous() if granularity == "rowwise" else scale.reshape(()))
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        amax = x2.abs().amax(dim=-1, keepdim=True) if self.granularity == "rowwise" else x2.abs().amax()
        scale = _scale(amax)
        xq = _quantize(x2, scale).contiguous()
        y = torch._scaled_mm(xq, self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale, bias=self.bias, out_dtype=torch.bfloat16)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, {self.granularity}"


def eligible(linear: nn.Linear) -> bool:
    return linear.in_features % 16 == 0 and linear.out_features % 16 == 0


def blocks_of(module: nn.Module) -> nn.Module:
    """The transformer blocks of a classifier module: where FP8 goes (the DINOv3 wrapper's
    `backbone.model`, an HF classifier's `encoder`); the module itself otherwise."""
    backbone = getattr(module, "backbone", module)
    for name in ("model", "encoder"):
        inner = getattr(backbone, name, None)
        if isinstance(inner, nn.Module):
            return inner
    return backbone


def to_float8(module: nn.Module, granularity: str) -> tuple[nn.Module, list[str]]:
    """A bf16 copy of `module` whose transformer-block linear layers are Float8Linear; the
    original is left as it was. Returns (copy, names of the converted layers)."""
    converted = copy.deepcopy(module).to(torch.bfloat16).eval()
    blocks = blocks_of(converted)
    prefix = next(n for n, m in converted.named_modules() if m is blocks)
    names = []
    for name, child in list(blocks.named_modules()):
        for attr, leaf in list(child.named_children()):
            if isinstance(leaf, nn.Linear) and eligible(leaf):
                setattr(child, attr, Float8Linear(leaf, granularity))
                names.append(".".join(p for p in (prefix, name, attr) if p))
    if not names:
        raise CompileError("fp8: the module has no linear layer with sizes that are multiples of 16 in its transformer blocks")
    return converted, names
