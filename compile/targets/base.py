"""What a compile target is: it describes this machine as a target (the manifest's
`TargetInfo`) and turns an exported FP32 ONNX graph into an engine file for one runtime
backend, at a precision it supports. The pipeline (compile/pipeline.py) then loads that file
through the backend (`runtime.backends.get_backend(target.backend)`) to measure its memory and
check its parity: a target never runs engines its own way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from streetcascade.config import CascadeConfig, StageConfig
from streetcascade.errors import CompileError
from streetcascade.manifest import AccuracyGate, BuildInfo, GraphIO, TargetInfo, WeightQuant
from streetcascade.progress import QUIET, Progress


@dataclass
class BuildJob:
    """One graph of one stage to build."""

    stage: StageConfig
    config: CascadeConfig
    config_path: Path
    io: GraphIO
    raw: Path  # the exported FP32 ONNX graph
    out: Path  # the engine file to write
    progress: Progress = field(default=QUIET)
    # The family's PyTorch module and reference, for targets that compile from PyTorch (AOTInductor).
    graph: Any = None


@dataclass
class BuiltGraph:
    path: Path
    accuracy_gate: AccuracyGate | None = None  # quantized with calibration data: the gate's figures
    build: BuildInfo | None = None  # engine-per-GPU targets: profiles, library figures, build time
    companions: list[Path] = field(default_factory=list)  # files the engine loads from beside it (OpenVINO's .bin)
    weight_quant: WeightQuant | None = None  # precision int4: what is 4-bit and how (the manifest's figures)
    awq_matched: list[str] = field(default_factory=list)  # AutoAWQ layers this graph holds (the stage checks them all)
    notes: list[str] = field(default_factory=list)  # for the operator: the stage's manifest notes (`info` prints them)


class Target(ABC):
    backend: ClassVar[str]  # the runtime.backends registry name its engines load with
    precisions: ClassVar[tuple[str, ...]]
    suffix: ClassVar[str]  # engine file suffix, e.g. ".onnx"
    # Builds from the exported ONNX graph (False: from the PyTorch module, e.g. AOTInductor).
    needs_onnx: ClassVar[bool] = True
    # Builds a VLM judge's graphs (stage kind "vlm": token-length axes, contrib ops in int4).
    judge_stages: ClassVar[bool] = False

    @abstractmethod
    def describe(self, config: CascadeConfig) -> TargetInfo:
        """This machine as a target for `config` (refuses what it cannot build for here)."""

    @abstractmethod
    def build(self, job: BuildJob) -> BuiltGraph: ...

    def check_precision(self, stage: StageConfig, device: str = "cpu") -> None:
        """Can this target build `stage` as configured (precision, attention export)?"""
        if stage.precision not in self.precisions:
            raise CompileError(
                f"stage {stage.name}: precision {stage.precision!r} is not available for the {self.backend} target "
                f"(have: {', '.join(self.precisions)})"
            )
        from ..models import get_family

        if get_family(stage.family).kind == "vlm" and not self.judge_stages:
            raise CompileError(f"stage {stage.name}: the {self.backend} target does not build VLM judge stages ({stage.family}); "
                               "use the onnxruntime or openvino target")
        if stage.attention == "fused":
            family = get_family(stage.family)
            # OCR graphs: ready-made ONNX (PP-OCR) or masked, causal attention (Florence-2); a VLM
            # judge: its vision tower's, where that is unmasked (the prefill is causal).
            if family.kind == "vlm" and not family.vision_attention_fusable:
                raise CompileError(f"stage {stage.name}: attention = \"fused\": {stage.family}'s vision attention is masked (windows) "
                                   "and its prefill causal; nothing to fuse")
            if family.kind not in ("classifier", "vlm"):
                raise CompileError(f"stage {stage.name}: attention = \"fused\" applies to classifier families (a ViT's attention) and "
                                   f"VLM judges' vision towers; {stage.family} is an {family.kind} family")
        if stage.attention == "fused" and self.backend != "onnxruntime":
            raise CompileError(f"stage {stage.name}: attention = \"fused\" exports ONNX Runtime's MultiHeadAttention contrib op, "
                               f"which the {self.backend} target does not take; use backend = \"onnxruntime\" or attention = \"plain\"")
