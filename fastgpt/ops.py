"""The public op namespace: the ONE place that picks Triton / extension / reference.

Every op takes ``backend=None | "fused" | "reference"``; see fastgpt.backend
for the precedence. Signatures and dtype semantics are those of
fastgpt.reference, which documents what each op computes.
"""
from __future__ import annotations

import torch
from torch._C._functorch import peek_interpreter_stack
from torch.autograd import forward_ad

from fastgpt import reference
from fastgpt.backend import USE_REFERENCE, kernels, resolve

__all__ = [
    "layer_norm",
    "add_layer_norm",
    "bias_gelu",
    "causal_attention",
    "causal_attention_qkvpacked",
    "bias_dropout_add",
    "fused_linear_cross_entropy",
]


def _device_type(op: str, name: str, t) -> str:
    """The device type the backend is resolved for: that of the op's first tensor argument."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    return t.device.type


def _fused(op: str, backend, name: str, t, *others, **kw) -> bool:
    """resolve() picks 'fused' for op (whose first tensor argument, ``name``, is t; ``others``: its other
    tensor arguments). Under a torch.func transform (grad, vmap, jvp, functionalize, ...) or forward-mode AD
    (torch.autograd.forward_ad with a dual tensor among them) that is an error naming the op: the fused
    ops' autograd Functions support neither (torch's own error named no op; forward_ad's tangents came
    back None or zero, never right)."""
    if resolve(backend, _device_type(op, name, t), **kw) != "fused":
        return False
    if torch.compiler.is_compiling():   # (traced: no look at functorch's stack in the graph)
        return True
    top = peek_interpreter_stack()
    if top is not None or (
            forward_ad._current_level >= 0   # (a dual_level block is open: is a tangent given here?)
            and any(isinstance(a, torch.Tensor) and forward_ad.unpack_dual(a).tangent is not None
                    for a in (t, *others))):
        how = "forward-mode AD (torch.autograd.forward_ad)" if top is None else \
            f"torch.func transforms ({top.key().name.lower()} here)"
        raise NotImplementedError(f"{op}: the fused backend does not run under {how}; {USE_REFERENCE}")
    return True


def layer_norm(x, weight, bias=None, eps: float = 1e-5, *, backend=None):
    """LayerNorm over the last dim; y has x's dtype."""
    if _fused("layer_norm", backend, "x", x, weight, bias):
        return kernels().layer_norm(x, weight, bias, eps)
    return reference.layer_norm(x, weight, bias, eps)


def add_layer_norm(x, residual, weight, bias=None, eps: float = 1e-5, *, backend=None):
    """(y, h) with h = x + residual (residual's dtype) and y = layer_norm(h) (x's dtype)."""
    if _fused("add_layer_norm", backend, "x", x, residual, weight, bias):
        return kernels().add_layer_norm(x, residual, weight, bias, eps)
    return reference.add_layer_norm(x, residual, weight, bias, eps)


def bias_gelu(x, bias=None, approximate: str = "tanh", *, backend=None):
    """gelu(x + bias), tanh form by default ("none" = exact erf)."""
    if _fused("bias_gelu", backend, "x", x, bias):
        return kernels().bias_gelu(x, bias, approximate)
    return reference.bias_gelu(x, bias, approximate)


def causal_attention(q, k, v, scale=None, dropout_p: float = 0.0, *, out_layout: str = "bhtd", seed=None,
                     backend=None):
    """Causal (bottom-right aligned) attention over (B, H, T, D) tensors; o in q's dtype.

    The fused backend is the Triton flash-attention kernel (kernels/attention.py),
    dropout included. ``seed`` = (seed, offset) (ints or an int64 tensor) fixes
    the dropout mask, the same on both backends (reference.attention_keep_mask);
    without it the fused kernel draws one from torch's generator on q's device
    and the reference uses torch's RNG. The fused kernels (and the reference given a seed) apply
    p in steps of 1/256, scaling kept weights by 1 / (1 - that rate)
    (reference.attention_dropout_threshold; a warning when that moves p by more than 10 %).
    out_layout="bthd" asks for o as a
    (B, H, T, D) view of a contiguous (B, T, H, D) tensor (the fused kernel
    writes it directly); the values never depend on it.
    """
    if out_layout not in ("bhtd", "bthd"):
        raise ValueError(f"causal_attention: out_layout must be 'bhtd' or 'bthd', got {out_layout!r}")
    if _fused("causal_attention", backend, "q", q, k, v):
        return kernels().causal_attention(q, k, v, scale, dropout_p, out_layout=out_layout, seed=seed)
    o = reference.causal_attention(q, k, v, scale, dropout_p, seed=seed)
    return o if out_layout == "bhtd" else o.transpose(1, 2).contiguous().transpose(1, 2)


def causal_attention_qkvpacked(qkv, scale=None, dropout_p: float = 0.0, *, seed=None, backend=None):
    """causal_attention over a packed (B, T, 3, H, D) qkv projection (q, k, v are its strided slices)
    -> o as (B, T, H * D), ready for the output projection. The fused kernel's backward writes one
    packed gradient (no stack of dq, dk, dv); the values are causal_attention's either way."""
    if _fused("causal_attention_qkvpacked", backend, "qkv", qkv):
        return kernels().causal_attention_qkvpacked(qkv, scale, dropout_p, seed=seed)
    return reference.causal_attention_qkvpacked(qkv, scale, dropout_p, seed=seed)


def bias_gelu_recompute(u, bias=None, approximate: str = "tanh", *, backend=None):
    """(g, grad_fn) for a backward that recomputes g = bias_gelu(u, bias) instead of saving it:
    grad_fn(dg) -> (du, dbias or None). Fused: the kernels' launchers themselves (no nested autograd
    graph, ~0.1 ms of host time less); reference: autograd through the reference op."""
    if _fused("bias_gelu_recompute", backend, "u", u, bias):
        from fastgpt.kernels import gelu as G
        return G.bias_gelu_recompute(u, bias, approximate)
    with torch.enable_grad():
        u_ = u.detach().requires_grad_()
        b_ = None if bias is None else bias.detach().requires_grad_()
        g_ = reference.bias_gelu(u_, b_, approximate)

    def grad_fn(dg):
        grads = torch.autograd.grad(g_, [u_] if b_ is None else [u_, b_], dg)
        return grads[0], (grads[1] if b_ is not None else None)
    return g_.detach(), grad_fn


def _extension_reason(device_type):
    from fastgpt import extension  # lazy: loading may JIT-compile the extension
    return extension.unavailable_reason(device_type)


def bias_dropout_add(x, bias, residual, dropout_p: float = 0.0, *, backend=None):
    """residual + dropout(x + bias) (residual's dtype); the fused path is the C++/CUDA extension.

    Auto picks the extension on CUDA and falls back to the reference (warning
    once, with the reason) when it is unavailable; backend="fused" raises that
    reason instead. The fused mask comes from the extension's Philox stream
    (seeded from torch's generator), the reference's from torch.rand.
    """
    if _fused("bias_dropout_add", backend, "x", x, bias, residual, fused_reason=_extension_reason):
        from fastgpt import extension
        return extension.bias_dropout_add(x, bias, residual, dropout_p)
    return reference.bias_dropout_add(x, bias, residual, dropout_p)


def fused_linear_cross_entropy(h, W, targets, ignore_index: int = -100, reduction: str = "mean",
                               label_smoothing: float = 0.0, *, backend=None):
    """cross_entropy(h @ W.T, targets) without materialising the logits (when fused)."""
    if _fused("fused_linear_cross_entropy", backend, "h", h, W):
        return kernels().fused_linear_cross_entropy(h, W, targets, ignore_index, reduction, label_smoothing)
    if reference.autocast_on(h.device.type):
        # the GEMM in the autocast dtype, as nn.Linear (and the fused kernel) would run the head
        dt = torch.get_autocast_dtype(h.device.type)
        h, W = (t.to(dt) if t.dtype in (torch.float32, torch.float16, torch.bfloat16) else t for t in (h, W))
    return reference.fused_linear_cross_entropy(h, W, targets, ignore_index, reduction, label_smoothing)
