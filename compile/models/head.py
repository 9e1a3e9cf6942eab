"""The binary roadwork head over frozen backbone features: LayerNorm + Linear -> 1 logit.

Stored as a small safetensors file (`norm.weight`, `norm.bias`, `linear.weight`,
`linear.bias`) with metadata naming the feature size and pooling. `fit_logistic_head`
fits it from pooled features by L2-regularised logistic regression (Newton steps), with
the LayerNorm left as identity-affine so the fitted Linear sees normalised features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from streetcascade.errors import CompileError

POOLING = "cls+mean_patches"


class BinaryHead(nn.Module):
    def __init__(self, features: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(features, eps=eps)
        self.linear = nn.Linear(features, 1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(pooled))[:, 0]


def random_head(features: int, seed: int) -> BinaryHead:
    gen = torch.Generator().manual_seed(seed)
    head = BinaryHead(features)
    with torch.no_grad():
        head.linear.weight.normal_(0.0, 1.0 / features**0.5, generator=gen)
        head.linear.bias.zero_()
    return head.eval()


def save_head(head: BinaryHead, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    meta = {"features": str(head.linear.in_features), "pooling": POOLING, **(metadata or {})}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(path), metadata=meta)


def load_head(path: str | Path, features: int) -> BinaryHead:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CompileError(f"head {path}: file not found (fit one with `streetcascade fit-head`)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise CompileError(f"head {path}: not a readable safetensors file ({exc})") from None
    if meta.get("pooling", POOLING) != POOLING:
        raise CompileError(f"head {path}: pooling {meta.get('pooling')!r}, this family uses {POOLING!r}")
    head = BinaryHead(features)
    expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if found != expected:
        raise CompileError(f"head {path}: tensors {found} do not fit a backbone with {features} features (expected {expected})")
    head.load_state_dict(tensors)
    return head.eval()


def fit_logistic_head(features: np.ndarray, labels: np.ndarray, l2: float = 1.0, iterations: int = 50) -> tuple[BinaryHead, dict]:
    """Fit LayerNorm(identity affine) + Linear on pooled features; returns the head and fit stats."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if x.ndim != 2 or len(x) != len(y):
        raise CompileError(f"fit: features {x.shape} and labels {y.shape} do not line up")
    if len(np.unique(y)) < 2:
        raise CompileError("fit: need examples of both classes (roadwork and no_roadwork)")
    n, d = x.shape
    head = BinaryHead(d)
    eps = head.norm.eps
    z = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + eps)
    z1 = np.hstack([z, np.ones((n, 1))])
    w = np.zeros(d + 1)
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0  # no penalty on the bias
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(z1 @ w)))
        grad = z1.T @ (p - y) + reg * w
        hess = (z1 * (p * (1 - p))[:, None]).T @ z1 + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    p = 1.0 / (1.0 + np.exp(-(z1 @ w)))
    with torch.no_grad():
        head.linear.weight.copy_(torch.from_numpy(w[:-1]).float()[None, :])
        head.linear.bias.fill_(float(w[-1]))
    stats = {"n": n, "train_accuracy": float(((p > 0.5) == (y > 0.5)).mean()), "positives": int(y.sum())}
    return head.eval(), stats
