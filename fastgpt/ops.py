"""The public op namespace: the ONE place that picks Triton / extension / reference.

Every op takes ``backend=None | "fused" | "reference"``; see fastgpt.backend
for the precedence. Signatures and dtype semantics are those of
fastgpt.reference, which documents what each op computes.
"""
from __future__ import annotations

from fastgpt import reference
from fastgpt.backend import kernels, resolve

__all__ = [
    "layer_norm",
    "add_layer_norm",
    "bias_gelu",
    "causal_attention",
    "bias_dropout_add",
    "fused_linear_cross_entropy",
]


def layer_norm(x, weight, bias=None, eps: float = 1e-5, *, backend=None):
    """LayerNorm over the last dim; y has x's dtype."""
    if resolve(backend, x.device.type) == "fused":
        return kernels().layer_norm(x, weight, bias, eps)
    return reference.layer_norm(x, weight, bias, eps)


def add_layer_norm(x, residual, weight, bias=None, eps: float = 1e-5, *, backend=None):
    """(y, h) with h = x + residual (residual's dtype) and y = layer_norm(h) (x's dtype)."""
    if resolve(backend, x.device.type) == "fused":
        return kernels().add_layer_norm(x, residual, weight, bias, eps)
    return reference.add_layer_norm(x, residual, weight, bias, eps)


def bias_gelu(x, bias=None, approximate: str = "tanh", *, backend=None):
    """gelu(x + bias), tanh form by default ("none" = exact erf)."""
    if resolve(backend, x.device.type) == "fused":
        return kernels().bias_gelu(x, bias, approximate)
    return reference.bias_gelu(x, bias, approximate)


def causal_attention(q, k, v, scale=None, dropout_p: float = 0.0, *, backend=None):
    """Causal (bottom-right aligned) attention over (B, H, T, D) tensors."""
    # The Triton flash-attention kernel lands with its own issue; until then the
    # reference serves every backend.
    resolve(backend, q.device.type)
    return reference.causal_attention(q, k, v, scale, dropout_p)


def bias_dropout_add(x, bias, residual, dropout_p: float = 0.0, *, backend=None):
    """residual + dropout(x + bias); the fused path is the C++/CUDA extension."""
    resolve(backend, x.device.type)
    return reference.bias_dropout_add(x, bias, residual, dropout_p)


def fused_linear_cross_entropy(h, W, targets, ignore_index: int = -100, reduction: str = "mean",
                               label_smoothing: float = 0.0, *, backend=None):
    """cross_entropy(h @ W.T, targets) without materialising the logits (when fused)."""
    resolve(backend, h.device.type)
    return reference.fused_linear_cross_entropy(h, W, targets, ignore_index, reduction, label_smoothing)
