"""The stage check on a GPU engine set (TensorRT, else ONNX Runtime CUDA, else AOTInductor, as
`compile-engines --target auto` picks): the tiny stage 1 against PyTorch eager on the GPU, and a
2x slower engine failing. Skipped without an NVIDIA GPU."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.latency, pytest.mark.gpu]


def test_gpu_stage1_within_the_recorded_ratio(gpu_set, check_set, parity_images):
    (verdict,) = check_set(gpu_set, parity_images)
    assert verdict.passed, verdict.describe()


def test_a_2x_slower_gpu_engine_fails(gpu_set, check_set, parity_images, twice_as_slow):
    (verdict,) = check_set(gpu_set, parity_images, wrap=twice_as_slow)
    assert not verdict.passed, verdict.describe()
